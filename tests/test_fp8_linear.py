"""FP8 linear layers: the quantizers, the slow reference against full precision, the layer
swap, the memory plan; on GPUs the scaled-GEMM fast path against the reference over the
projection shapes of the models we serve, and the engine against bf16 on the default model."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from turboctx.config.engine import EngineConfig
from turboctx.engine.plan import weights_bytes
from turboctx.models.fp8_linear import (FP8, FP8_MAX, Fp8Linear, fp8_linear, fp8_linear_reference,
                                        quantize_linear_layers, quantize_rows, quantize_weight)
from turboctx.models.registry import build_model
from turboctx.weights import preset_config


def test_quantize_rows_scales_each_row_to_its_amax():
    x = torch.randn(37, 200, generator=torch.Generator().manual_seed(0)) * torch.logspace(-3, 3, 37)[:, None]
    x[5] = 0                                                    # an all-zero row stays finite
    q, s = quantize_rows(x)
    assert q.dtype == FP8 and s.shape == (37, 1) and torch.isfinite(s).all()
    assert (q.float().abs().amax(dim=1)[torch.arange(37) != 5] == FP8_MAX).all()
    back = q.float() * s
    rel = ((back - x).abs() / x.abs().amax(dim=1, keepdim=True).clamp(min=1e-30))
    assert rel.max() <= 2 ** -4 + 1e-6           # e4m3: 3 mantissa bits, half a step at most
    assert (back[5] == 0).all()


def test_quantize_weight_in_blocks_equals_whole():
    w = torch.randn(103, 64, generator=torch.Generator().manual_seed(1), dtype=torch.bfloat16)
    q, s = quantize_weight(w, rows=10)
    q1, s1 = quantize_rows(w)
    assert torch.equal(q.view(torch.uint8), q1.view(torch.uint8)) and torch.equal(s, s1[:, 0])


@pytest.mark.parametrize("n, din, dout, bias", [(1, 64, 48, False), (7, 576, 960, True),
                                                (33, 1536, 576, False), (0, 64, 32, True)])
def test_reference_is_close_to_full_precision(n, din, dout, bias):
    g = torch.Generator().manual_seed(n + din)
    lin = nn.Linear(din, dout, bias=bias)
    with torch.no_grad():
        lin.weight.normal_(0, 0.02, generator=g)
        if bias:
            lin.bias.normal_(0, 0.02, generator=g)
    x = torch.randn(n, din, generator=g)
    layer = Fp8Linear.from_linear(lin)
    y, exact = layer(x), F.linear(x, lin.weight, lin.bias)
    assert y.shape == (n, dout)
    if n:      # two e4m3 roundings: ~2-4% of an output's typical size
        rms = exact.pow(2).mean().sqrt()
        assert ((y - exact).pow(2).mean().sqrt() / rms) < 0.06
        assert torch.equal(y, fp8_linear_reference(x, layer.weight, layer.weight_scale, layer.bias))
    assert layer(x.view(1, n, din)).shape == (1, n, dout)


def _random_cpu_model():
    """The default model's architecture with random weights, its CPU split products on."""
    m = preset_config("smollm2-135m")
    with torch.device("meta"):
        model = build_model(m)
    model = model.to_empty(device="cpu")
    for p in model.parameters():
        p.data.normal_(0, 0.02)
    model.set_split_matmuls(True)
    return m, model


def test_quantize_swaps_every_projection_and_no_other_layer():
    m, model = _random_cpu_model()
    assert quantize_linear_layers(model) == 4 * m.num_hidden_layers
    layer = model.model.layers[0]
    assert isinstance(layer.self_attn.qkv_proj, Fp8Linear) and isinstance(layer.mlp.down_proj, Fp8Linear)
    assert not layer.self_attn.split_matmuls and not layer.mlp.split_matmuls
    assert type(model.lm_head) is nn.Linear
    x = torch.randn(5, m.hidden_size)
    assert layer.mlp(x).shape == (5, m.hidden_size)


def test_ignored_kinds_stay_in_full_precision():
    m, model = _random_cpu_model()
    qkv_weight = model.model.layers[0].self_attn.qkv_proj.weight
    assert quantize_linear_layers(model, keep=("qkv_proj", "down_proj")) == 2 * m.num_hidden_layers
    for layer in model.model.layers:
        assert type(layer.self_attn.qkv_proj) is nn.Linear and type(layer.mlp.down_proj) is nn.Linear
        assert isinstance(layer.self_attn.o_proj, Fp8Linear) and isinstance(layer.mlp.gate_up_proj, Fp8Linear)
        assert layer.self_attn.split_matmuls and not layer.mlp.split_matmuls
    assert model.model.layers[0].self_attn.qkv_proj.weight is qkv_weight


