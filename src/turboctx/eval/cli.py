"""`turboctx eval ...`: passkey, niah, ruler, ppl against the local engine, HF transformers
(--target hf) or an OpenAI-compatible server (--base-url).

    turboctx eval passkey --lengths 1k,2k,4k,8k --trials 6 --out runs/passkey
    turboctx eval niah --model path/to/model --dca --lengths 4k,16k,64k --out runs/niah
    turboctx eval ruler --lengths 4k --samples 20 --tasks niah_single_1,vt,cwe --out runs/ruler
    turboctx eval ruler --base-url http://localhost:8000/v1 --api-key K ...   (counts via /tokenize)
    turboctx eval ruler --base-url URL --chat --tokenizer path/to/served-model ...
    turboctx eval ruler --target hf --dtype float32 ...   (HF transformers on the same prompts)
    turboctx eval ppl --lengths 32k --setting dca=false --setting dca=true --out runs/ppl
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Iterator, Optional

import typer

from turboctx.cli.engine_options import engine_options
from turboctx.cli.parsing import option_sizes, parse_option
from turboctx.eval import niah as niah_mod
from turboctx.eval import passkey as passkey_mod
from turboctx.eval.common import parse_depths
from turboctx.eval.summary import not_built_key
from turboctx.eval.target_flags import (ApiKeyOpt, BaseUrlOpt, BatchOpt, ChatOpt, ConcOpt,
                                        SavePromptsOpt, SeedOpt, ServedOpt, TargetOpt,
                                        TemplateOpt, TokOpt, describe, make_target, make_wrap,
                                        resolve_template)
from turboctx.eval.targets import LocalTarget, TargetUnavailable

eval_app = typer.Typer(help="Long-context evaluation: passkey, needle-in-a-haystack, RULER, "
                            "perplexity by position.", no_args_is_help=True)
# the engine options of the local engine; --seed here is the samples' seed
EVAL_ENGINE = dict(exclude=("seed",))


@contextlib.contextmanager
def target_errors() -> Iterator[None]:
    """A target that cannot be used (unreachable, tokens not countable) ends the command with
    one line, never a traceback."""
    try:
        yield
    except TargetUnavailable as e:
        typer.secho(f"error: {e}", fg="red", err=True)
        raise typer.Exit(2)


def _setup(options: dict, base_url, api_key, chat, served_model, tokenizer, concurrency,
           batch_size, target_kind: str, template: str):
    """(target, wrap, meta) from the common flags; says (and meta records) which prompt form
    the target gets and who counts its tokens."""
    template = resolve_template(template, chat)
    target = make_target(options, base_url, api_key, served_model, tokenizer, concurrency,
                         batch_size, kind=target_kind)
    wrap = make_wrap(target, template)
    with target_errors():
        form = describe(target, template)
    typer.echo(form, err=True)
    return target, wrap, {"template": template, "prompt_form": form}


def _run(samples, target, out: Path, save_prompts: bool, meta: dict, heat: bool = False,
         not_built: dict[str, str] | None = None):
    from turboctx.eval.summary import print_table
    from turboctx.eval.runner import run_samples
    with target_errors():
        confirm = getattr(target, "confirm_prompt_tokens", None)
        if confirm is not None and (checked := confirm(samples)):
            typer.echo(f"{checked} prompt lengths agree with the server's /tokenize", err=True)
        summary = run_samples(samples, target, out, save_prompts=save_prompts, meta=meta,
                              not_built=not_built)
    print_table(summary, title=f"{meta.get('command')} — {getattr(target, 'name', '')}")
    if heat:
        from turboctx.eval.plots import heatmap
        for task, t in summary["tasks"].items():
            if "grid" in t:
                p = heatmap(t["grid"], out / f"{task}_heatmap.png",
                            title=f"{task}: {getattr(target, 'name', '')}")
                typer.echo(f"heatmap: {p}")
    typer.echo(f"samples: {out / 'samples.jsonl'}\nsummary: {out / 'summary.json'}")
    return summary


@eval_app.command()
@engine_options(**EVAL_ENGINE)
def passkey(target_kind: str = TargetOpt,
            base_url: Optional[str] = BaseUrlOpt, api_key: Optional[str] = ApiKeyOpt,
            chat: bool = ChatOpt, served_model: Optional[str] = ServedOpt,
            tokenizer: Optional[str] = TokOpt, concurrency: int = ConcOpt,
            batch_size: int = BatchOpt,
            lengths: str = typer.Option("1k,2k,4k,8k", help="Total tokens per prompt (k = 1024)."),
            depths: str = typer.Option("0,0.25,0.5,0.75,1", help="Needle depths: fractions, "
                                      "percents, grid:N (evenly spaced) or random:N (from --seed)."),
            trials: int = typer.Option(5, help="Trials per (length, depth) cell."),
            digits: Optional[int] = typer.Option(None, help="Digits of the pass key (default: "
                                                 "the classic key, 1 to 50000)."),
            scoring: str = typer.Option("first-integer", "--passkey-scoring", help="first-integer "
                                        "(the classic: the reply's first integer is the key) | "
                                        "substring (the key anywhere in the reply)."),
            seed: int = SeedOpt, template: str = TemplateOpt,
            out: Path = typer.Option(Path("eval_out/passkey")), save_prompts: bool = SavePromptsOpt,
            *, options: dict):
    """Passkey retrieval over lengths x depths (the classic prompt); heatmap PNG."""
    parse_option("--passkey-scoring", passkey_mod.scoring_metric, scoring)
    if digits is not None and digits < 1:
        raise typer.BadParameter(f"--digits {digits}: a pass key needs at least 1 digit")
    target, wrap, form = _setup(options, base_url, api_key, chat, served_model, tokenizer,
                                    concurrency, batch_size, target_kind, template)
    with target_errors():
        samples = passkey_mod.generate(
            option_sizes(lengths), parse_option("--depths", parse_depths, depths, seed), trials,
            seed, target.count_tokens, wrap=lambda p: wrap(p, ""), digits=digits, scoring=scoring)
    _run(samples, target, out, save_prompts, {"command": "passkey", "seed": seed, "options": options,
                                              **form, "scoring": scoring}, heat=True)


@eval_app.command()
@engine_options(**EVAL_ENGINE)
def niah(target_kind: str = TargetOpt,
         base_url: Optional[str] = BaseUrlOpt, api_key: Optional[str] = ApiKeyOpt,
         chat: bool = ChatOpt, served_model: Optional[str] = ServedOpt,
         tokenizer: Optional[str] = TokOpt, concurrency: int = ConcOpt, batch_size: int = BatchOpt,
         lengths: str = typer.Option("1k,2k,4k,8k"),
         depths: str = typer.Option("0,10,20,30,40,50,60,70,80,90,100",
                                    help="Needle depths: percents, fractions, grid:N or random:N."),
         trials: int = typer.Option(1), seed: int = SeedOpt, template: str = TemplateOpt,
         needle: str = typer.Option(niah_mod.NEEDLE, help="Needle sentence; {value} = a random 7-digit number."),
         question: str = typer.Option(niah_mod.QUESTION),
         answer_prefix: str = typer.Option(niah_mod.ANSWER_PREFIX),
         expected: Optional[str] = typer.Option(None, help="Comma-separated words the answer must "
                                                "contain (for a needle without {value})."),
         haystack: Optional[Path] = typer.Option(None, help="Haystack text file (default: ASV Bible)."),
         out: Path = typer.Option(Path("eval_out/niah")), save_prompts: bool = SavePromptsOpt,
         *, options: dict):
    """Needle in a haystack over lengths x depths; heatmap PNG (depth rows, length columns)."""
    target, wrap, form = _setup(options, base_url, api_key, chat, served_model, tokenizer,
                                    concurrency, batch_size, target_kind, template)
    with target_errors():
        samples = niah_mod.generate(
            option_sizes(lengths), parse_option("--depths", parse_depths, depths, seed), trials,
            seed, target.count_tokens, wrap=wrap, needle=needle, question=question,
            answer_prefix=answer_prefix,
            expected=[w.strip() for w in expected.split(",")] if expected else None,
            haystack=str(haystack) if haystack else None)
    _run(samples, target, out, save_prompts, {"command": "niah", "seed": seed, "options": options,
                                              **form}, heat=True)


@eval_app.command()
@engine_options(**EVAL_ENGINE)
def ruler(target_kind: str = TargetOpt,
          base_url: Optional[str] = BaseUrlOpt, api_key: Optional[str] = ApiKeyOpt,
          chat: bool = ChatOpt, served_model: Optional[str] = ServedOpt,
          tokenizer: Optional[str] = TokOpt, concurrency: int = ConcOpt, batch_size: int = BatchOpt,
          lengths: str = typer.Option("4k"), samples: int = typer.Option(20, help="Samples per task and length."),
          tasks: str = typer.Option("all", help="Comma-separated RULER tasks, or all (13 tasks)."),
          seed: int = SeedOpt, template: str = TemplateOpt,
          squad: Optional[Path] = typer.Option(None, help="SQuAD v2 dev JSON for qa_1."),
          hotpotqa: Optional[Path] = typer.Option(None, help="HotpotQA dev JSON for qa_2."),
          haystack: Optional[Path] = typer.Option(None, help="Essay haystack text (default: ASV Bible)."),
          out: Path = typer.Option(Path("eval_out/ruler")), save_prompts: bool = SavePromptsOpt,
          *, options: dict):
    """RULER synthetic tasks with RULER's templates, length fitting and scorers."""
    from turboctx.eval import ruler as ruler_mod
    names = ruler_mod.ALL_TASKS if tasks == "all" else [t.strip() for t in tasks.split(",") if t.strip()]
    unknown = [n for n in names if n not in ruler_mod.ALL_TASKS]
    if unknown:
        raise typer.BadParameter(f"--tasks: unknown {', '.join(unknown)}; known: "
                                 f"{', '.join(ruler_mod.ALL_TASKS)} (or all)")
    sizes = option_sizes(lengths)
    target, wrap, form = _setup(options, base_url, api_key, chat, served_model, tokenizer,
                                    concurrency, batch_size, target_kind, template)
    qa_files = {k: str(v) for k, v in (("squad", squad), ("hotpotqa", hotpotqa)) if v}
    all_samples, not_built = [], {}
    with target_errors():
        for name in names:
            for L in sizes:
                try:
                    all_samples += ruler_mod.generate(name, L, samples, seed, target.count_tokens,
                                                      wrap, haystack=str(haystack) if haystack else None,
                                                      qa_files=qa_files)
                except TargetUnavailable:
                    raise
                except (ruler_mod.NotRun, ValueError, RuntimeError) as e:
                    not_built[not_built_key(name, L)] = str(e)
                    typer.secho(f"not built: {name} at {L}: {e}", fg="yellow", err=True)
    _run(all_samples, target, out, save_prompts,
         {"command": "ruler", "seed": seed, "options": options, **form},
         not_built=not_built)


