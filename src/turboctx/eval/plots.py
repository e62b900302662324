"""PNG plots: the NIAH / passkey heatmap (depth rows x length columns) and NLL by position."""
from __future__ import annotations

from pathlib import Path


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


MAX_DEPTH_ROWS = 20   # more depths than this (random:N): the heatmap bins them into rows of 10%


def heatmap(grid: dict[str, dict[str, float | None]], path: str | Path, title: str = "") -> Path:
    """grid[depth][length] = score in percent (summary.json's "grid"): the usual NIAH picture,
    green = retrieved, red = missed, depth 0% on top."""
    plt = _plt()
    from matplotlib.colors import LinearSegmentedColormap
    depths = sorted(grid, key=float)
    lengths = sorted({L for row in grid.values() for L in row}, key=int)
    data = [[(grid[d].get(L) if grid[d].get(L) is not None else float("nan")) for L in lengths]
            for d in depths]
    labels = [f"{100 * float(d):.0f}%" for d in depths]
    if len(depths) > MAX_DEPTH_ROWS:   # many depths (random:N): rows of 10% of depth, mean score
        data, labels = _bin_depths(depths, data, len(lengths))
    cmap = LinearSegmentedColormap.from_list("niah", ["#F0496E", "#EBB839", "#0CD79F"])
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(lengths), 1.2 + 0.45 * len(labels)))
    im = ax.imshow(data, cmap=cmap, vmin=0, vmax=100, aspect="auto")
    ax.set_xticks(range(len(lengths)), [_fmt_len(int(L)) for L in lengths])
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("needle depth")
    for i, row in enumerate(data):
        for j, v in enumerate(row):
            if v == v:  # not NaN
                ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=8)
    fig.colorbar(im, ax=ax, label="score (%)")
    ax.set_title(title)
    return _save(plt, fig, path)


def _bin_depths(depths: list[str], data: list[list[float]], n_cols: int, bins: int = 10):
    """Rows of depth [0, 10%), ..., [90, 100%]: the mean of the scores of the depths inside."""
    rows, labels = [], []
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        inside = [r for d, r in zip(depths, data)
                  if lo <= float(d) < hi or (b == bins - 1 and float(d) == hi)]
        rows.append([_mean([r[j] for r in inside if r[j] == r[j]]) for j in range(n_cols)])
        labels.append(f"{100 * lo:.0f}-{100 * hi:.0f}% ({len(inside)})")
    return rows, labels


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def nll_by_position(results: dict[str, dict[str, float | None]], path: str | Path,
                    title: str = "") -> Path:
    """results[setting][bin label] = mean NLL; one line per engine setting."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, bins in results.items():
        labels = list(bins)
        ys = [bins[b] if bins[b] is not None else float("nan") for b in labels]
        ax.plot(range(len(labels)), ys, marker="o", label=name)
        ax.set_xticks(range(len(labels)), labels, rotation=30)
    ax.set_xlabel("token position")
    ax.set_ylabel("mean NLL (nats / token)")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title)
    return _save(plt, fig, path)


def _fmt_len(n: int) -> str:
    if n >= 1024 * 1024 and n % (1024 * 1024) == 0:
        return f"{n // (1024 * 1024)}M"
    return f"{n // 1024}K" if n % 1024 == 0 else str(n)


def _save(plt, fig, path: str | Path) -> Path:
    fig.tight_layout(rect=(0, 0, 1, 0.97) if fig.get_suptitle() else None)   # room for a suptitle
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
