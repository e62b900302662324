"""Attention: the model hands un-rotated q/k/v to a backend, which applies positions, writes the
KV cache and attends (backend.py says how positions and prefill patterns compose).

backend.py        AttentionBackend = positions x prefill pattern; the batch description
factory.py        the backend of a model's configuration
rotary.py         rotary embedding (RoPE, Llama 3 and YaRN frequency scaling)
rope.py           plain RoPE positions and their decode step in CUDA graphs
dca.py            Dual Chunk Attention + YaRN positions and their decode step in CUDA graphs
dense.py          the dense prefill pattern (exact; parts merged by log-sum-exp)
sparse/           the vertical-slash sparse prefill pattern
ops.py            attention with log-sum-exp (cuDNN / flash / CPU), split-KV, the LSE merges
decode_kernel.py  Triton split-KV decode, fused rotary + cache write (static shapes, for graphs)
reference.py      float64 references every fast path is tested against (sparse/reference.py too)
"""
from turboctx.attention.backend import AttentionBackend, AttentionBatch, Part, SeqChunk, SeqQueries
from turboctx.attention.factory import build_attention_backend

__all__ = ["AttentionBackend", "AttentionBatch", "Part", "SeqChunk", "SeqQueries",
           "build_attention_backend"]