@eval_app.command()
@engine_options(**EVAL_ENGINE)
def ppl(target_kind: str = TargetOpt,
        base_url: Optional[str] = BaseUrlOpt, api_key: Optional[str] = ApiKeyOpt,
        served_model: Optional[str] = ServedOpt, tokenizer: Optional[str] = TokOpt,
        file: Optional[Path] = typer.Option(None, "--file", help="Text file (default: ASV Bible)."),
        lengths: str = typer.Option("8k", help="Window length in tokens (the largest is used)."),
        samples: int = typer.Option(1, help="Windows over the text."),
        setting: list[str] = typer.Option([], "--setting", help="Engine options of one setting "
                                          "beside the flags given, e.g. 'dca=true,attention=sparse'; "
                                          "repeat to compare."),
        out: Path = typer.Option(Path("eval_out/ppl")), *, options: dict):
    """Mean NLL by position bin (0-2K, 2-8K, 8-16K, ...): table, JSON, PNG."""
    from rich.console import Console
    from rich.table import Table

    from turboctx.eval.plots import nll_by_position
    from turboctx.eval.ppl import run_ppl
    from turboctx.config import ENGINE_OPTIONS
    length = max(option_sizes(lengths))
    if base_url or target_kind == "hf":
        if setting:
            raise typer.BadParameter("--setting compares local engine settings; drop --base-url / "
                                     "--target hf")
        targets = {"remote" if base_url else "hf": make_target(
            options, base_url, api_key, served_model, tokenizer, 1, 1, kind=target_kind)}
    else:
        shown = {k: v for k, v in options.items() if k != "model"}
        settings = setting or [",".join(f"{k}={v}" for k, v in shown.items()) or "default"]
        targets = {}
        for s in settings:
            extra = {} if s == "default" else parse_option("--setting", ENGINE_OPTIONS.parse_assignments, s)
            targets[s] = LocalTarget(**{**options, **extra})
    first = next(iter(targets.values()))
    try:
        results = run_ppl(targets, first.encode, length, samples, str(file) if file else None)
    except TargetUnavailable as e:
        typer.secho(f"error: {e}", fg="red", err=True)
        raise typer.Exit(2)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ppl.json").write_text(json.dumps({"length": length, "windows": samples,
                                              "nll": results}, indent=2), encoding="utf-8")
    table = Table(title=f"mean NLL by position ({samples} window(s) of {length} tokens)")
    table.add_column("position")
    for name in results:
        table.add_column(name, justify="right")
    for b in next(iter(results.values())):
        table.add_row(b, *[("-" if r[b] is None else f"{r[b]:.3f}") for r in results.values()])
    Console().print(table)
    p = nll_by_position(results, out / "ppl.png", title=f"NLL by position, {length} tokens")
    typer.echo(f"json: {out / 'ppl.json'}\nplot: {p}")


