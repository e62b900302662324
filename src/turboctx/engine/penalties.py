"""Logit processing before a token is chosen: logit bias, repetition, presence and frequency
penalties and min_tokens (vLLM's meanings and order: penalties on the raw logits, then temperature, min-p,
top-k and top-p in the sampler).

- logit_bias (OpenAI): a value in [-100, 100] added to a token's logit.
- repetition_penalty r (Keskar et al. 2019, CTRL; HF's and vLLM's form): every token that occurs
  in the prompt or the output so far has its logit divided by r when positive, multiplied by r
  when negative.
- presence_penalty p and frequency_penalty f (OpenAI): logit -= p * [count > 0] + f * count, with
  count = occurrences in the output only.
- min_tokens m: EOS and stop_token_ids are masked to -inf while fewer than m tokens exist.

Per request the state is one int32 count vector [V] and (for repetition) a bool prompt mask [V]
on the logits' device, updated by one indexed add per generated token: no per-step work grows
with the prompt or output length.
"""
from __future__ import annotations

import torch

from turboctx.engine.sampling_params import SamplingParams


class PenaltyState:
    """What the penalties of one request need: output token counts and the prompt's tokens."""

    def __init__(self, prompt_ids: list[int], output_ids: list[int], params: SamplingParams,
                 vocab_size: int, device: torch.device):
        self.counts = torch.zeros(vocab_size, dtype=torch.int32, device=device)          # [V]
        if output_ids:
            ids = torch.tensor(output_ids, dtype=torch.long, device=device)
            self.counts.index_add_(0, ids, torch.ones_like(ids, dtype=torch.int32))
        self.prompt_mask = None                                                          # [V] bool
        if params.repetition_penalty != 1.0:
            self.prompt_mask = torch.zeros(vocab_size, dtype=torch.bool, device=device)
            self.prompt_mask[torch.tensor(prompt_ids, dtype=torch.long, device=device)] = True

    def observe(self, token: int) -> None:
        self.counts[token] += 1


def apply_penalties(row: torch.Tensor, params: SamplingParams, state: PenaltyState) -> torch.Tensor:
    """row: [V] float32 raw logits of one request -> the penalized logits [V]."""
    r = params.repetition_penalty
    if r != 1.0:
        seen = state.counts > 0
        if state.prompt_mask is not None:
            seen = seen | state.prompt_mask
        row = torch.where(seen, torch.where(row > 0, row / r, row * r), row)
    if params.frequency_penalty:
        row = row - params.frequency_penalty * state.counts.to(row.dtype)
    if params.presence_penalty:
        row = row - params.presence_penalty * (state.counts > 0).to(row.dtype)
    return row


def apply_logit_bias(row: torch.Tensor, bias: dict[int, float]) -> torch.Tensor:
    """row: [V] -> row + bias at the biased token ids (OpenAI's logit_bias; ids past the logits'
    vocabulary are an error the request check catches first)."""
    ids = torch.tensor(list(bias), dtype=torch.long, device=row.device)
    vals = torch.tensor(list(bias.values()), dtype=row.dtype, device=row.device)
    return row.index_add(0, ids, vals)


def mask_min_tokens(row: torch.Tensor, blocked: list[int]) -> torch.Tensor:
    """row: [V] -> the same with the `blocked` token ids (EOS, stop ids) at -inf."""
    ids = [t for t in blocked if 0 <= t < row.shape[-1]]
    if not ids:
        return row
    return row.index_fill(0, torch.tensor(ids, device=row.device), float("-inf"))


def apply_min_p(row: torch.Tensor, min_p: float) -> torch.Tensor:
    """row: [V] temperature-scaled logits -> tokens whose probability is under min_p times the
    top token's at -inf (Nguyen et al. 2024, min-p sampling). In logit space:
    p_i < min_p * p_max  <=>  logit_i < logit_max + log(min_p)."""
    if min_p <= 0:
        return row
    cut = row.max() + torch.log(torch.tensor(min_p, dtype=row.dtype, device=row.device))
    return row.masked_fill(row < cut, float("-inf"))
