"""kv_cache_dtype='fp8' through the whole engine on the CPU: every attention setup gives exactly
what an unquantized cache holding the same quantized values gives (prefill in chunks, batched
decode), prefix caching and kept contexts carry the scales, checkpoint scales are used, and the
memory plan halves."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

import turboctx.attention.backend as backend_module
from hf_reference import make_tiny_hf
from turboctx import LLM, SamplingParams
from turboctx.config import EngineConfig
from turboctx.engine.plan import memory_plan
from turboctx.errors import InvalidRequestError, ModelLoadError, OutOfCacheError
from turboctx.kv_cache import KVCache
from turboctx.kv_cache.fp8 import FP8_DTYPE, fake_quantize

# max_itl_ms: a target every step meets, so no chunk is split over steps by wall time and runs
# compare bit for bit (a DCA + sparse chunk split over steps beside decodes differs from one run
# in a step in the last bits, ~1e-6; not yet explained)
ENGINE = dict(device="cpu", dtype="float32", max_num_batched_tokens=64, max_model_len=1024,
              kv_cache_tokens=4096, block_size=16, max_itl_ms=1e6)
SETUPS = {
    "dense": {},
    "dca": dict(dca=True, dca_chunk_size=128, dca_local_size=16),      # 300 tokens: 3 DCA chunks
    "sparse": dict(attention="sparse", sparse_threshold=128, sparse_dense_tail=32),
    "dca+sparse": dict(dca=True, dca_chunk_size=128, dca_local_size=16, attention="sparse",
                       sparse_threshold=128, sparse_dense_tail=32),
}
SP = SamplingParams(max_tokens=12, temperature=0, logprobs=5, prompt_logprobs=3, ignore_eos=True)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("fp8")
    make_tiny_hf("qwen2-gqa7-bias-untied", d)
    return d


def _prompts(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 512, (n,), generator=g).tolist() for n in lengths]


def _logprobs(out) -> list[dict]:
    return out.prompt_logprobs[1:] + out.logprobs


def _fake_quantized_cache(monkeypatch):
    """The reference: an unquantized cache into which K and V are written quantized-dequantized."""
    write = backend_module.write_kv
    monkeypatch.setattr(backend_module, "write_kv",
                        lambda cache, slots, start, x: write(cache, slots, start, fake_quantize(x)))


@pytest.mark.parametrize("setup", list(SETUPS))
def test_fp8_cache_equals_the_fake_quantized_reference_exactly(folder, setup, monkeypatch):
    prompts = _prompts([300, 170, 45])          # prefill in chunks of 64, then batched decode
    fp8 = LLM(str(folder), kv_cache_dtype="fp8", **ENGINE, **SETUPS[setup])
    assert fp8.engine.worker.kv_cache.k.dtype == FP8_DTYPE
    got = fp8.generate(prompts, SP, use_tqdm=False)
    plain = LLM(str(folder), **ENGINE, **SETUPS[setup]).generate(prompts, SP, use_tqdm=False)
    _fake_quantized_cache(monkeypatch)
    ref = LLM(str(folder), **ENGINE, **SETUPS[setup]).generate(prompts, SP, use_tqdm=False)
    drift = 0.0
    for g, r, p in zip(got, ref, plain):
        assert g.token_ids == r.token_ids
        assert _logprobs(g) == _logprobs(r)               # bit for bit
        drift = max(drift, max(abs(a[t] - b[t]) for a, b in zip(_logprobs(g), _logprobs(p))
                               for t in a if t in b))
    assert drift > 1e-4                                   # the cache really is quantized


def test_prefix_cache_reuses_fp8_blocks(folder):
    prompt = _prompts([300], seed=1)[0]
    sp = SamplingParams(max_tokens=12, temperature=0, logprobs=5, ignore_eos=True)
    cold = LLM(str(folder), kv_cache_dtype="fp8", enable_prefix_caching=False, **ENGINE).generate(prompt, sp)[0]
    llm = LLM(str(folder), kv_cache_dtype="fp8", **ENGINE)
    first, second = llm.generate(prompt, sp)[0], llm.generate(prompt, sp)[0]
    assert second.metrics.num_cached_tokens == 299 // 16 * 16
    for out in (first, second):
        assert out.token_ids == cold.token_ids
        # the cached run's chunks end elsewhere: fp32 rounding of the merge only
        assert max(abs(a[t] - b[t]) for a, b in zip(out.logprobs, cold.logprobs) for t in a) < 1e-4


def test_kept_context_saves_and_loads_values_and_scales(folder, tmp_path):
    from turboctx.contexts.store import ContextStore
    store = ContextStore(home=tmp_path / "home", ram_dir=tmp_path / "ram", ram_limit="1G", disk_limit="1G")
    prompt = _prompts([200], seed=2)[0]
    sp = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)
    a = LLM(str(folder), kv_cache_dtype="fp8", **ENGINE)
    a.engine.attach_context_store(store)
    want = a.generate(prompt, sp)[0].token_ids
    kept = a.keep_context("doc", prompt)
    assert kept.num_tokens == 192 and not kept.warnings
    b = LLM(str(folder), kv_cache_dtype="fp8", **ENGINE)
    b.engine.attach_context_store(store)
    assert b.load_context("doc", prompt).num_tokens == 192
    ca, cb = a.engine.worker.kv_cache, b.engine.worker.kv_cache
    blocks = [b.engine.allocator.match(_hashes(prompt))[:12], a.engine.allocator.match(_hashes(prompt))[:12]]
    slots = [torch.tensor([blk * 16 + i for blk in bl for i in range(16)]) for bl in blocks]
    for ta, tb in zip(ca.parts(), cb.parts()):
        assert torch.equal(ta[:, :, slots[1]].float(), tb[:, :, slots[0]].float())
    out = b.generate(prompt, sp)[0]
    assert out.metrics.num_cached_tokens == 192 and out.token_ids == want
    plain = LLM(str(folder), **ENGINE)
    plain.engine.attach_context_store(store)
    refused = plain.load_context("doc", prompt)                        # another cache format
    assert refused.num_tokens == 0 and "kv_cache_dtype" in refused.warnings[0]


def _hashes(ids):
    from turboctx.kv_cache import block_hashes
    return block_hashes(ids, 16)


# -- scales shipped with the checkpoint (vLLM's k_scale / v_scale) ------------------------------

def _with_scales(src, dst, scales: dict[str, torch.Tensor]):
    import shutil
    shutil.copytree(src, dst)
    tensors = load_file(dst / "model.safetensors")
    tensors.update(scales)
    save_file(tensors, dst / "model.safetensors", metadata={"format": "pt"})
    return str(dst)


def test_checkpoint_kv_scales_are_used(folder, tmp_path):
    scales = {"model.layers.0.self_attn.k_scale": torch.tensor(0.02),
              "model.layers.0.self_attn.v_scale": torch.tensor([0.004, 0.003]),   # per KV head
              "model.layers.1.self_attn.k_proj.output_scale": torch.tensor(0.03),
              "model.layers.1.self_attn.v_proj.output_scale": torch.tensor(0.005),
              "model.layers.1.self_attn.q_scale": torch.tensor(1.0)}                # not used
    path = _with_scales(folder, tmp_path / "scaled", scales)
    llm = LLM(path, kv_cache_dtype="fp8", **ENGINE)
    c = llm.engine.worker.kv_cache
    assert torch.allclose(c.static_scales["k"], torch.tensor([[0.02, 0.02], [0.03, 0.03]]))
    assert torch.allclose(c.static_scales["v"], torch.tensor([[0.004, 0.003], [0.005, 0.005]]))
    prompt = _prompts([150], seed=3)[0]
    out = llm.generate(prompt, SamplingParams(max_tokens=6, temperature=0, ignore_eos=True))[0]
    slots = torch.arange(llm.engine.allocator.match(_hashes(prompt))[0] * 16, 16 * 9)
    want_v = torch.tensor([0.004, 0.003]).to(torch.bfloat16)
    assert (c.v_scale[0][:, slots] == want_v[:, None]).all()                # every token: shipped
    assert (c.k_scale[1][:, slots] == torch.tensor(0.03).to(torch.bfloat16)).all()
    assert len(out.token_ids) == 6
    assert LLM(path, **ENGINE).engine.worker.kv_cache.k_scale is None      # auto: not quantized


def test_bad_checkpoint_kv_scales_are_named(folder, tmp_path):
    half = {"model.layers.0.self_attn.k_scale": torch.tensor(0.02),
            "model.layers.0.self_attn.v_scale": torch.tensor(0.02)}
    with pytest.raises(ModelLoadError, match=r"lacks model\.layers\.1\.self_attn\.k_scale"):
        LLM(_with_scales(folder, tmp_path / "half", half), kv_cache_dtype="fp8", **ENGINE)
    bad = {f"model.layers.{i}.self_attn.{w}_scale": torch.tensor([0.1, 0.1, 0.1])
           for i in range(2) for w in "kv"}
    with pytest.raises(ModelLoadError, match="3 values; expected 1 or one per KV head"):
        LLM(_with_scales(folder, tmp_path / "bad", bad), kv_cache_dtype="fp8", **ENGINE)
    LLM(str(tmp_path / "bad"), **ENGINE)          # the model dtype's cache does not read them


# -- options and the memory plan -----------------------------------------------------------------

def test_kv_cache_dtype_values():
    assert EngineConfig.from_options(kv_cache_dtype="FP8_E4M3").cache.kv_cache_dtype == "fp8"
    with pytest.raises(InvalidRequestError, match="kv_cache_dtype='int8' is not one of auto, fp8"):
        EngineConfig.from_options(kv_cache_dtype="int8")


def test_memory_plan_halves_and_the_error_names_what_fits():
    assert KVCache.bytes_per_token(48, 8, 128, torch.bfloat16) == 196_608          # 14B
    assert KVCache.bytes_per_token(48, 8, 128, FP8_DTYPE) == 99_840               # + bf16 scales
    opts = dict(model="random:qwen2.5-14b-1m", device="cpu", dtype="bfloat16", max_model_len=1 << 20)
    bf16 = memory_plan(EngineConfig.from_options(**opts))
    fp8 = memory_plan(EngineConfig.from_options(kv_cache_dtype="fp8", **opts))
    assert fp8["kv_cache_dtype"] == "float8_e4m3fn"
    assert fp8["KV GiB at max_model_len"] / bf16["KV GiB at max_model_len"] == pytest.approx(130 / 256, abs=1e-3)
    assert "--kv-cache-dtype fp8" in bf16["to fit max_model_len"]
    assert "--kv-cache-dtype" not in fp8["to fit max_model_len"]
    from turboctx.engine.memory import plan_kv_tokens
    from turboctx.weights import open_checkpoint
    arch = open_checkpoint("random:qwen2.5-14b-1m").config       # the config only: no weights
    cfg = EngineConfig.from_options(**opts).resolve(arch)
    with pytest.raises(OutOfCacheError, match=r"196608 bytes per token.*--kv-cache-dtype fp8.*"
                                              r"--tensor-parallel-size"):
        plan_kv_tokens(arch, cfg, torch.device("cpu"))