def test_ignored_layers_option_names_kinds_and_needs_fp8():
    from turboctx.config.architecture import ModelArchitecture
    from turboctx.errors import InvalidRequestError
    e = EngineConfig.from_options(quantization="fp8", quantization_ignored_layers=" down_proj,qkv_proj")
    assert e.model.quantization_ignored_layers == "qkv_proj,down_proj"
    assert e.model.ignored_projections == ("qkv_proj", "down_proj")
    assert EngineConfig.from_options(quantization="fp8").model.ignored_projections == ()
    for value, words in [("q_proj", "part of the fused qkv_proj"), ("lm_head", "allowed: qkv_proj"),
                         ("qkv_proj,o_proj,gate_up_proj,down_proj", "nothing would be FP8")]:
        with pytest.raises(InvalidRequestError, match=words):
            EngineConfig.from_options(quantization="fp8", quantization_ignored_layers=value)
    with pytest.raises(InvalidRequestError, match="quantization='fp8', which is not set"):
        EngineConfig.from_options(quantization_ignored_layers="qkv_proj")
    hf = preset_config("smollm2-135m").to_hf_dict()
    shipped = ModelArchitecture.from_hf_dict({**hf, "quantization_config": {"quant_method": "fp8"}})
    e = EngineConfig.from_options(device="cpu", quantization="fp8", quantization_ignored_layers="qkv_proj")
    with pytest.raises(InvalidRequestError, match="ships its projections in fp8"):
        e.resolve(shipped)


def test_plan_counts_one_byte_per_linear_weight():
    m = preset_config("qwen2.5-7b")
    bf16 = EngineConfig.from_options(dtype="bfloat16")
    fp8 = EngineConfig.from_options(dtype="bfloat16", quantization="fp8")
    full, quant = weights_bytes(m, bf16), weights_bytes(m, fp8)
    assert full == 2 * m.num_parameters()
    embeddings = 2 * (2 * m.vocab_size * m.hidden_size)
    assert math.isclose(quant - embeddings, (full - embeddings) / 2, rel_tol=1e-3)
    keep_qkv = EngineConfig.from_options(dtype="bfloat16", quantization="fp8",
                                         quantization_ignored_layers="qkv_proj")
    qkv_rows = (m.num_attention_heads + 2 * m.num_key_value_heads) * m.head_dim
    qkv = m.num_hidden_layers * qkv_rows * m.hidden_size
    assert weights_bytes(m, keep_qkv) - quant == qkv - 4 * m.num_hidden_layers * qkv_rows


# -- GPU -----------------------------------------------------------------------------------------
SHAPES = [(3584, 4608), (3584, 3584), (3584, 37888), (18944, 3584),    # 7B: qkv, o, gate/up, down
          (896, 1152), (4864, 896), (576, 960), (1536, 576)]            # 0.5B, SmolLM2-135M


@pytest.mark.gpu
@pytest.mark.parametrize("din, dout", SHAPES)
@pytest.mark.parametrize("n", [1, 7, 33, 257, 4099])
def test_scaled_gemm_equals_reference(n, din, dout):
    g = torch.Generator(device="cuda").manual_seed(n * 7 + din)
    w = torch.randn(dout, din, generator=g, device="cuda", dtype=torch.bfloat16) * 0.02
    bias = torch.randn(dout, generator=g, device="cuda", dtype=torch.bfloat16) * 0.02 if n % 2 else None
    x = torch.randn(n, din, generator=g, device="cuda", dtype=torch.bfloat16)
    wq, ws = quantize_weight(w)
    fast, ref = fp8_linear(x, wq, ws, bias), fp8_linear_reference(x, wq, ws, bias)
    assert fast.dtype == torch.bfloat16 and fast.shape == (n, dout)
    # the same products of e4m3 values, summed in float32 in another order, then rounded to bf16
    torch.testing.assert_close(fast.float(), ref.float(), rtol=2 ** -7, atol=1e-3 * ref.abs().max().item())


