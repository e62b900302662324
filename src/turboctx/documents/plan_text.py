"""A DocumentPlan for people (the whole plan for --dry-run, two lines before the work) and for
programs (--json)."""
from __future__ import annotations

from pathlib import Path

from turboctx.documents.plan import DocumentPlan
from turboctx.documents.summary import skipped_summary


def model_line(plan: DocumentPlan) -> str:
    e = plan.engine
    dca = " (DCA)" if "dca" in e["attention"] else ""
    return (f"model: {Path(str(e['model'])).name} on {e['device']}, {e['dtype']}, attention "
            f"{e['attention']}{dca}, trained context {e['trained context']:,}")


def plan_lines(plan: DocumentPlan, verbose: bool = False) -> list[str]:
    """The whole plan: every document with its tokens, what was skipped, fit, TTFT, cost."""
    lines = [model_line(plan), f"{'tokens':>10}  document"]
    lines += [f"{d.tokens:>10,}  {d.name}" + (f"  ({d.kind})" if d.kind != "text" else "")
              for d in plan.documents]
    what = "chat template and question" if plan.question_known else "chat template (before the question)"
    lines.append(f"{plan.template_tokens:>10,}  {what}")
    lines.append(f"{plan.prompt_tokens:>10,}  prompt tokens in all, in {len(plan.documents)} "
                 f"document{'s' if len(plan.documents) != 1 else ''}"
                 + ("" if plan.question_known else " (each question adds its own)"))
    if plan.skipped:
        lines.append(skipped_summary(plan.skipped) + ("" if verbose else " (--verbose lists them)"))
        if verbose:
            lines += [f"  skipped  {s.path}  {s.describe()}" for s in plan.skipped]
    lines += [fit_line(plan), memory_line(plan), *[f"warning: {w}" for w in plan.fit.warnings]]
    lines.append(ttft_line(plan))
    if plan.cost_usd is not None:
        lines.append(cost_line(plan))
    return lines


def short_plan_lines(plan: DocumentPlan) -> list[str]:
    """Two or three lines printed (stderr) before the work starts."""
    docs = len(plan.documents)
    skipped = f"; {skipped_summary(plan.skipped)}" if plan.skipped else ""
    first = (f"plan: {docs} document{'s' if docs != 1 else ''}, {plan.prompt_tokens:,} prompt "
             f"tokens{'' if plan.question_known else ' before the question'}{skipped}")
    lines = [first, f"plan: {fit_line(plan)}; {ttft_line(plan)}"
             + (f"; {cost_line(plan)}" if plan.cost_usd is not None else "")]
    return lines + [f"warning: {w}" for w in plan.fit.warnings]


def fit_line(plan: DocumentPlan) -> str:
    f, e = plan.fit, plan.engine
    if not f.fits:
        return "does not fit: " + "; ".join(f.problems)
    return (f"fits: {f.needed_tokens:,} tokens (with {f.max_tokens:,} to generate) of "
            f"max_model_len {e['max_model_len']:,}")


def memory_line(plan: DocumentPlan) -> str:
    e = plan.engine
    per_token = e["KV bytes per token"]
    gib = plan.fit.needed_tokens * per_token / (1 << 30)
    return (f"memory: KV cache {per_token:,} bytes per token, {gib:.2f} GiB for these tokens; "
            f"{e['max tokens that fit']:,} tokens fit ({e['memory available GiB']} GiB available, "
            f"weights {e['weights GiB']} GiB)")


def ttft_line(plan: DocumentPlan) -> str:
    est = plan.estimate
    return (f"estimated TTFT {format_seconds(est.ttft_s)} at {est.tokens_per_s:,.0f} tokens/s "
            f"({est.note})")


def cost_line(plan: DocumentPlan) -> str:
    gpus = f" x {plan.gpus} GPUs" if plan.gpus > 1 else ""
    return f"estimated cost ${plan.cost_usd:.4f} at ${plan.price_per_gpu_hour:.2f}/GPU-hour{gpus}"


def format_seconds(s: float) -> str:
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def plan_dict(plan: DocumentPlan) -> dict:
    """Everything in the plan, for --json."""
    e, f = plan.engine, plan.fit
    return {
        "documents": [{"name": d.name, "kind": d.kind, "tokens": d.tokens} for d in plan.documents],
        "skipped": [{"path": s.path, "category": s.category, "detail": s.detail} for s in plan.skipped],
        "template_tokens": plan.template_tokens, "prompt_tokens": plan.prompt_tokens,
        "question_known": plan.question_known, "max_tokens": f.max_tokens,
        "fits": f.fits, "over_max_model_len": f.over_max_model_len, "over_memory": f.over_memory,
        "problems": f.problems, "remedies": f.remedies, "warnings": f.warnings,
        "model": e["model"], "device": e["device"], "dtype": e["dtype"], "attention": e["attention"],
        "max_model_len": e["max_model_len"], "max_tokens_that_fit": e["max tokens that fit"],
        "trained_context": e["trained context"], "kv_bytes_per_token": e["KV bytes per token"],
        "estimate": plan.estimate.as_dict(), "price_per_gpu_hour": plan.price_per_gpu_hour,
        "cost_usd": plan.cost_usd,
    }
