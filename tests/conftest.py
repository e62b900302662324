"""Shared fixtures and the GPU marker."""
from __future__ import annotations

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))   # tests/hf_reference.py and friends
torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def default_gguf_path():
    """The default model's GGUF (SmolLM2-135M-Instruct Q4_1). Missing is a failure, not a skip:
    the README's test command installs it."""
    from turboctx.errors import ModelLoadError
    from turboctx.weights import default_gguf_path as find
    try:
        return find()
    except ModelLoadError as e:
        pytest.fail(str(e))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
