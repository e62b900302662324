"""`turboctx calibrate`: per-head sparse budgets from attention recall on built-in prompts.

    turboctx calibrate --model path/to/hf-folder --length 32k            # writes beside the weights
    turboctx calibrate --model m.gguf --dca --length 64k --out cal/ --plot cal/heatmap.png

Engine options as for any command; calibration runs sparse prefill from the first row
(--sparse-threshold 1) with no dense tail, so every row of every chunk is measured.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from turboctx.cli.engine_options import engine_options

CALIBRATION_ENGINE = dict(
    exclude=("max_model_len", "seed"),
    defaults={"attention": "sparse", "sparse_threshold": 1, "sparse_dense_tail": 0,
              "enable_prefix_caching": False})

calibrate_app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)

PROMPT_KINDS = ("passkey", "niah", "random")


def calibration_prompts(tokenizer, kinds: list[str], length: int, seed: int,
                        vocab_size: int) -> list[list[int]]:
    """Token ids of each prompt kind at `length` tokens: passkey and niah (turboctx.eval, needle
    at 50% / 30% depth) need a tokenizer; random ids work on any model."""
    import torch

    from turboctx.eval import niah, passkey
    out = []
    for kind in kinds:
        if kind not in PROMPT_KINDS:
            raise typer.BadParameter(f"unknown prompt kind {kind!r}; use {', '.join(PROMPT_KINDS)}")
        if kind == "random" or tokenizer is None:
            g = torch.Generator().manual_seed(seed + len(out))
            out.append(torch.randint(3, max(4, vocab_size - 3), (length,), generator=g).tolist())
            continue
        count = lambda text: len(tokenizer.encode(text))   # noqa: E731
        gen = passkey.generate if kind == "passkey" else niah.generate
        depth = 0.5 if kind == "passkey" else 0.3
        sample = gen([length], [depth], 1, seed, count)[0]
        out.append(list(tokenizer.encode(sample.prompt)))
    return out


def default_out(model: str | None) -> Path:
    """Beside the weights when they are a writable folder, else the working directory."""
    from turboctx.attention.sparse.config import CONFIG_FILENAME
    if model and Path(model).is_dir() and _writable(Path(model)):
        return Path(model) / CONFIG_FILENAME
    return Path.cwd() / CONFIG_FILENAME


def _writable(d: Path) -> bool:
    import os
    return os.access(d, os.W_OK)


def print_summary(result, title: str) -> None:
    from rich.console import Console
    from rich.table import Table
    table = Table(title=title)
    cols = ["round", "vertical_mean", "slash_mean", "recall_mean", "recall_min", "recall_p10",
            "recall_median", "heads_at_threshold", "density_mean"]
    for c in cols:
        table.add_column(c, justify="right")
    for i, rnd in enumerate(result.rounds):
        s = rnd.summary(result.threshold)
        table.add_row(str(i), *[f"{s[c]:.4g}" for c in cols[1:]])
    Console(width=160).print(table)


@calibrate_app.command()
@engine_options(**CALIBRATION_ENGINE)
def calibrate(length: Annotated[str, typer.Option(help="tokens per calibration prompt, e.g. 16k")] = "16k",
              prompts: Annotated[str, typer.Option(help="comma list of passkey, niah, random")] = "passkey,niah",
              recall_threshold: Annotated[float, typer.Option(help="heads under this mean recall get larger budgets")] = 0.95,
              rounds: Annotated[int, typer.Option(min=0, help="budget raises at most")] = 3,
              growth: Annotated[float, typer.Option(help="budget multiplier per raise")] = 2.0,
              vertical_size: Annotated[Optional[int], typer.Option(help="starting vertical budget of every head (default: the model's file, else 1000)")] = None,
              slash_size: Annotated[Optional[int], typer.Option(help="starting slash budget of every head (default: the model's file, else 6096)")] = None,
              out: Annotated[Optional[Path], typer.Option(help="file or folder for sparse_attention_config.json (default: beside the weights when writable, else here)")] = None,
              plot: Annotated[Optional[Path], typer.Option(help="PNG heatmap of density and recall per layer x head")] = None,
              json_path: Annotated[Optional[Path], typer.Option("--json", help="every round's figures")] = None,
              seed: Annotated[int, typer.Option(help="seed of the calibration prompts")] = 0,
              *, options: dict):
    """Measure each head's attention recall exp(lse_sparse - lse_dense) on built-in prompts, raise
    the budgets of heads under --recall-threshold, write sparse_attention_config.json."""
    import json

    from turboctx import LLM
    from turboctx.attention.sparse.config import CONFIG_FILENAME, write_sparse_attention_config
    from turboctx.calibration.rounds import calibrate as run_calibration, plot_heatmaps
    from turboctx.config.options import parse_size
    n = parse_size(length, "length")
    model = options.get("model")
    llm = LLM(**options, max_model_len=n + 16)
    eng, m = llm.engine, llm.architecture
    if vertical_size is not None or slash_size is not None:
        cfg, H = eng.sparse_config(), m.num_attention_heads
        eng.set_sparse_budgets([[(vertical_size if vertical_size is not None else v,
                                  slash_size if slash_size is not None else s)
                                 for v, s in cfg.budgets(layer, H)]
                                for layer in range(m.num_hidden_layers)])
    ids = calibration_prompts(llm.tokenizer, [p.strip() for p in prompts.split(",") if p.strip()],
                              n - 1, seed, m.vocab_size)
    typer.echo(f"calibrating {model or 'default model'}: {len(ids)} prompt(s) of {n} tokens, "
               f"recall threshold {recall_threshold}", err=True)
    result = run_calibration(llm, ids, threshold=recall_threshold, rounds=rounds, growth=growth,
                             progress=lambda r, s: typer.echo(
                                 f"round {r}: recall mean {s['recall_mean']:.4f} min {s['recall_min']:.4f}, "
                                 f"{100 * s['heads_at_threshold']:.1f}% of heads at threshold, "
                                 f"density {s['density_mean']:.4f}", err=True))
    print_summary(result, f"recall per head, threshold {recall_threshold} (round 0 = before)")
    target = out if out is not None else default_out(model)
    if target.suffix != ".json":
        target.mkdir(parents=True, exist_ok=True)
    path = write_sparse_attention_config(target, result.budgets, result.scores)
    typer.echo(f"wrote {path}")
    if not (model and Path(model).is_dir() and path.resolve() == (Path(model) / CONFIG_FILENAME).resolve()):
        # only an HF folder's own file is read by itself (a GGUF's folder may hold other models)
        typer.echo(f"use it with: --attention sparse --sparse-config {path}", err=True)
    if plot:
        plot_heatmaps(result, plot, f"{Path(model).name if model else 'default model'}, {n} tokens")
        typer.echo(f"wrote {plot}")
    if json_path:
        json_path.write_text(json.dumps({
            "model": model, "length": n, "threshold": recall_threshold, "options": options,
            "rounds": [{"summary": r.summary(recall_threshold), "budgets": r.budgets,
                        "recall": r.recall.tolist(), "density": r.density.tolist()}
                       for r in result.rounds]}, indent=1))