@pytest.mark.gpu
def test_engine_fp8_follows_bf16_on_the_default_model(default_gguf_path):
    from turboctx import LLM, SamplingParams
    prompt = ("In the beginning God created the heaven and the earth. And the earth was without "
              "form, and void; and darkness was upon the face of the deep. ") * 6
    sp = SamplingParams(max_tokens=1, temperature=0, prompt_logprobs=0)
    nll = {}
    for q, kept in ((None, "none"), ("fp8", "none"), ("fp8", "qkv_proj")):
        llm = LLM(default_gguf_path, device="cuda", dtype="bfloat16", max_model_len=4096, quantization=q,
                  quantization_ignored_layers=kept)
        out = llm.generate(prompt, sp)[0]
        ids = out.prompt_token_ids
        nll[q, kept] = -sum(out.prompt_logprobs[j][ids[j]] for j in range(1, len(ids))) / (len(ids) - 1)
        del llm
        torch.cuda.empty_cache()
    bf16 = nll[None, "none"]
    assert abs(nll["fp8", "none"] - bf16) < 0.05 and abs(nll["fp8", "qkv_proj"] - bf16) < 0.05, nll


# -- checkpoints that ship FP8 weights (quantization_config quant_method fp8) ---------------------
def _fp8_checkpoint(m, seed=0):
    """HF-named tensors of a random model, its projections in e4m3 with one scale per tensor
    (the layout of per-tensor FP8 checkpoints), plus static input scales."""
    from turboctx.models.llama import random_hf_tensors
    for name, t in random_hf_tensors(m, seed, torch.float32, "cpu"):
        if name.endswith("_proj.weight"):
            scale = t.abs().amax() / FP8_MAX
            yield name, (t / scale).to(FP8)
            yield name.replace(".weight", ".weight_scale"), scale.reshape(())
            yield name.replace(".weight", ".input_scale"), torch.tensor(0.05)
        else:
            yield name, t


def _empty_fp8_model(layers: int):
    """A small model whose config says its checkpoint is FP8, built as load_model builds it."""
    from dataclasses import replace
    m = replace(preset_config("smollm2-135m"), num_hidden_layers=layers, quantization="fp8")
    with torch.device("meta"):
        model = build_model(m)
    quantize_linear_layers(model)
    return m, model.to_empty(device="cpu")


def test_fp8_checkpoint_loads_its_weights_and_scales_as_shipped():
    m, model = _empty_fp8_model(2)
    model.load_weights(_fp8_checkpoint(m))
    shipped = dict(_fp8_checkpoint(m))
    qkv = model.model.layers[1].self_attn.qkv_proj
    q_rows = m.num_attention_heads * m.head_dim
    k_name = "model.layers.1.self_attn.k_proj"
    assert torch.equal(qkv.weight[q_rows:q_rows + m.num_key_value_heads * m.head_dim].view(torch.uint8),
                       shipped[k_name + ".weight"].view(torch.uint8))
    assert (qkv.weight_scale[q_rows] == shipped[k_name + ".weight_scale"]) and \
        (qkv.weight_scale[0] == shipped["model.layers.1.self_attn.q_proj.weight_scale"])
    x = torch.randn(3, m.hidden_size)
    assert torch.isfinite(model.model.layers[1].mlp(x)).all()


def test_fp8_checkpoint_of_another_dtype_or_scheme_is_a_clear_error():
    from turboctx.config.architecture import ModelArchitecture
    from turboctx.errors import InvalidRequestError, ModelLoadError, UnsupportedModelError
    m, model = _empty_fp8_model(1)
    from turboctx.models.llama import random_hf_tensors
    with pytest.raises(ModelLoadError, match="e4m3 was expected"):
        model.load_weights(random_hf_tensors(m, 0, torch.float32, "cpu"))
    hf = preset_config("smollm2-135m").to_hf_dict()
    for qc, words in [({"quant_method": "awq"}, "'awq' is not supported"),
                      ({"quant_method": "fp8", "weight_block_size": [128, 128]}, "block-wise")]:
        with pytest.raises(UnsupportedModelError, match=words):
            ModelArchitecture.from_hf_dict({**hf, "quantization_config": qc})
    arch = ModelArchitecture.from_hf_dict({**hf, "quantization_config": {"quant_method": "fp8"}})
    assert arch.quantization == "fp8" and arch.to_hf_dict()["quantization_config"]["quant_method"] == "fp8"
    with pytest.raises(InvalidRequestError, match="FP8 tensor cores"):     # the checkpoint sets it
        EngineConfig.from_options(device="cpu").resolve(arch)


