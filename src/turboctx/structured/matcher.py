"""One request's grammar state: which tokens may come next, and the token that came.

Per decode step the sampler does, for a request with a grammar:
    logits = matcher.apply(logits)          # disallowed tokens -> -inf
    token = <sample from logits>
    matcher.accept(token)                   # raises if the token was not allowed
    if matcher.is_terminated(): finish the request with finish_reason "stop"
A batch fills one bitmask row per structured request (`fill_bitmask`) and masks all rows at once
with `apply_bitmask`; rows left at -1 (every bit set) are not masked.

Bitmask layout (llguidance's and xgrammar's): int32 words, bit j of word w allows token 32*w + j.
"""
from __future__ import annotations

import sys

import numpy as np
import torch

from turboctx.errors import TurboctxError
from turboctx.structured.backend import CompiledGrammar

_BITS = torch.arange(32, dtype=torch.int32)


class TokenRejectedError(TurboctxError, ValueError):
    """A token was accepted that the grammar did not allow (a sampler bug, never user input)."""


def bitmask_words(vocab_size: int) -> int:
    """int32 words needed for one row of a `vocab_size` bitmask."""
    return (vocab_size + 31) // 32


def allocate_bitmask(batch_size: int, vocab_size: int) -> torch.Tensor:
    """[batch_size, ceil(vocab_size/32)] int32, every token allowed (-1 = all bits set)."""
    return torch.full((batch_size, bitmask_words(vocab_size)), -1, dtype=torch.int32)


