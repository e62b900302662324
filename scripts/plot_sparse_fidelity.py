"""Sparse minus dense NLL per position bin, our runs beside the issue's naive reference (issue #5).

Reads the JSON files that `scripts/sparse_gpu.py fidelity` wrote (one dense row and sparse rows,
each {"nll": {bin: nats}, "density_last_block": ...}; every file also carries the issue's
reference deltas under "reference") and draws one line per sparse setting, the reference dashed,
and the goal (+0.05 nats) as a band edge. Runs whose file has no dense row are measured against
--dense (their `sparse_gpu.py --dense-json`), as they were in their session.

    python3 scripts/plot_sparse_fidelity.py --dense docs/results/sparse_eval_s4/fidelity_continuous/sparse_fidelity.json \
        --run "DCA selection=docs/results/sparse_eval_s4/fidelity_dca_selection/sparse_fidelity.json" \
        --run "DCA selection=docs/results/sparse_eval_s5/fidelity_calibrated/sparse_fidelity.json" \
        --out docs/results/sparse_fidelity.png
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

BINS = ("8K-16K", "16K-32K", "32K-64K")      # the bins the reference gives
GOAL = 0.05                                  # nats: the bound per bin
# the last-block densities the issue states for its naive reference runs
REFERENCE_DENSITY = {"(2000, 6000)": 0.12, "(1000, 2000)": 0.05, "(300, 600)": 0.017}


def deltas(run: dict, dense_nll: dict[str, float]) -> dict[str, dict]:
    """{label: {"delta": {bin: sparse - dense}, "density_last_block": float}} for each sparse row."""
    out = {}
    for label, row in run["results"].items():
        if label == "dense":
            continue
        if label.endswith(".json)"):                       # sparse (cal/sparse_attention_config.json)
            label = "calibrated budgets"
        out[label] = {"delta": {b: row["nll"][b] - dense_nll[b] for b in BINS},
                      "density_last_block": row.get("density_last_block")}
    return out


def reference_deltas(run: dict) -> dict[str, dict[str, float]]:
    """The issue's naive vertical-slash runs: {"(2000, 6000)": {bin: delta}, ...}."""
    return {k.replace(" delta", ""): v for k, v in run["reference"].items() if k.endswith(" delta")}


def plot(series: dict[str, dict], reference: dict[str, dict[str, float]], path: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(10, 4.8))
    x = range(len(BINS))
    for label, s in series.items():
        dens = s["density_last_block"]
        name = label + (f", {100 * dens:.1f}% last block" if dens is not None else "")
        ax.plot(x, [s["delta"][b] for b in BINS], marker="o", label=name)
    for (label, d), style in zip(reference.items(), ("--", "-.", ":", (0, (5, 5)))):
        dens = REFERENCE_DENSITY.get(label)
        ax.plot(x, [d[b] for b in BINS], linestyle=style, marker="x", color="grey",
                label=f"issue's naive reference {label}"
                + (f", {100 * dens:.1f}% last block" if dens else ""))
    ax.axhline(GOAL, color="red", linewidth=0.8, linestyle=":", label=f"goal: +{GOAL} nats")
    ax.axhline(0, color="black", linewidth=0.5)
    ax.set_xticks(list(x), BINS)
    ax.set_xlabel("token position bin (64K tokens of the ASV, default model + DCA, fp32)")
    ax.set_ylabel("sparse − dense NLL (nats)")
    ax.set_title("Sparse prefill fidelity against dense DCA")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> dict[str, dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dense", required=True, help="a fidelity JSON with a 'dense' row")
    ap.add_argument("--run", action="append", default=[],
                    help="PREFIX=FILE: its sparse rows, labelled 'PREFIX: row' (repeatable)")
    ap.add_argument("--out", default="sparse_fidelity.png")
    a = ap.parse_args(argv)
    base = json.loads(Path(a.dense).read_text())
    if "dense" not in base["results"]:
        ap.error(f"--dense {a.dense}: no 'dense' row in its results")
    dense_nll = base["results"]["dense"]["nll"]
    series = {f"continuous: {k}": v for k, v in deltas(base, dense_nll).items()}
    for spec in a.run:
        prefix, sep, file = spec.partition("=")
        if not sep:
            ap.error(f"--run {spec!r}: use PREFIX=FILE")
        run = json.loads(Path(file).read_text())
        own = run["results"].get("dense", {}).get("nll", dense_nll)
        for k, v in deltas(run, own).items():
            series[f"{prefix}: {k}"] = v
    path = plot(series, reference_deltas(base), Path(a.out))
    for label, s in series.items():
        print(f"{label:55s} " + "  ".join(f"{b} {s['delta'][b]:+.3f}" for b in BINS))
    print(f"plot: {path}")
    return series


if __name__ == "__main__":
    main()