def test_fp8_checkpoint_ships_its_ignored_layers_in_full_precision():
    """`ignored_layers` (vLLM's key) / `modules_to_not_convert`: those projections load as
    shipped into full-precision layers, the rest into FP8 ones; the plan counts them."""
    from dataclasses import replace

    from turboctx.config.architecture import ModelArchitecture
    from turboctx.config.checkpoint_quantization import checkpoint_ignored_layers
    attn = [f"model.layers.1.self_attn.{p}_proj" for p in "qkv"]
    qc = {"quant_method": "fp8", "ignored_layers": ["lm_head", *attn],
          "modules_to_not_convert": ["model.layers.0.mlp.down_proj"]}
    kept = ("model.layers.0.mlp.down_proj", "model.layers.1.self_attn.qkv_proj")
    assert checkpoint_ignored_layers(qc, 2) == kept
    hf = {**preset_config("smollm2-135m").to_hf_dict(), "num_hidden_layers": 2, "quantization_config": qc}
    arch = ModelArchitecture.from_hf_dict(hf)
    assert arch.quantization_ignored == kept
    assert ModelArchitecture.from_hf_dict(arch.to_hf_dict()).quantization_ignored == kept

    m = replace(preset_config("smollm2-135m"), num_hidden_layers=2, quantization="fp8",
                quantization_ignored=kept)
    with torch.device("meta"):
        model = build_model(m)
    assert quantize_linear_layers(model, keep_modules=kept) == 4 * 2 - 2
    model = model.to_empty(device="cpu")
    full_precision = [*attn, "model.layers.0.mlp.down_proj"]     # as the checkpoint names them
    shipped = {n: t for n, t in _fp8_checkpoint(m) if n.rsplit(".", 1)[0] not in full_precision}
    from turboctx.models.llama import random_hf_tensors
    full = dict(random_hf_tensors(m, 0, torch.float32, "cpu"))
    for module in full_precision:
        shipped[module + ".weight"] = full[module + ".weight"]
    model.load_weights(shipped.items())
    qkv = model.model.layers[1].self_attn.qkv_proj
    assert type(qkv) is nn.Linear and torch.equal(qkv.weight[:m.num_attention_heads * m.head_dim],
                                                  full[attn[0] + ".weight"])
    assert isinstance(model.model.layers[0].self_attn.qkv_proj, Fp8Linear)
    assert type(model.model.layers[0].mlp.down_proj) is nn.Linear
    bf16 = EngineConfig.from_options(dtype="bfloat16", quantization="fp8")
    everything = replace(m, quantization_ignored=())
    rows = (m.num_attention_heads + 2 * m.num_key_value_heads) * m.head_dim
    assert weights_bytes(m, bf16) - weights_bytes(everything, bf16) == \
        rows * m.hidden_size + m.hidden_size * m.intermediate_size - 4 * (rows + m.hidden_size)


@pytest.mark.parametrize("ignored, words", [
    (["model.layers.1.self_attn.q_proj"], "but not k_proj, v_proj: they are one fused projection"),
    (["model.layers.0.mlp.up_proj"], "but not gate_proj"),
    (["model.layers.5.mlp.down_proj"], "not a layer of this 2-layer model"),
    (["re:.*q_proj"], "not a layer"),
    (["model.layers.0.mlp.q_proj"], "not a layer"),
])
def test_fp8_checkpoint_ignored_layers_that_cannot_be_kept_are_a_clear_error(ignored, words):
    from turboctx.config.checkpoint_quantization import checkpoint_ignored_layers
    from turboctx.errors import UnsupportedModelError
    with pytest.raises(UnsupportedModelError, match=words):
        checkpoint_ignored_layers({"quant_method": "fp8", "ignored_layers": ignored}, 2)


def test_out_of_cache_advice_on_gpus_names_fp8_linear_layers():
    from turboctx.engine.memory import fitting_options
    from turboctx.weights import open_checkpoint
    arch = open_checkpoint("random:qwen2.5-14b-1m").config
    opts = dict(model="random:qwen2.5-14b-1m", device="cuda:0", max_model_len=1 << 20)
    bf16 = EngineConfig.from_options(**opts).resolve(arch, cuda_available=True)
    advice = fitting_options(arch, bf16, budget=50 * 2 ** 30)
    assert "--quantization fp8" in advice and f"{arch.num_linear_weights() / 2 ** 30:.1f} GiB less" in advice
    fp8 = EngineConfig.from_options(quantization="fp8", **opts).resolve(arch, cuda_available=True)
    assert "--quantization" not in fitting_options(arch, fp8, budget=50 * 2 ** 30)
