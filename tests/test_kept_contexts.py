"""Kept contexts: a prompt prefix's KV saved to host RAM and disk and loaded back by another
engine, bit for bit, and refused whenever it is not valid for that engine."""
from __future__ import annotations

import errno

import pytest
import torch

from turboctx.contexts import kv_file
from turboctx.contexts.store import ContextStore, parse_size
from turboctx.errors import InvalidRequestError

MAX_LEN = 2048


def make_llm(**kw):
    from turboctx import LLM
    return LLM(None, device="cpu", max_model_len=MAX_LEN, kv_cache_tokens=2 * MAX_LEN, **kw)


@pytest.fixture
def store(tmp_path):
    return ContextStore(home=tmp_path / "home", ram_dir=tmp_path / "ram", ram_limit="1G", disk_limit="1G")


@pytest.fixture(scope="module")
def material():
    """~300 tokens of prose, its question, and the greedy answer computed with nothing kept."""
    from turboctx import SamplingParams
    llm = make_llm()
    text = " ".join(f"Note {i}: the courier left the harbour at {i % 12 + 1} o'clock with parcel "
                    f"{1000 + 37 * i}." for i in range(18))
    prefix = llm.tokenizer.encode(text, add_special_tokens=True)
    question = llm.tokenizer.encode("\nWhich parcel left with note 7? Parcel", add_special_tokens=False)
    cold = llm.generate([prefix + question], SamplingParams(max_tokens=8, temperature=0))[0]
    return llm, prefix, question, cold.token_ids


