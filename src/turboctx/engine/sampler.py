"""Turns the last-position logits of a batch into tokens (and logprobs)."""
from __future__ import annotations

import torch

from turboctx.engine.logits_processing import process_logits
from turboctx.engine.penalties import apply_min_p
from turboctx.engine.request import Request


def top_logprobs(logprobs: torch.Tensor, k: int, chosen: torch.Tensor | None = None
                 ) -> list[dict[int, float]]:
    """logprobs: [M, V] -> per row {token_id: logprob} of the top-k, plus `chosen` [M] if given."""
    rows: list[dict[int, float]] = [dict() for _ in range(logprobs.shape[0])]
    if k > 0:
        vals, ids = logprobs.topk(k, dim=-1)
        for row, (v, i) in zip(rows, zip(vals.tolist(), ids.tolist())):
            row.update(zip(i, v))
    if chosen is not None:
        picked = logprobs.gather(1, chosen[:, None].to(logprobs.device))[:, 0].tolist()
        for row, t, lp in zip(rows, chosen.tolist(), picked):
            row.setdefault(t, lp)
    return rows


def _filter_top_k_top_p(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """logits: [V] (already temperature-scaled) -> logits with excluded tokens at -inf."""
    if top_k > 0 and top_k < logits.shape[-1]:
        kth = logits.topk(top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(descending=True)
        probs = sorted_logits.softmax(-1)
        # drop a token when the mass before it already reaches top_p (the first token always stays)
        drop = (probs.cumsum(-1) - probs) >= top_p
        drop[0] = False          # the most likely token always stays (even for a top_p near 0)
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(0, order, sorted_logits)
    return logits


def sample(logits: torch.Tensor, requests: list[Request], generator: torch.Generator | None = None
           ) -> tuple[list[int], list[dict | None]]:
    """logits: [B, V] float32, one row per request -> chosen token ids and their logprob dicts.
    A request with a seed draws from its own generator; the others from `generator`. Logprobs are
    those of the raw logits (vLLM's default), before penalties, temperature and filters."""
    processed = process_logits(logits, requests)
    tokens = processed.argmax(dim=-1).tolist()
    for i, req in enumerate(requests):
        p = req.params
        if p.greedy:
            continue
        row = processed[i] / p.temperature
        row = apply_min_p(row, p.min_p)
        row = _filter_top_k_top_p(row, p.top_k, p.top_p)
        probs = row.softmax(-1)
        if req.generator is None and p.seed is not None:
            req.generator = torch.Generator(device=logits.device).manual_seed(p.seed)
        tokens[i] = int(torch.multinomial(probs, 1, generator=req.generator if req.generator is not None else generator).item())
    for req, tok in zip(requests, tokens):
        if req.penalty_state is not None:
            req.penalty_state.observe(tok)
        if req.grammar is not None:
            req.grammar.accept(tok)
    want = [i for i, r in enumerate(requests) if r.params.logprobs is not None]
    logprob_rows: list[dict | None] = [None] * len(requests)
    if want:
        idx = torch.tensor(want, device=logits.device)
        lp = torch.log_softmax(logits.index_select(0, idx), dim=-1)
        chosen = torch.tensor([tokens[i] for i in want])
        k = max(requests[i].params.logprobs for i in want)
        rows = top_logprobs(lp, k, chosen)
        for j, i in enumerate(want):
            kk = requests[i].params.logprobs
            row = dict(list(rows[j].items())[:kk])
            row.setdefault(tokens[i], rows[j][tokens[i]])
            logprob_rows[i] = row
    return tokens, logprob_rows
