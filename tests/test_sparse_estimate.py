"""The fused Triton vertical-slash scores against the torch reference (sparse_pattern.py).
Without CUDA the kernels run in Triton's CPU interpreter (tiny shapes); the compiled kernels run
in the gpu-marked tests."""
from __future__ import annotations

import os

import pytest
import torch

INTERPRET = not torch.cuda.is_available()
if INTERPRET:
    os.environ["TRITON_INTERPRET"] = "1"      # before triton.jit runs: decoration reads it
triton = pytest.importorskip("triton")

from turboctx.attention.sparse.scores_triton import vertical_slash_scores_triton  # noqa: E402
from turboctx.attention.sparse.reference import reference_vertical_slash_scores  # noqa: E402
from turboctx.attention.sparse.scores import estimate_vertical_slash  # noqa: E402

DEV = "cpu" if INTERPRET else "cuda"


def _case(L, H, Hkv, D, m, dtype, seed=0, device=DEV):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(L, H, D, generator=g).to(device, dtype)
    k = torch.randn(Hkv, m + 3, D, generator=g).to(device, dtype)[:, :m]   # a strided cache view
    return q, k


def _check(q, k, q_pos0, B, segments=None, tol=2e-5):
    D = q.shape[-1]
    arg = segments if segments is not None else q
    v1, b1 = reference_vertical_slash_scores(arg, k, q_pos0, scale=D ** -0.5, block_size=B)
    v2, b2 = vertical_slash_scores_triton(arg, k, q_pos0, scale=D ** -0.5, block_size=B)
    torch.testing.assert_close(v2, v1, atol=tol, rtol=tol)
    torch.testing.assert_close(b2, b1, atol=tol, rtol=tol)
    L = q.shape[0]
    assert abs(float(v2.sum()) - L * q.shape[1]) < 1e-3 * L * q.shape[1]   # each row sums to 1


@pytest.mark.parametrize("L, H, Hkv, D, m, B", [
    (64, 7, 1, 64, 300, 16),      # GQA 7:1
    (64, 6, 2, 128, 261, 32),     # GQA 3:1, odd length
    (37, 6, 2, 64, 517, 64),      # fewer last queries than 64 (a short chunk)
    (64, 4, 4, 64, 64, 16),       # the queries are the whole sequence
])
def test_triton_scores_equal_torch(L, H, Hkv, D, m, B):
    q, k = _case(L, H, Hkv, D, m, torch.float32, seed=m)
    _check(q, k, m - L, B)


def test_triton_scores_bf16():
    q, k = _case(64, 6, 2, 64, 333, torch.bfloat16, seed=1)
    _check(q, k, 333 - 64, 16, tol=2e-3)


def test_triton_scores_dca_segments():
    """Each key range scored against its own rotated queries, one softmax over all of them."""
    L, H, Hkv, D, m = 64, 6, 2, 64, 400
    q, k = _case(L, H, Hkv, D, m, torch.float32, seed=2)
    g = torch.Generator().manual_seed(3)
    q2, q3 = (torch.randn(L, H, D, generator=g).to(DEV) for _ in range(2))
    _check(q, k, m - L, 32, segments=[(0, 150, q2), (150, 157, q3), (157, m, q)])


def test_estimate_with_either_scorer_selects_the_same():
    q, k = _case(64, 7, 1, 64, 480, torch.float32, seed=4)
    pats = [estimate_vertical_slash(q, k, 480 - 64, [(40, 100)] * 7, scale=0.125, block_size=16,
                                    sink_tokens=4, local_diagonals=16, kernel=kern)
            for kern in ("torch", "triton")]
    assert torch.equal(pats[0].vertical, pats[1].vertical)
    assert torch.equal(pats[0].bands, pats[1].bands)


@pytest.mark.gpu
@pytest.mark.skipif(INTERPRET, reason="needs CUDA")
@pytest.mark.parametrize("m", [32768 + 77, 300_000])
def test_triton_scores_long_gpu(m):
    q, k = _case(64, 28, 4, 128, m, torch.bfloat16, seed=5)
    _check(q, k, m - 64, 128, tol=1e-3)