def cached_kv(llm, token_ids, n):
    """The prefix cache's K and V of the first n tokens: [L, Hkv, n, D] each."""
    from turboctx.kv_cache import SeqSlots, block_hashes
    eng = llm.engine
    bs = eng.config.cache.block_size
    blocks = eng.allocator.match(block_hashes(token_ids, bs))[: n // bs]
    assert len(blocks) * bs == n
    slots = SeqSlots(blocks, bs).slot_ids("cpu")[:n]
    c = eng.worker.kv_cache
    return c.k[:, :, slots].clone(), c.v[:, :, slots].clone()


def test_a_kept_context_loads_bit_for_bit_and_answers_as_a_cold_run(material, store):
    from turboctx import SamplingParams
    llm, prefix, question, cold_tokens = material
    llm.engine.attach_context_store(store)
    kept = llm.keep_context("notes", prefix)
    bs = llm.engine.config.cache.block_size
    assert kept.num_tokens == len(prefix) // bs * bs and kept.tiers == ["ram", "disk"]
    assert not kept.warnings
    k0, v0 = cached_kv(llm, prefix, kept.num_tokens)

    other = make_llm()                       # a new engine: nothing in its prefix cache
    other.engine.attach_context_store(store)
    res = other.load_context("notes", prefix)
    assert res.tier == "ram" and res.num_tokens == kept.num_tokens and not res.warnings
    k1, v1 = cached_kv(other, prefix, kept.num_tokens)
    assert torch.equal(k0, k1) and torch.equal(v0, v1)
    out = other.generate([prefix + question], SamplingParams(max_tokens=8, temperature=0))[0]
    assert out.metrics.num_cached_tokens == kept.num_tokens
    assert out.token_ids == cold_tokens

    again = other.load_context("notes", prefix)   # in the prefix cache already: nothing read
    assert again.tier == "gpu" and again.nbytes == 0

    store.remove("notes", store.tier("ram"))      # only the disk copy is left
    third = make_llm()
    third.engine.attach_context_store(store)
    assert third.load_context("notes", prefix).tier == "disk"
    assert torch.equal(cached_kv(third, prefix, kept.num_tokens)[0], k0)


def test_damaged_or_foreign_contexts_are_discarded_with_a_warning(material, store, caplog):
    llm, prefix, question, _ = material
    llm.engine.attach_context_store(store)
    llm.keep_context("notes", prefix)
    disk = store.tier("disk").path("notes") / "kv.bin"
    store.remove("notes", store.tier("ram"))

    other = make_llm()
    other.engine.attach_context_store(store)
    # other material under the same name
    res = other.load_context("notes", prefix[:-20])
    assert res.num_tokens == 0 and "other material" in res.warnings[0]
    assert not disk.exists()                                   # discarded

    llm.keep_context("notes", prefix)
    store.remove("notes", store.tier("ram"))
    data = bytearray(disk.read_bytes())
    data[len(data) // 2] ^= 0x40                               # one flipped bit
    disk.write_bytes(bytes(data))
    res = other.load_context("notes", prefix)
    assert res.num_tokens == 0 and "damaged" in res.warnings[0] and "checksum" in res.warnings[0]
    from turboctx.kv_cache import block_hashes
    hashes = block_hashes(prefix, other.engine.config.cache.block_size)
    assert hashes and other.engine.allocator.match(hashes) == []     # nothing registered

    llm.keep_context("notes", prefix)
    store.remove("notes", store.tier("ram"))
    with open(disk, "r+b") as f:
        f.truncate(disk.stat().st_size - 4096)                 # truncated
    res = other.load_context("notes", prefix)
    assert "damaged" in res.warnings[0] and "bytes" in res.warnings[0]

    llm.keep_context("notes", prefix)
    bf16 = make_llm(dtype="bfloat16")                          # another setup
    bf16.engine.attach_context_store(store)
    res = bf16.load_context("notes", prefix)
    assert res.num_tokens == 0 and "another setup" in res.warnings[0] and "dtype" in res.warnings[0]
    assert store.locations("notes") == []                      # both copies discarded


def test_a_prompt_that_starts_with_a_kept_context_loads_it(material, store):
    """What the server does (serve --kept-contexts): match by the prompt's block hashes."""
    from turboctx import SamplingParams
    llm, prefix, question, cold_tokens = material
    llm.engine.attach_context_store(store)
    kept = llm.keep_context("notes", prefix)
    server_engine = make_llm()
    server_engine.engine.attach_context_store(store, match_prompts=True)
    out = server_engine.generate([prefix + question], SamplingParams(max_tokens=8, temperature=0))[0]
    assert out.metrics.num_cached_tokens == kept.num_tokens and out.token_ids == cold_tokens
    unrelated = server_engine.generate([question + prefix[:50]], SamplingParams(max_tokens=2))[0]
    assert unrelated.metrics.num_cached_tokens == 0


def test_a_full_disk_keeps_nothing_partial_and_says_so(material, store, monkeypatch):
    llm, prefix, _, _ = material
    llm.engine.attach_context_store(store)
    real = kv_file.KVWriter.write_part
    calls = {"n": 0}

    def failing_disk(self, part):
        calls["n"] += 1
        if calls["n"] == 3 and "disk" in self.files:          # the disk fills in the second layer
            self.files["disk"].write = _raise_enospc
        real(self, part)
    monkeypatch.setattr(kv_file.KVWriter, "write_part", failing_disk)
    res = llm.keep_context("notes", prefix)
    assert res.tiers == ["ram"] and "No space left on device" in res.warnings[0]
    disk_root = store.tier("disk").root
    assert [p.name for p in disk_root.iterdir()] == []         # no partial folder left
    assert store.locations("notes")[0][0].name == "ram"


def _raise_enospc(_buf):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_tiers_drop_the_least_recently_used_context(material, tmp_path):
    llm, prefix, _, _ = material
    probe = ContextStore(home=tmp_path / "p", ram_dir=tmp_path / "pr", ram_limit=0, disk_limit="1G")
    llm.engine.attach_context_store(probe)
    size = llm.keep_context("probe", prefix).nbytes
    small = ContextStore(home=tmp_path / "h", ram_dir=tmp_path / "r", ram_limit=int(2.5 * size),
                         disk_limit="1G")
    llm.engine.attach_context_store(small)
    for name in ("a", "b"):
        llm.keep_context(name, prefix)
    llm.load_context("a", prefix)             # a is now the most recently used
    llm.keep_context("c", prefix)             # the RAM tier holds two: b goes
    ram = sorted(p.name for _, p in small.tier("ram").entries())
    assert ram == ["a", "c"]
    assert sorted(r["name"] for r in small.list()) == ["a", "b", "c"]   # all still on disk
    big = ContextStore(home=tmp_path / "h2", ram_dir=tmp_path / "r2", ram_limit=size // 2, disk_limit="1G")
    llm.engine.attach_context_store(big)
    res = llm.keep_context("d", prefix)
    assert res.tiers == ["disk"] and "over its limit" in res.warnings[0]


def test_names_and_sizes_are_checked(store):
    for bad in ("", "../x", "a/b", ".hidden", "x" * 200):
        with pytest.raises(InvalidRequestError, match="context name"):
            store.locations(bad)
    assert parse_size("64G", "x") == 64 << 30 and parse_size("512M", "x") == 512 << 20
    assert parse_size(1234, "x") == 1234
    with pytest.raises(InvalidRequestError, match="not a size"):
        parse_size("lots", "disk_limit")


def test_the_server_loads_a_kept_context_for_a_prompt_that_starts_with_it(material, server,
                                                                          session_turboctx_home):
    """The shared server runs with the test run's TURBOCTX_HOME and kept contexts on (the
    default): a context kept by another process is loaded for a request that starts with it."""
    from server_fixtures import MODEL, post
    llm, prefix, question, cold_tokens = material
    home = session_turboctx_home                              # the store the server reads
    llm.engine.attach_context_store(ContextStore(home=home, ram_dir=home / "ram"))
    kept = llm.keep_context("served-notes", prefix)
    r = post(server, "/v1/completions", {"model": MODEL, "prompt": prefix + question,
                                         "max_tokens": 8, "temperature": 0})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["usage"]["prompt_tokens_details"]["cached_tokens"] == kept.num_tokens
    assert body["choices"][0]["text"] == llm.tokenizer.decode(cold_tokens)


@pytest.mark.gpu
def test_cuda_keep_and_load_through_pinned_buffers(tmp_path, monkeypatch):
    """The CUDA path: pieces through pinned host buffers, several per part, in several threads."""
    from turboctx import LLM, SamplingParams
    monkeypatch.setattr(kv_file, "PIECE_BYTES", 1 << 16)
    import turboctx.engine.kept_contexts as kc
    monkeypatch.setattr(kc, "PIECE_BYTES", 1 << 16)
    store = ContextStore(home=tmp_path / "h", ram_dir=tmp_path / "r", ram_limit="1G", disk_limit="1G")
    opts = dict(model="random:qwen2.5-0.5b", device="cuda", dtype="bfloat16", max_model_len=4096,
                kv_cache_tokens=8192)
    ids = torch.randint(0, 50000, (3000,), generator=torch.Generator().manual_seed(0)).tolist()
    a = LLM(**opts)
    a.engine.attach_context_store(store)
    cold = a.generate([ids + [7, 8, 9]], SamplingParams(max_tokens=4, temperature=0))[0]
    kept = a.keep_context("gpu", ids)
    assert kept.tiers == ["ram", "disk"] and kept.nbytes > 8 * (1 << 16)
    b = LLM(**opts)
    b.engine.attach_context_store(store)
    res = b.load_context("gpu", ids)
    assert res.tier == "ram" and not res.warnings
    from turboctx.kv_cache import SeqSlots, block_hashes
    kv = []
    for llm in (a, b):
        eng = llm.engine
        blocks = eng.allocator.match(block_hashes(ids, eng.config.cache.block_size))
        slots = SeqSlots(blocks, eng.config.cache.block_size).slot_ids("cuda")
        kv.append((eng.worker.kv_cache.k[:, :, slots].clone(), eng.worker.kv_cache.v[:, :, slots].clone()))
    assert torch.equal(kv[0][0], kv[1][0]) and torch.equal(kv[0][1], kv[1][1])
    warm = b.generate([ids + [7, 8, 9]], SamplingParams(max_tokens=4, temperature=0))[0]
    assert warm.metrics.num_cached_tokens == kept.num_tokens
    assert len(cold.token_ids) == len(warm.token_ids) == 4