@eval_app.command()
def paired(a: list[str] = typer.Option(..., "--a", help="Run A's output directory (the baseline, "
                                       "e.g. dense); repeat, one per --b, to pool runs; or one "
                                       "glob ('runs/seed*/ruler_dense')."),
           b: list[str] = typer.Option(..., "--b", help="Run B's output directory (e.g. sparse), or "
                                       "one glob; glob matches pair by their folder (seed7)."),
           margin: float = typer.Option(2.0, help="Points: is B shown within this of A?"),
           json_out: Optional[Path] = typer.Option(None, "--json", help="Write the rows here.")):
    """Paired difference of two runs on the same prompts: B - A in points with a 95% interval
    (cluster-robust over prompts that share a needle position), samples where each did better,
    sign test (turboctx/eval/paired.py)."""
    from rich.console import Console
    from rich.table import Table

    from turboctx.eval.paired import compare_paired, expand_run_pairs
    try:
        run_pairs, alone = expand_run_pairs(a, b)
        res = compare_paired(run_pairs, margin)
    except (FileNotFoundError, ValueError) as e:
        typer.secho(f"error: {e}", fg="red", err=True)
        raise typer.Exit(2)
    table = Table(title=f"B - A on the same prompts, points (within {margin:g}: the whole 95% "
                  "interval inside +-margin; prompts sharing task, length and needle depth count "
                  "as one cluster)")
    for col in ("task", "length", "n", "clusters", "A", "B", "B - A", "95% interval", "A>B",
                "B>A", "sign p", f"within {margin:g}"):
        table.add_column(col, justify="left" if col == "task" else "right")
    for r in res["rows"]:
        table.add_row(r["task"], str(r["length"]), str(r["n"]), str(r["clusters"]), f"{r['score_a']:.1f}",
                      f"{r['score_b']:.1f}", f"{r['diff']:+.1f}", (f"[{r['ci_lo']:+.1f}, {r['ci_hi']:+.1f}]" if r["ci_lo"] is not None
                       else "none: 1 cluster"),
                      str(r["a_better"]), str(r["b_better"]), f"{r['sign_p']:.3f}",
                      "yes" if r["within"] else "no")
    Console(width=max(Console().width, 120)).print(table)
    if alone:
        typer.echo(f"{len(alone)} run(s) without a partner, not compared: {', '.join(alone)}")
    if res["left_out"]:
        typer.echo(f"{res['left_out']} sample(s) left out: not in both runs with the same prompt "
                   "and a score, or paired already in an earlier run pair")
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(res, indent=2), encoding="utf-8")
        typer.echo(f"json: {json_out}")