def unpack_bitmask(bitmask: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """bitmask: [..., W] int32 -> [..., vocab_size] bool (True = allowed); ids past 32*W are False,
    so logits wider than the tokenizer's vocabulary (padded embedding rows) stay disallowed."""
    return _unpack(bitmask, vocab_size, allowed=True)


def apply_bitmask(logits: torch.Tensor, bitmask: torch.Tensor) -> torch.Tensor:
    """logits: [B, V] (or [V]), bitmask: [B, W] (or [W]) int32, any device -> logits with the
    disallowed tokens at -inf (a new tensor). Rows of all ones change nothing."""
    if logits.device.type == "cpu" and logits.dtype in (torch.float32, torch.float64):
        # numpy on one core: torch's CPU thread pool costs milliseconds per op when cores are busy
        blocked = _unpack_numpy(bitmask, logits.shape[-1], allowed=False)
        values = logits.detach().numpy()
        return torch.from_numpy(np.where(blocked, values.dtype.type(-np.inf), values))
    blocked = _unpack(bitmask.to(logits.device, non_blocking=True), logits.shape[-1], allowed=False)
    return logits.masked_fill(blocked, float("-inf"))


def _unpack(bitmask: torch.Tensor, vocab_size: int, allowed: bool) -> torch.Tensor:
    """bitmask: [..., W] int32 -> [..., vocab_size] bool: the allowed ids, or the blocked ones.
    Ids past 32*W (no token) count as blocked."""
    if bitmask.device.type == "cpu":
        return torch.from_numpy(_unpack_numpy(bitmask, vocab_size, allowed))
    bits = _unpack_torch(bitmask, allowed)                                 # [..., 32W]
    n = bits.shape[-1]
    if vocab_size <= n:
        return bits[..., :vocab_size]
    pad = torch.full((*bits.shape[:-1], vocab_size - n), not allowed, dtype=torch.bool,
                     device=bits.device)
    return torch.cat([bits, pad], dim=-1)


def _unpack_numpy(bitmask: torch.Tensor, vocab_size: int, allowed: bool) -> np.ndarray:
    """CPU: [..., W] int32 -> [..., vocab_size] bool, with numpy's unpackbits on one core
    (~15 us for 49K ids; torch's CPU thread pool costs milliseconds per op on busy cores)."""
    words = bitmask.contiguous().numpy()
    if sys.byteorder == "big":
        words = words.byteswap()
    octets = words.view(np.uint8) if allowed else np.invert(words.view(np.uint8))  # [..., 4W]
    n = octets.shape[-1] * 8
    bits = np.unpackbits(octets, axis=-1, count=min(vocab_size, n), bitorder="little")
    if vocab_size > n:
        pad = [(0, 0)] * (bits.ndim - 1) + [(0, vocab_size - n)]
        bits = np.pad(bits, pad, constant_values=int(not allowed))
    return bits.view(np.bool_)


def _unpack_torch(bitmask: torch.Tensor, allowed: bool) -> torch.Tensor:
    """Any device: [..., W] int32 -> [..., 32W] bool, with shifts (one kernel each on a GPU)."""
    shifts = _BITS.to(bitmask.device)
    return (((bitmask.unsqueeze(-1) >> shifts) & 1) == int(allowed)).flatten(-2)


class GrammarMatcher:
    """Per-request state of a CompiledGrammar. Not thread-safe: one request, one thread."""

    def __init__(self, compiled: CompiledGrammar):
        self.compiled = compiled
        self.info = compiled.tokenizer_info
        self._ll = compiled._pristine.deep_copy()
        self._row = torch.empty(bitmask_words(self.info.vocab_size), dtype=torch.int32)  # [W]
        self._row_valid = False          # _row holds the mask of the current state
        self.num_accepted = 0

    # ---- the mask ---------------------------------------------------------------------------
    def fill_bitmask(self, out: torch.Tensor) -> None:
        """Write the next-token bitmask into `out`: [ceil(tokenizer vocab/32)] int32, CPU,
        contiguous (a row of `allocate_bitmask`)."""
        if out.dtype != torch.int32 or out.device.type != "cpu" or not out.is_contiguous() \
                or out.shape != self._row.shape:
            raise ValueError(f"bitmask row must be a contiguous CPU int32 tensor of shape "
                             f"{tuple(self._row.shape)}; got {out.dtype} {tuple(out.shape)} on {out.device}")
        if not self._row_valid:
            self._ll.unsafe_compute_mask_ptr(self._row.data_ptr(), self._row.numel() * 4)
            self._row_valid = True
        out.copy_(self._row)

    def bitmask(self) -> torch.Tensor:
        """The next-token bitmask: [ceil(tokenizer vocab/32)] int32 (a fresh tensor)."""
        out = torch.empty_like(self._row)
        self.fill_bitmask(out)
        return out

    def allowed_mask(self, vocab_size: int | None = None) -> torch.Tensor:
        """[vocab_size] bool, True where the next token may be that id (default: the tokenizer's
        vocabulary size; a larger size has its extra ids False)."""
        return unpack_bitmask(self.bitmask(), vocab_size or self.info.vocab_size)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        """logits: [V] or [1, V], any device and V >= 1 -> a copy with disallowed ids at -inf."""
        return apply_bitmask(logits, self.bitmask())

    # ---- the state --------------------------------------------------------------------------
    def accept(self, token_id: int) -> None:
        """Advance by one sampled token (EOS included). Raises TokenRejectedError if the grammar
        did not allow it; the matcher is then unusable."""
        t = int(token_id)
        if not 0 <= t < self.info.vocab_size:
            raise TokenRejectedError(
                f"token id {t} is outside the tokenizer's vocabulary [0, {self.info.vocab_size}); "
                f"padded rows are never allowed")
        if self.is_terminated() and t in self.info.eos_token_ids:
            return                       # EOS after the end: nothing left to match
        if not self._ll.consume_token(t):
            piece = self.info.tokenizer.decode([t], skip_special_tokens=False)
            error = self._ll.get_error().strip().splitlines()
            raise TokenRejectedError(
                f"token {t} ({piece!r}) is not allowed by the grammar after {self.num_accepted} "
                f"tokens: {error[0] if error else 'rejected'}")
        self._row_valid = False
        self.num_accepted += 1

    def can_end(self) -> bool:
        """The output so far is complete: EOS is allowed now (more tokens may still be)."""
        return self._ll.is_accepting()

    def is_terminated(self) -> bool:
        """Nothing but EOS can follow (the grammar is complete and cannot be extended, or EOS
        was accepted): the request finishes with finish_reason "stop"."""
        return self._ll.is_stopped() and not self._ll.is_error()

    def forced_tokens(self) -> list[int]:
        """The tokens the grammar forces next (its tokenization of the forced text, possibly
        shorter); empty when the model has a choice. Where it is not empty the mask allows
        exactly its first token."""
        return list(self._ll.compute_ff_tokens())

    def reset(self) -> None:
        """Back to the start of the grammar (for a new attempt at the same request)."""
        self._ll.reset()
        self._row_valid = False
        self.num_accepted = 0
