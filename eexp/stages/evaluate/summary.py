"""The summary of an eval run (DESIGN.md): success with its 95% Wilson interval, success@k of --attempts, means,
the invalid and failed-request counts, --act think's thoughts, per category; the table printed on stderr, the
warnings about cut thoughts, and the summary file. `eval --compare` (`compare`) formats its tables with `pct` and
`rate_fields`. It reads episode records: it starts no environment, model or worker."""

from __future__ import annotations

from collections import Counter

import orjson

from eexp.errors import PolicyError, environment_failures
from eexp.io import write_atomic
from eexp.policies import policy_kind
from eexp.policies.base import failure_problem
from eexp.stats import wilson

# --act think: a run with more than this share of its thoughts cut at the thought budget warns (their actions were
# chosen after half a thought, so the run does not measure the model as it was trained to act)
MAX_CUT_SHARE = 0.05


def rate_fields(successes: int, n: int) -> dict:
    low, high = wilson(successes, n)
    return {"success_rate": successes / n if n else 0.0, "ci_low": low, "ci_high": high}


def summarize(episodes: list[dict], *, env: str, policy: str, split: str | None = None) -> dict:
    """The DESIGN.md summary: success rate with its 95% Wilson interval, means, invalid rate, per category."""
    n = len(episodes)
    if split is None:
        split = "+".join(sorted({e["task"].get("split", "") for e in episodes})) or ""
    successes = sum(1 for e in episodes if e["success"])
    steps = sum(e["steps"] for e in episodes)
    summary = {
        "env": env,
        "split": split,
        "policy": policy,
        "n": n,
        "successes": successes,
        **rate_fields(successes, n),
        "mean_score": sum(e["score"] for e in episodes) / n if n else 0.0,
        "mean_steps": steps / n if n else 0.0,
        "invalid_rate": sum(e["invalid_actions"] for e in episodes) / steps if steps else 0.0,
        "stop_reasons": dict(Counter(e["stop_reason"] for e in episodes)),
    }
    summary["failed_requests"] = sum(failed_requests(e) for e in episodes)
    summary["policy_steps"] = sum(policy_steps(e) for e in episodes)
    if any("attempts" in (e.get("meta") or {}) for e in episodes):  # --attempts N
        summary["success_at"] = success_at(episodes)
        diagnoses = [a["diagnosis"] for e in episodes for a in e["meta"].get("attempts", ()) if "diagnosis" in a]
        if diagnoses:
            summary["diagnoses"] = {
                "written": len(diagnoses),
                "kept": sum(d["kept"] for d in diagnoses),
                "rejected": dict(Counter(d["reason"] for d in diagnoses if not d["kept"])),
            }
    think = [e for e in episodes if "thoughts_cut" in (e.get("meta") or {})]  # --act think
    if think:
        think_steps = sum(e["steps"] for e in think)
        summary["thoughts_cut"] = sum(e["meta"]["thoughts_cut"] for e in think)
        summary["thought_steps"] = sum(thought_steps(e) for e in think)  # steps with a thought
        summary["thought_share"] = summary["thought_steps"] / think_steps if think_steps else 0.0
        summary["thoughts_cut_share"] = summary["thoughts_cut"] / think_steps if think_steps else 0.0
        if all("thoughts_stopped" in e["meta"] for e in think):  # (episodes recorded before eexp told why: none)
            summary["thoughts_stopped"] = {
                k: sum(e["meta"]["thoughts_stopped"][k] for e in think) for k in ("empty", "action", "other")
            }
    groups: dict[str, list[dict]] = {}
    for e in episodes:
        if e["task"].get("category"):
            groups.setdefault(e["task"]["category"], []).append(e)
    if groups:
        summary["by_category"] = {
            cat: {
                "n": len(eps),
                "successes": sum(1 for e in eps if e["success"]),
                **rate_fields(sum(1 for e in eps if e["success"]), len(eps)),
                "mean_score": sum(e["score"] for e in eps) / len(eps),
            }
            for cat, eps in sorted(groups.items())
        }
    return summary


