"""The MLP's row slicing (a memory cap for long prefill chunks) changes nothing but the peak."""
import pytest
import torch

from turboctx.models.layers import GatedMLP


@pytest.mark.parametrize("rows,max_rows", [(1000, 97), (256, 256), (257, 256), (5, 2)])
def test_row_sliced_mlp_equals_whole(rows, max_rows, monkeypatch):
    torch.manual_seed(rows)
    mlp = GatedMLP(48, 136)
    x = torch.randn(rows, 48)
    whole = mlp(x)
    monkeypatch.setattr(GatedMLP, "max_rows", max_rows)
    torch.testing.assert_close(mlp(x), whole, rtol=1e-6, atol=1e-6)   # matmul blocking may differ
