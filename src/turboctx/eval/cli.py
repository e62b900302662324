"""`turboctx eval ...`: passkey, niah, ruler, ppl against the local engine, HF transformers
(--target hf) or an OpenAI-compatible server (--base-url).

    turboctx eval passkey --lengths 1k,2k,4k,8k --trials 6 --out runs/passkey
    turboctx eval niah --model path/to/model --dca --lengths 4k,16k,64k --out runs/niah
    turboctx eval ruler --lengths 4k --samples 20 --tasks niah_single_1,vt,cwe --out runs/ruler
    turboctx eval ruler --base-url http://localhost:8000/v1 --api-key K --chat ...
    turboctx eval ruler --target hf --dtype float32 ...   (HF transformers on the same prompts)
    turboctx eval ppl --lengths 32k --setting dca=false --setting dca=true --out runs/ppl
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from turboctx.cli.engine_options import engine_options
from turboctx.cli.parsing import option_sizes, parse_option
from turboctx.eval import niah as niah_mod
from turboctx.eval import passkey as passkey_mod
from turboctx.eval.common import parse_depths
from turboctx.eval.targets import LocalTarget, OpenAITarget, TargetUnavailable, load_tokenizer

eval_app = typer.Typer(help="Long-context evaluation: passkey, needle-in-a-haystack, RULER, "
                            "perplexity by position.", no_args_is_help=True)
# the engine options of the local engine; --seed here is the samples' seed
EVAL_ENGINE = dict(exclude=("seed",))

# Common options (typer has no option groups: the same declarations on each command).
TargetOpt = typer.Option("engine", "--target", help="What runs --model: engine (turboctx, in "
                         "process) | hf (Hugging Face transformers, the reference).")
BaseUrlOpt = typer.Option(None, "--base-url", help="OpenAI-compatible server, e.g. http://localhost:8000/v1.")
ApiKeyOpt = typer.Option(None, "--api-key", envvar="OPENAI_API_KEY", help="API key for --base-url.")
ChatOpt = typer.Option(False, "--chat", help="Use /chat/completions (remote) instead of /completions.")
ServedOpt = typer.Option(None, "--served-model", help="Model name on the server (default: its first).")
TokOpt = typer.Option(None, "--tokenizer", help="Tokenizer spec for length fitting with --base-url "
                      "(a model spec; default: --model's, else the default model's).")
ConcOpt = typer.Option(4, "--concurrency", help="Parallel requests to a remote target.")
BatchOpt = typer.Option(1, "--batch-size", help="Prompts per engine call (local target).")
SeedOpt = typer.Option(42, "--seed", help="Seed of the samples (needle values and positions).")
SavePromptsOpt = typer.Option(False, "--save-prompts", help="Store each full prompt in samples.jsonl.")
TemplateOpt = typer.Option("base", "--template", help="Prompt wrapping: base (raw completion), chat "
                           "(the tokenizer's chat template), or a RULER model template name.")

HF_OPTIONS = ("model", "device", "dtype", "max_model_len")


def make_target(options: dict, base_url, api_key, chat, served_model, tokenizer, concurrency,
                batch_size, kind: str = "engine"):
    if kind not in ("engine", "hf"):
        raise typer.BadParameter(f"--target {kind!r}: use engine or hf")
    model = options.get("model")
    if base_url:
        if kind == "hf":
            raise typer.BadParameter("--target hf runs the model in process; drop --base-url")
        local = sorted(set(options) - {"model"})
        if local:
            raise typer.BadParameter(f"engine options {local} do not reach a server at --base-url; "
                                     "set them on `turboctx serve` instead")
        tok = load_tokenizer(tokenizer or model) if (tokenizer or model) else None
        return OpenAITarget(base_url, api_key, model=served_model, chat=chat,
                            concurrency=concurrency, tokenizer=tok)
    if kind == "hf":
        return make_hf_target(options, batch_size)
    return LocalTarget(batch_size=batch_size, **options)


def make_hf_target(options: dict, batch_size: int = 1):
    """HFTarget from the same options; engine-only ones (dca, attention, ...) are refused."""
    from turboctx.eval.hf_target import HFTarget
    other = {k: v for k, v in options.items() if k not in HF_OPTIONS
             and not (k == "dca" and v is False) and not (k == "attention" and v == "dense")}
    if other:
        raise typer.BadParameter(f"--target hf takes only --model, --device, --dtype, "
                                 f"--max-model-len; engine flags {sorted(other)} do not apply to "
                                 "transformers")
    try:
        return HFTarget(options.get("model"), batch_size=batch_size,
                        **{k: v for k, v in options.items() if k in HF_OPTIONS and k != "model"})
    except ValueError as e:
        raise typer.BadParameter(str(e)) from e


def make_wrap(target, template: str):
    """(body, answer_prefix) -> prompt text, as RULER's model template + answer prefix."""
    from turboctx.eval.ruler.constants import MODEL_TEMPLATES
    if template == "base":
        return lambda body, prefix: body + prefix
    if template == "chat":
        return lambda body, prefix: target.wrap(body, prefix, chat=True)
    if template not in MODEL_TEMPLATES:
        raise typer.BadParameter(f"unknown --template {template!r}: base, chat, "
                                 + ", ".join(MODEL_TEMPLATES))
    tmpl = MODEL_TEMPLATES[template]
    return lambda body, prefix: tmpl.format(task_template=body) + prefix


