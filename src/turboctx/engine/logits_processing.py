"""A step's logits before sampling: per request, logit bias, penalties and the min_tokens mask
(engine/penalties.py), then the grammars of structured requests, masked all at once."""
from __future__ import annotations

import torch

from turboctx.engine.penalties import (PenaltyState, apply_logit_bias, apply_penalties,
                                       mask_min_tokens)
from turboctx.engine.request import Request


def needs_processing(req: Request) -> bool:
    p = req.params
    return p.processes_logits or _min_tokens_active(req) or req.grammar is not None


def _min_tokens_active(req: Request) -> bool:
    return len(req.output_token_ids) < req.params.min_tokens


def processed_row(row: torch.Tensor, req: Request, with_min_tokens: bool = True) -> torch.Tensor:
    """row: [V] raw logits of one request -> after its logit bias, penalties and min_tokens mask."""
    p = req.params
    if p.logit_bias:
        row = apply_logit_bias(row, p.logit_bias)
    if p.has_penalties:
        if req.penalty_state is None:
            req.penalty_state = PenaltyState(req.prompt_token_ids, req.output_token_ids, p,
                                             row.shape[-1], row.device)
        row = apply_penalties(row, p, req.penalty_state)
    if with_min_tokens and _min_tokens_active(req):
        row = mask_min_tokens(row, sorted(req.eos_token_ids | set(p.stop_token_ids)))
    return row


def process_logits(logits: torch.Tensor, requests: list[Request]) -> torch.Tensor:
    """logits: [B, V] float32, one row per request -> the logits to sample from ([B, V]; the input
    itself when no request changes its row). The structured requests' next-token masks are
    filled into one bitmask [S, ceil(vocab/32)] on the CPU and applied in one go."""
    todo = [i for i, r in enumerate(requests) if needs_processing(r)]
    if not todo:
        return logits
    out = logits.clone()
    for i in todo:
        if requests[i].params.processes_logits or _min_tokens_active(requests[i]):
            out[i] = processed_row(logits[i], requests[i])
    structured = [i for i in todo if requests[i].grammar is not None]
    if structured:
        _apply_grammars(out, logits, structured, requests)
    return out


def _apply_grammars(out: torch.Tensor, logits: torch.Tensor, rows: list[int],
                    requests: list[Request]) -> None:
    from turboctx.structured import allocate_bitmask, apply_bitmask
    bits = allocate_bitmask(len(rows), requests[rows[0]].grammar.info.vocab_size)   # [S, W]
    for j, i in enumerate(rows):
        requests[i].grammar.fill_bitmask(bits[j])
    idx = torch.tensor(rows, device=out.device)
    masked = apply_bitmask(out.index_select(0, idx), bits)                         # [S, V]
    # a complete grammar may allow EOS alone while min_tokens masks it: the grammar wins there
    late = [j for j, i in enumerate(rows) if _min_tokens_active(requests[i])]
    for j in late:
        if not bool(torch.isfinite(masked[j]).any()):
            i = rows[j]
            masked[j] = apply_bitmask(processed_row(logits[i], requests[i], with_min_tokens=False),
                                      bits[j])
    out.index_copy_(0, idx, masked.to(out.device))
