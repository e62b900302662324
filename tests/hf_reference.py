"""Tiny random HF transformers checkpoints and greedy references (transformers is the oracle)."""
from __future__ import annotations

import torch

TINY_CONFIGS = {
    # name: (family, heads, kv_heads, head_dim, bias, tied)
    "qwen2-gqa7-bias-untied": ("qwen2", 14, 2, 16, True, False),
    "qwen2-gqa3-bias-tied": ("qwen2", 6, 2, 16, True, True),
    "llama-gqa3-nobias-tied": ("llama", 6, 2, 16, False, True),
    "llama-gqa7-bias-untied": ("llama", 7, 1, 32, True, False),
    "llama-mha-nobias-untied": ("llama", 4, 4, 16, False, False),
}


def make_tiny_hf(name: str, folder, seed: int = 0, vocab: int = 512, layers: int = 2,
                 spec: tuple | None = None):
    """spec: (family, heads, kv_heads, head_dim, bias, tied) for a config not in TINY_CONFIGS."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM
    family, heads, kv, hd, bias, tied = spec or TINY_CONFIGS[name]
    common = dict(vocab_size=vocab, hidden_size=heads * hd,
                  intermediate_size=96, num_hidden_layers=layers, num_attention_heads=heads,
                  num_key_value_heads=kv, head_dim=hd, max_position_embeddings=4096,
                  rope_theta=10000.0 if family == "llama" else 1e6, tie_word_embeddings=tied,
                  initializer_range=0.2, bos_token_id=1, eos_token_id=2, rms_norm_eps=1e-6)
    torch.manual_seed(seed)
    if family == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    else:
        model = LlamaForCausalLM(LlamaConfig(attention_bias=bias, **common))
        if bias:  # HF initializes biases at zero; make them count
            for n, p in model.named_parameters():
                if n.endswith("_proj.bias"):
                    p.data.normal_(0, 0.2)
    model = model.float().eval()
    model.save_pretrained(folder, safe_serialization=True)
    return model


@torch.no_grad()
def hf_greedy(model, prompt_ids: list[int], max_new: int, k: int = 20):
    """Greedy continuation by HF transformers, with the top-k logprobs of each step."""
    ids = torch.tensor([prompt_ids])
    out = model.generate(ids, max_new_tokens=max_new, do_sample=False, output_scores=True,
                         output_logits=True, return_dict_in_generate=True, pad_token_id=0,
                         eos_token_id=None)
    tokens = out.sequences[0, len(prompt_ids):].tolist()
    lps = [torch.log_softmax(l[0].float(), -1) for l in out.logits]
    tops = [dict(zip(*[t.tolist() for t in reversed(lp.topk(k))])) for lp in lps]
    return tokens, tops, lps
