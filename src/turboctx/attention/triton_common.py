"""What the Triton kernels of this package share: the interpreter's bf16 work-around and the
device's multiprocessor count (how many programs fill it)."""
from __future__ import annotations

import os

import torch

_SM_COUNT: dict[int, int] = {}


def upcast_dot(dtype: torch.dtype) -> bool:
    """Triton's CPU interpreter multiplies bf16 dot operands as raw 16-bit integers (3.9); there
    the operands go to fp32 first. Same result: a bf16 x bf16 product is exact in fp32, and p is
    still rounded to bf16 before the second product. Never on the GPU."""
    return dtype == torch.bfloat16 and os.environ.get("TRITON_INTERPRET") == "1"


def multiprocessors(device: torch.device) -> int | None:
    """Streaming multiprocessors of a CUDA device (cached); None off CUDA."""
    if device.type != "cuda":
        return None
    idx = device.index if device.index is not None else torch.cuda.current_device()
    if idx not in _SM_COUNT:
        _SM_COUNT[idx] = torch.cuda.get_device_properties(idx).multi_processor_count
    return _SM_COUNT[idx]