def success_at(episodes: list[dict]) -> list[dict]:
    """success@k for k = 1..the most attempts any episode was allowed: the share of tasks solved within k attempts
    (a task solved at attempt j counts for every k >= j), each with its 95% Wilson interval."""
    allowed = max(max(len(e["meta"].get("attempts") or ()), e["meta"].get("attempts_allowed", 0)) for e in episodes)
    out = []
    for k in range(1, allowed + 1):
        solved = sum(any(a["success"] for a in (e["meta"].get("attempts") or [])[:k]) for e in episodes)
        out.append({"k": k, "successes": solved, **rate_fields(solved, len(episodes))})
    return out


def failed_requests(episode: dict) -> int:
    """Steps whose policy call failed for good (a server that did not answer, after the retries): the reply is
    recorded as unparsed, with finish_reason "error: ...". A baseline makes no requests: its "error" replies (random
    with no admissible list to draw from) are the state's, not a failure to count."""
    meta = episode.get("meta") or {}
    if policy_kind(meta.get("policy_spec")) == "baseline":
        return 0
    if meta.get("attempts"):  # --attempts N: every attempt's (the record's own unparsed are its last attempt's)
        return sum(a.get("failed_requests", 0) for a in meta["attempts"])
    return sum(1 for u in meta.get("unparsed", ()) if str(u.get("finish_reason", "")).startswith("error"))


def policy_steps(episode: dict) -> int:
    """The steps the policy was asked for an action: every attempt's, with --attempts N."""
    return sum(a["steps"] for a in episode["meta"].get("attempts") or [episode])


def thought_steps(episode: dict) -> int:
    """The steps of an episode whose reply had a thought (a played off-path step has none)."""
    return sum(1 for t in episode.get("thoughts") or () if t)


def pct(x: float) -> str:
    return f"{100 * x:5.1f}%"


THOUGHT_BUDGET_FROM = {"option": "--thought-tokens", "card": "the model card", "max_tokens": "--max-tokens"}


def thought_warnings(summary: dict) -> list[str]:
    """What a --act think run says on stderr about its thoughts: too many cut, or a budget taken from --max-tokens
    for want of a model card that records the longest training thought."""
    if "thoughts_cut" not in summary:
        return []
    budget = (summary.get("meta") or {}).get("thought_tokens") or {}
    out = []
    if budget.get("from") == "max_tokens":
        out.append(
            f"warning: --act think: the model card records no training thought (a model not trained on SR "
            f"examples or trained before eexp recorded it, or a server whose model file is not on this "
            f"machine), so a thought may take --max-tokens {budget.get('tokens')} tokens; --thought-tokens N "
            f"sets it"
        )
    if summary["thoughts_cut_share"] <= MAX_CUT_SHARE:
        return out
    steps = round(summary["mean_steps"] * summary["n"])
    stopped = summary.get("thoughts_stopped") or {}
    early = sum(stopped.values())
    at_budget = summary["thoughts_cut"] - early
    # A thought that ended by itself short of the budget (no thought, or an action where the thought belongs) is
    # not helped by a larger budget: the advice follows what most of the cut thoughts were.
    if at_budget >= early or at_budget > MAX_CUT_SHARE * steps:
        out.append(
            f"warning: {at_budget} of {steps} thoughts ({100 * at_budget / steps:.1f}%, more than "
            f"{100 * MAX_CUT_SHARE:g}%) were cut at the thought budget of {budget.get('tokens')} tokens "
            f"before they reached `Action:`, so their actions were chosen after an unfinished thought: give "
            f"a larger --thought-tokens"
        )
    if early > at_budget or early > MAX_CUT_SHARE * steps:
        why = [
            f"{n} {what}"
            for n, what in (
                (
                    stopped.get("action", 0),
                    "were an action written where the thought belongs (the model answers `Thought:` with its action)",
                ),
                (stopped.get("empty", 0), "were empty (the model wrote no thought)"),
                (stopped.get("other", 0), "ended early"),
            )
            if n
        ]
        out.append(
            f"warning: {early} of {steps} thoughts ({100 * early / steps:.1f}%) never reached `Action:` "
            f"though they stopped short of the thought budget of {budget.get('tokens')} tokens: "
            f"{', '.join(why)}. The action was chosen after them; a larger --thought-tokens does not change "
            f"that (the model does not write a thought first; --act score chooses its action without one)"
        )
    return out


