"""The loaded form of a model spec: its config, tokenizer and a stream of HF-named tensors."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterator

import torch

from turboctx.config.architecture import ModelArchitecture

if TYPE_CHECKING:
    from turboctx.tokenizer import Tokenizer

TensorStream = Iterator[tuple[str, torch.Tensor]]


@dataclass
class Checkpoint:
    config: ModelArchitecture
    tokenizer: "Tokenizer | None"
    source: str                      # a path, or "random:qwen2.5-7b"
    kind: str                        # "hf" | "gguf" | "random" | "default"
    tensor_stream: Callable[[], TensorStream] | None = field(default=None, repr=False)

    def iter_tensors(self) -> TensorStream:
        """HF-named CPU tensors, one at a time (nothing for random models)."""
        if self.tensor_stream is None:
            return iter(())
        return self.tensor_stream()

    @property
    def is_random(self) -> bool:
        return self.kind == "random"