def _run(samples, target, out: Path, save_prompts: bool, meta: dict, heat: bool = False):
    from turboctx.eval.runner import print_table, run_samples
    try:
        summary = run_samples(samples, target, out, save_prompts=save_prompts, meta=meta)
    except TargetUnavailable as e:
        typer.secho(f"error: {e}", fg="red", err=True)
        raise typer.Exit(2)
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
            digits: int = typer.Option(5, help="Digits of the pass key."),
            seed: int = SeedOpt, template: str = TemplateOpt,
            out: Path = typer.Option(Path("eval_out/passkey")), save_prompts: bool = SavePromptsOpt,
            *, options: dict):
    """Passkey retrieval over lengths x depths (the classic prompt); heatmap PNG."""
    target = make_target(options, base_url, api_key, chat, served_model, tokenizer,
                         concurrency, batch_size, kind=target_kind)
    wrap = make_wrap(target, template)
    samples = passkey_mod.generate(option_sizes(lengths),
                                   parse_option("--depths", parse_depths, depths, seed), trials, seed,
                                   target.count_tokens, wrap=lambda p: wrap(p, ""), digits=digits)
    _run(samples, target, out, save_prompts, {"command": "passkey", "seed": seed, "options": options},
         heat=True)


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
    target = make_target(options, base_url, api_key, chat, served_model, tokenizer,
                         concurrency, batch_size, kind=target_kind)
    samples = niah_mod.generate(
        option_sizes(lengths), parse_option("--depths", parse_depths, depths, seed), trials, seed,
        target.count_tokens,
        wrap=make_wrap(target, template), needle=needle, question=question,
        answer_prefix=answer_prefix,
        expected=[w.strip() for w in expected.split(",")] if expected else None,
        haystack=str(haystack) if haystack else None)
    _run(samples, target, out, save_prompts, {"command": "niah", "seed": seed, "options": options},
         heat=True)


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
    target = make_target(options, base_url, api_key, chat, served_model, tokenizer,
                         concurrency, batch_size, kind=target_kind)
    names = ruler_mod.ALL_TASKS if tasks == "all" else [t.strip() for t in tasks.split(",") if t.strip()]
    qa_files = {k: str(v) for k, v in (("squad", squad), ("hotpotqa", hotpotqa)) if v}
    wrap = make_wrap(target, template)
    all_samples, not_run = [], {}
    for name in names:
        for L in option_sizes(lengths):
            try:
                all_samples += ruler_mod.generate(name, L, samples, seed, target.count_tokens, wrap,
                                                  haystack=str(haystack) if haystack else None,
                                                  qa_files=qa_files)
            except (ruler_mod.NotRun, ValueError) as e:
                not_run[f"{name}@{L}"] = str(e)
                typer.secho(f"not run: {name} at {L}: {e}", fg="yellow", err=True)
    summary = _run(all_samples, target, out, save_prompts,
                   {"command": "ruler", "seed": seed, "options": options, "not_run": not_run})
    if not_run:
        summary["not_run"] = not_run
        (out / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")


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
            options, base_url, api_key, False, served_model, tokenizer, 1, 1, kind=target_kind)}
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