def format_summary(summary: dict) -> str:
    """The readable table printed on stderr."""
    lines = [
        f"eval {summary['env']} {summary['split']}  policy {summary['policy']}  n={summary['n']}",
        f"  success   {pct(summary['success_rate'])}  95% CI [{pct(summary['ci_low'])}, "
        f"{pct(summary['ci_high'])}]  ({summary['successes']}/{summary['n']})",
        f"  score     {summary['mean_score']:.3f} mean",
        f"  steps     {summary['mean_steps']:.1f} mean",
        f"  invalid   {pct(summary['invalid_rate'])} of actions",
        *(
            [
                f"  failed    {summary['failed_requests']} policy requests (no answer after the retries; their "
                f"steps count as invalid)"
            ]
            if summary.get("failed_requests")
            else []
        ),
        "  ended     " + ", ".join(f"{k} {v}" for k, v in sorted(summary["stop_reasons"].items())),
    ]
    for at in summary.get("success_at", ()):
        lines.append(
            f"  success@{at['k']} {pct(at['success_rate'])}  95% CI [{pct(at['ci_low'])}, "
            f"{pct(at['ci_high'])}]  ({at['successes']}/{summary['n']})"
        )
    if summary.get("diagnoses"):
        d = summary["diagnoses"]
        lines.append(
            f"  diagnoses {d['kept']} of {d['written']} kept"
            + (
                " (rejected: " + ", ".join(f"{k} {v}" for k, v in sorted(d["rejected"].items())) + ")"
                if d["rejected"]
                else ""
            )
        )
    if "thoughts_cut" in summary:
        budget = (summary.get("meta") or {}).get("thought_tokens") or {}
        within = f" within {budget['tokens']} tokens ({THOUGHT_BUDGET_FROM[budget['from']]})" if budget else ""
        lines.append(
            f"  thoughts  {pct(summary['thought_share'])} of steps had one "
            f"({summary['thought_steps']}/{round(summary['mean_steps'] * summary['n'])}); "
            f"{pct(summary['thoughts_cut_share']).strip()} cut ({summary['thoughts_cut']} never reached "
            f"`Action:`{within}; the action chosen after them)"
        )
    if summary.get("by_category"):
        width = max(len(c) for c in summary["by_category"])
        lines.append("  by category:")
        for cat, c in summary["by_category"].items():
            lines.append(
                f"    {cat:<{width}}  {pct(c['success_rate'])}  [{pct(c['ci_low'])}, {pct(c['ci_high'])}]"
                f"  ({c['successes']}/{c['n']})  score {c['mean_score']:.3f}"
            )
    return "\n".join(lines)


def check_failed_requests(summary: dict, policy: str) -> None:
    """Exit 1 (after everything is written) when more than MAX_FAILED_SHARE of the run's policy calls failed."""
    problem = failure_problem(summary.get("failed_requests", 0), summary["policy_steps"], policy)
    if problem:
        raise PolicyError(problem)


def check_environment_errors(summary: dict) -> None:
    """Exit 1 (after everything is written) when more than MAX_FAILED_SHARE of the run's episodes ended in an
    environment error: their failures are the environment's, not the policy's."""
    problem = environment_failures(summary["stop_reasons"].get("error", 0), summary["n"], "episodes", "meta.error")
    if problem:
        raise problem


def write_summary(path: str | None, summary: dict) -> None:
    if path:
        write_atomic(path, orjson.dumps(summary, option=orjson.OPT_INDENT_2) + b"\n")
