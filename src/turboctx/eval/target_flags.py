"""The eval commands' target flags: their declarations, and the target and prompt wrapping they
ask for (local engine, HF transformers, or an OpenAI-compatible server).

Every target gets the same prompt text, built here: with --template chat (or --chat) the chat
template is rendered on this side (for a server, with the served model's tokenizer) and the
answer prefix follows the assistant header; a server receives that text whole at
/v1/completions, as the engine would in process.
"""
from __future__ import annotations

from typing import Any, Callable

import typer

from turboctx.eval.targets import LocalTarget, OpenAITarget, load_tokenizer

# Common options (typer has no option groups: the same declarations on each command).
TargetOpt = typer.Option("engine", "--target", help="What runs --model: engine (turboctx, in "
                         "process) | hf (Hugging Face transformers, the reference).")
BaseUrlOpt = typer.Option(None, "--base-url", help="OpenAI-compatible server, e.g. "
                          "http://localhost:8000/v1: prompts go whole to its /completions.")
ApiKeyOpt = typer.Option(None, "--api-key", envvar="OPENAI_API_KEY", help="API key for --base-url.")
ChatOpt = typer.Option(False, "--chat", help="Same as --template chat: the model's chat template, "
                       "rendered here (with --base-url by --tokenizer), the answer prefix after "
                       "the assistant header; every target gets the same text.")
ServedOpt = typer.Option(None, "--served-model", help="Model name on the server (default: its first).")
TokOpt = typer.Option(None, "--tokenizer", help="With --base-url: the served model's tokenizer (a "
                      "model spec: HF folder or .gguf) to count tokens and render a chat "
                      "template here; default: --model's, else the server's /tokenize. Needed "
                      "when the server has no /tokenize, and for --template chat.")
ConcOpt = typer.Option(4, "--concurrency", help="Parallel requests to a remote target.")
BatchOpt = typer.Option(1, "--batch-size", help="Prompts per engine call (local target).")
SeedOpt = typer.Option(42, "--seed", help="Seed of the samples (needle values and positions).")
SavePromptsOpt = typer.Option(False, "--save-prompts", help="Store each full prompt in samples.jsonl.")
TemplateOpt = typer.Option("base", "--template", help="Prompt wrapping: base (raw completion), chat "
                           "(the tokenizer's chat template), or a RULER model template name.")

HF_OPTIONS = ("model", "device", "dtype", "max_model_len")


def make_target(options: dict, base_url: str | None, api_key: str | None,
                served_model: str | None, tokenizer: str | None, concurrency: int,
                batch_size: int, kind: str = "engine"):
    """The target the flags name; bad combinations are a typer.BadParameter naming the flags."""
    if kind not in ("engine", "hf"):
        raise typer.BadParameter(f"--target {kind!r}: use engine or hf")
    model = options.get("model")
    if not base_url:
        for flag, value in (("--tokenizer", tokenizer), ("--served-model", served_model)):
            if value:
                raise typer.BadParameter(f"{flag} applies to a server (--base-url); a local run "
                                         "counts with --model's own tokenizer")
    if base_url:
        if kind == "hf":
            raise typer.BadParameter("--target hf runs the model in process; drop --base-url")
        local = sorted(set(options) - {"model"})
        if local:
            raise typer.BadParameter(f"engine options {local} do not reach a server at --base-url; "
                                     "set them on `turboctx serve` instead")
        spec = tokenizer or model
        try:
            tok = load_tokenizer(spec) if spec else None
        except Exception as e:  # noqa: BLE001 - any load failure is a bad --tokenizer
            raise typer.BadParameter(f"--tokenizer {spec!r} cannot be loaded: {e}") from e
        return OpenAITarget(base_url, api_key, model=served_model, concurrency=concurrency,
                            tokenizer=tok)
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


def resolve_template(template: str, chat: bool) -> str:
    """--chat is --template chat; with another --template it is a contradiction."""
    if not chat:
        return template
    if template not in ("base", "chat"):
        raise typer.BadParameter(f"--chat means --template chat; it cannot go with --template "
                                 f"{template}: drop one of them")
    return "chat"


def make_wrap(target: Any, template: str) -> Callable[[str, str], str]:
    """(body, answer_prefix) -> prompt text, as RULER's model template + answer prefix."""
    from turboctx.eval.ruler.constants import MODEL_TEMPLATES
    if template == "base":
        return lambda body, prefix: body + prefix
    if template == "chat":
        if isinstance(target, OpenAITarget) and target.local_tokenizer is None:
            raise typer.BadParameter(
                "--template chat (or --chat) with --base-url renders the served model's chat "
                "template here, which needs its tokenizer: pass --tokenizer SPEC (the served "
                "model's HF folder or .gguf file)")
        try:
            target.wrap("", "", chat=True)
        except Exception as e:  # noqa: BLE001 - e.g. a model without a chat template
            raise typer.BadParameter(f"--template chat: {e}") from e
        return lambda body, prefix: target.wrap(body, prefix, chat=True)
    if template not in MODEL_TEMPLATES:
        raise typer.BadParameter(f"unknown --template {template!r}: base, chat, "
                                 + ", ".join(MODEL_TEMPLATES))
    tmpl = MODEL_TEMPLATES[template]
    return lambda body, prefix: tmpl.format(task_template=body) + prefix


def describe(target: Any, template: str) -> str:
    """One line saying which prompt form the target gets and who counts its tokens."""
    if not isinstance(target, OpenAITarget):
        return f"prompts: template {template}, counted with the model's tokenizer"
    if target.local_tokenizer is None:
        target.server_tokenizer.require()     # else: one clear error before any prompt
        counted = "counted by the server's /tokenize"
    elif target.server_tokenizer.available:
        counted = "counted by --tokenizer, each prompt checked once against the server's /tokenize"
    else:
        counted = "counted by --tokenizer (the server has no /tokenize)"
    return (f"prompts: template {template}, built here and sent whole to "
            f"{target.base_url.rstrip('/')}/completions; {counted}")
