"""Reflexion memory for `eval --attempts N --memory reflexion` (Shinn et al. 2023): learning from failure without
changing a weight.

After a failed attempt the policy itself writes a short diagnosis of it, from what it could see: the task, its own
actions and the observations they led to, and the binary outcome (failed; no reward value, no hidden state, no
expert). The diagnosis goes through the filters reflect uses (cut off, empty, too short or long, label leakage,
off topic, repetitive, an `Action:` line: `eexp.stages.reflect.filters.judge`); one that passes is kept in the
episode's memory, and every later attempt's prompt opens with the memory. A rejected one is recorded with its
reason and left out of the memory.
"""

from __future__ import annotations

from eexp.policies.base import Policy
from eexp.prompts import clip
from eexp.stages.reflect.filters import judge
from eexp.stages.reflect.text import content_words

DIAGNOSIS_MAX_TOKENS = 160  # a short note: two or three sentences
DIAGNOSIS_MAX_WORDS = 90
DIAGNOSIS_MIN_WORDS = 5
STEP_CHARS = 300  # each observation shown to the diagnosis, clipped
# the last steps shown to the diagnosis: a failed attempt often runs to the step limit (textworld 50, scienceworld
# 100), and at up to 300 characters of observation a step every step would make a prompt of several thousand tokens,
# which the local backends' fitting cannot shorten (it knows the sections of a rendered state, not these) and so
# cuts to its last tokens, system prompt and task first; the end of an attempt is where it went wrong or ran out
DIAGNOSIS_STEPS = 10

DIAGNOSIS_SYSTEM = (
    "You review a failed attempt at a task and write a short note that will help the next attempt at the same task."
)
DIAGNOSIS_ASK = (
    "The attempt failed: the task was not completed. In two or three sentences, say what went wrong "
    "and what to do differently next time. Write only the note."
)
MEMORY_HEADER = "Notes from your earlier attempts at this task (each one failed):"


def diagnosis_messages(goal: str, actions: list[str], observations: list[str]) -> list[dict]:
    """The prompt of a diagnosis: the task, the attempt's last DIAGNOSIS_STEPS steps, and that it failed."""
    lines = [f"Task: {goal}", "", "The attempt, step by step:"]
    first = max(0, len(actions) - DIAGNOSIS_STEPS)
    if first:
        lines.append(f"({first} earlier steps not shown)")
    for i in range(first, len(actions)):
        lines += [f"Observation: {clip(observations[i], STEP_CHARS)}", f"Action taken: {actions[i]}"]
    if observations:
        lines.append(f"Final observation: {clip(observations[-1], STEP_CHARS)}")
    lines += ["", DIAGNOSIS_ASK]
    return [{"role": "system", "content": DIAGNOSIS_SYSTEM}, {"role": "user", "content": "\n".join(lines)}]


def diagnose(
    policy: Policy, goal: str, actions: list[str], observations: list[str], *, seed: int, temperature: float
) -> dict:
    """{"text", "kept", "reason"}: the policy's diagnosis of a failed attempt, judged by reflect's filters."""
    reply = policy.generate(
        diagnosis_messages(goal, actions, observations),
        seed=seed,
        temperature=temperature,
        max_tokens=DIAGNOSIS_MAX_TOKENS,
    )
    verdict = judge(
        reply.text or "",
        reply.finish_reason or "stop",
        expert="",
        alternatives=[],
        new_words=set(),
        max_words=DIAGNOSIS_MAX_WORDS,
        min_words=DIAGNOSIS_MIN_WORDS,
        topic=set(content_words(goal)) | {w for a in actions for w in content_words(a)},
    )
    reason = verdict.reason
    if reason == "different_action":  # a diagnosis that ends on an `Action:` line is acting, not diagnosing
        reason = "action_line"
    return {
        "text": verdict.text,
        "kept": reason is None,
        "reason": reason,
        **({"detail": verdict.detail} if reason else {}),
    }


def with_memory(messages: list[dict], notes: list[str]) -> list[dict]:
    """The policy's prompt with the memory at the start of its last user turn (unchanged without notes)."""
    if not notes:
        return messages
    memory = "\n".join([MEMORY_HEADER, *(f"{i}. {note}" for i, note in enumerate(notes, 1))])
    out = [dict(m) for m in messages]
    last = max(i for i, m in enumerate(out) if m["role"] == "user")
    out[last]["content"] = f"{memory}\n\n{out[last]['content']}"
    return out
