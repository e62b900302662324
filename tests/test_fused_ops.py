"""The torch.compile'd elementwise ops (models/layers.py FusedOps) against their eager versions."""
import pytest
import torch

from turboctx.models.layers import FusedOps, rms_norm, silu_mul


@pytest.fixture
def compiled_ops():
    """FusedOps compiled, with Dynamo's recompile limit lowered to 2; the class restored after."""
    import torch._dynamo
    pytest.importorskip("torch._inductor")
    saved = dict(vars(FusedOps))
    torch._dynamo.reset()
    FusedOps.compiled = False
    try:
        with torch._dynamo.config.patch(recompile_limit=2):
            FusedOps.enable_compiled()
            yield FusedOps
    finally:
        for name in ("rms_norm", "silu_mul", "compiled"):
            setattr(FusedOps, name, saved[name])
        torch._dynamo.reset()


def test_compiled_ops_run_eagerly_past_the_recompile_limit(compiled_ops):
    """A process that meets many dtypes (several models, fp32 and bf16 runs) passes Dynamo's
    recompile limit: the op must then run eagerly, not raise in the middle of a request."""
    for dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64):   # 4 compiles > 2
        x, w = torch.randn(5, 8, dtype=dtype), torch.rand(8, dtype=dtype) + 0.5
        torch.testing.assert_close(compiled_ops.rms_norm(x, w, 1e-6), rms_norm(x, w, 1e-6))
        g, u = torch.randn(3, 16, dtype=dtype), torch.randn(3, 16, dtype=dtype)
        torch.testing.assert_close(compiled_ops.silu_mul(g, u), silu_mul(g, u))
