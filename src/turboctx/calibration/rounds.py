"""Sparsity refinement (Qwen2.5-1M report, section 5.2): per-head budgets from attention recall.

On calibration prompts, every sparse (chunk, layer) records each head's attention recall
exp(lse_sparse - lse_dense) at the chunk's last queries: the share of the dense softmax mass
that the selected set holds. Heads whose recall, averaged over chunks and prompts, is under the
threshold get larger budgets (both sizes times `growth`), and the prompts run again, until every
head passes or `rounds` is spent. Budgets are never lowered. The result is written as
`sparse_attention_config.json` in the Qwen2.5-*-1M format (sparse_config.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from turboctx.attention.sparse.config import Budget
from turboctx.attention.sparse.stats import RecallObserver


@dataclass
class CalibrationRound:
    budgets: list[list[Budget]]   # [layer][head] (vertical, slash) this round ran with
    recall: torch.Tensor          # [layers, heads] mean recall (nan: no sparse chunk)
    density: torch.Tensor         # [layers, heads] attended / causal entries

    def summary(self, threshold: float) -> dict:
        r = self.recall[~torch.isnan(self.recall)]
        d = self.density[~torch.isnan(self.density)]
        b = torch.tensor(self.budgets, dtype=torch.float64)
        q = (lambda x: float(torch.quantile(r, x))) if r.numel() else (lambda x: math.nan)
        return {"recall_mean": float(r.mean()) if r.numel() else math.nan,
                "recall_min": float(r.min()) if r.numel() else math.nan,
                "recall_p10": q(0.1), "recall_median": q(0.5),
                "heads_at_threshold": float((r >= threshold).double().mean()) if r.numel() else math.nan,
                "density_mean": float(d.mean()) if d.numel() else math.nan,
                "vertical_mean": float(b[..., 0].mean()), "slash_mean": float(b[..., 1].mean())}


@dataclass
class CalibrationResult:
    threshold: float
    rounds: list[CalibrationRound] = field(default_factory=list)

    @property
    def budgets(self) -> list[list[Budget]]:
        return self.rounds[-1].budgets

    @property
    def scores(self) -> list[list[float]]:
        """The recall each final budget was measured at (1.0 where no chunk ran sparse)."""
        r = self.rounds[-1].recall
        return [[1.0 if math.isnan(x) else round(float(x), 4) for x in row] for row in r]


def measure(llm, prompts: list[list[int]], num_layers: int, num_heads: int
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Runs the prompts (one token each) -> recall, density: [layers, heads] float64."""
    from turboctx import SamplingParams
    eng = llm.engine
    observer = RecallObserver()
    eng.reset_sparse_stats()
    eng.observe_sparse_recall(observer)
    sp = SamplingParams(max_tokens=1, temperature=0, ignore_eos=True)
    try:
        for ids in prompts:
            llm.generate([ids], sp, use_tqdm=False)
        eng.sparse_stats()                     # counts the attended entries (reported to observer)
    finally:
        eng.observe_sparse_recall(None)
    recall = torch.full((num_layers, num_heads), math.nan, dtype=torch.float64)
    density = torch.full((num_layers, num_heads), math.nan, dtype=torch.float64)
    for layer, recs in observer.recall.items():
        recall[layer] = torch.stack(recs).double().mean(0).cpu()
    for layer, items in observer.kept.items():
        kept = torch.stack([k for k, _ in items]).double().sum(0).cpu()
        density[layer] = kept / sum(t for _, t in items)
    return recall, density


def raise_budgets(budgets: list[list[Budget]], recall: torch.Tensor, threshold: float,
                  growth: float, cap: int, floor: Budget = (0, 0)) -> tuple[list[list[Budget]], int]:
    """Heads under the threshold get their effective budgets (at least `floor`: the forced sink
    columns and local diagonals) times growth, up to `cap`; returns (budgets, heads raised)."""
    out, raised = [], 0
    for li, layer in enumerate(budgets):
        row = []
        for hi, (v, s) in enumerate(layer):
            r = float(recall[li, hi])
            if not math.isnan(r) and r < threshold and (v < cap or s < cap):
                v, s = max(v, floor[0], 1), max(s, floor[1], 1)
                v, s = min(cap, max(v + 1, math.ceil(v * growth))), min(cap, max(s + 1, math.ceil(s * growth)))
                raised += 1
            row.append((v, s))
        out.append(row)
    return out, raised


def calibrate(llm, prompts: list[list[int]], *, threshold: float = 0.95, rounds: int = 3,
              growth: float = 2.0, progress=None) -> CalibrationResult:
    """Measure, raise the heads under `threshold`, measure again (`rounds` raises at most).
    The engine ends with the calibrated budgets."""
    if not 0 < threshold <= 1:
        raise ValueError(f"recall threshold {threshold} must be in (0, 1]")
    if growth <= 1:
        raise ValueError(f"growth {growth} must be > 1")
    eng = llm.engine
    m = eng.architecture
    L, H = m.num_hidden_layers, m.num_attention_heads
    cfg = eng.sparse_config()
    budgets = [cfg.budgets(layer, H) for layer in range(L)]
    cap = max(len(p) for p in prompts)
    result = CalibrationResult(threshold)
    for r in range(rounds + 1):
        eng.set_sparse_budgets(budgets)
        recall, density = measure(llm, prompts, L, H)
        result.rounds.append(CalibrationRound(budgets, recall, density))
        if progress:
            progress(r, result.rounds[-1].summary(threshold))
        if r == rounds:
            break
        budgets, raised = raise_budgets(budgets, recall, threshold, growth, cap,
                                        (cfg.sink_tokens, cfg.local_diagonals))
        if not raised:
            break
    return result


def plot_heatmaps(result: CalibrationResult, path, title: str = ""):
    """Density and recall per layer x head, before and after: a 2 x 2 PNG."""
    from turboctx.eval.plots import _plt, _save
    plt = _plt()
    first, last = result.rounds[0], result.rounds[-1]
    L, H = first.recall.shape
    fig, axes = plt.subplots(2, 2, figsize=(4 + 0.35 * H * 2, 2 + 0.3 * L * 2), squeeze=False)
    panels = [(first.density, "density, before", "viridis", None), (last.density, "density, after", "viridis", None),
              (first.recall, "recall, before", "RdYlGn", (max(0.0, result.threshold - 0.3), 1.0)),
              (last.recall, "recall, after", "RdYlGn", (max(0.0, result.threshold - 0.3), 1.0))]
    dmax = max(1e-6, float(torch.nan_to_num(torch.stack([first.density, last.density])).max()))
    for ax, (data, name, cmap, lim) in zip(axes.flat, panels):
        vmin, vmax = lim if lim else (0.0, dmax)
        im = ax.imshow(data.numpy(), cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto",
                       interpolation="nearest")
        ax.set_title(name)
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        fig.colorbar(im, ax=ax)
    if title:
        fig.suptitle(title)
    return _save(plt, fig, path)
