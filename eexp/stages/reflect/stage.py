"""The reflect stage (eexp.stages.reflect says what it makes and why): who writes a reflection (`Reflector`,
`policy_writer`), at most one SR example per outcome record (`reflect_examples`), and the stage over a file of them
(`Reflect`: up to --concurrency reflections written at once, results in input order)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

from eexp.inflight import InOrder
from eexp.policies.base import derive_seed
from eexp.prompts import Serializer, format_action
from eexp.records import example_meta, outcome_origin
from eexp.runner import MadeFrom, Stage
from eexp.stages.reflect.claims import Evidence
from eexp.stages.reflect.filters import fresh_words, judge, page_runs, topic_words
from eexp.stages.reflect.grounded import VERSION as GROUNDED_VERSION
from eexp.stages.reflect.grounded import grounded_reflection
from eexp.stages.reflect.settings import Settings
from eexp.stages.reflect.template import Template, reflection_prompt, shown_alternatives

Writer = Callable[[list[dict], int], tuple[str, str]]  # (prompt messages, seed) -> (reply text, finish_reason)


@dataclass
class Reflector:
    """Who writes the reflections: `self`/`teacher` call `write`; `grounded` has no model (write is None)."""

    kind: str  # self | teacher | grounded
    write: Writer | None = None
    model: str = ""
    model_sha256: str = ""


def policy_writer(policy, settings: Settings) -> Writer:
    """A policy's free-text answer to a prompt (Policy.generate) at the decoding `settings` give (temperature, top_p,
    max_tokens): reflect's reflections, world-model-eval's predictions."""

    def write(messages: list[dict], seed: int) -> tuple[str, str]:
        reply = policy.generate(
            messages, seed=seed, temperature=settings.temperature, top_p=settings.top_p, max_tokens=settings.max_tokens
        )
        return reply.text or "", reply.finish_reason or ""

    return write


def reflect_examples(
    outcome: dict,
    *,
    reflector: Reflector,
    template: Template,
    serializer: Serializer,
    settings: Settings,
    count: Callable[..., None] = lambda name, n=1: None,
    reject: Callable[[dict], None] = lambda record: None,
    fallback: str | None = None,
) -> Iterator[dict]:
    """At most one SR example for an outcome record. Records that cannot give one are counted (and rejected
    reflections passed to `reject`); nothing here stops the run. With fallback="grounded", a model's rejected
    reflection is replaced by the grounded rationale, labelled as such in meta and counted."""
    if outcome.get("error"):
        count("unreachable")  # rollout could not reach the state: nothing was observed
        return
    expert = outcome["expert"]
    if expert.get("next_observation") is None:
        count("expert_not_executed")  # no outcome to justify the chosen action with
        return
    shown = shown_alternatives(outcome, settings.max_alternatives)
    if not shown:
        count("no_alternatives")
        return
    if all(a.get("error") for a in shown):
        # Nothing observed to contrast with: a rationale would be ungrounded (the STaR-like baseline the paper
        # shows hurts), so the state gives no reflection.
        count("all_alternatives_failed")
        return
    state = outcome["state"]
    seed = 0
    if reflector.write is None:
        reply, finish_reason = grounded_reflection(outcome, shown), "stop"
    else:
        seed = derive_seed(settings.seed, outcome["id"], 0)
        reply, finish_reason = reflector.write(reflection_prompt(outcome, shown, template, serializer, settings), seed)
    alternatives = [a["action"] for a in shown]
    verdict = judge(
        reply,
        finish_reason,
        expert=expert["action"],
        alternatives=alternatives,
        new_words=fresh_words(outcome, shown, serializer.render_state(state)),
        max_words=settings.max_words,
        min_words=settings.min_words,
        template=template,
        topic=topic_words(outcome, alternatives),
        pages=page_runs(outcome, shown),
        evidence=Evidence.of(outcome, shown),
    )
    if verdict.repeated:
        count("repeated")

    def meta(kind: str, **more) -> dict:
        extra = {"alternatives": alternatives, "template_sha256": template.sha256, **more}
        if kind == "grounded":
            extra["paper_method"] = False
            extra["note"] = "grounded: deterministic rationale from observed outcomes, no model; not the paper's method"
            # 1 (no key): quoted pages; 2: described, short; 3: paging, each environment's words, claims shown
            extra["grounded_version"] = GROUNDED_VERSION
        else:
            extra.update(temperature=settings.temperature, top_p=settings.top_p, max_tokens=settings.max_tokens)
        if kind == "teacher":
            extra["teacher_assisted"] = True
        model, sha = ("", "") if kind == "grounded" else (reflector.model, reflector.model_sha256)
        return example_meta(
            stage="reflect",
            kind="sr",
            **outcome_origin(outcome),
            action=expert["action"],
            action_source="expert",
            model=model,
            model_sha256=sha,
            reflector=kind,
            seed=seed,
            serializer=serializer.json,
            extra=extra,
        )

    example_id = f"sr:{outcome['id']}"
    text, kind, more = verdict.text, reflector.kind, {}
    if verdict.reason:
        count(verdict.reason)
        reject(
            {
                "id": example_id,
                "source_id": outcome["id"],
                "reason": verdict.reason,
                "detail": verdict.detail,
                "reply": reply,
                "finish_reason": finish_reason,
                "meta": meta(reflector.kind),
            }
        )
        if fallback != "grounded" or reflector.write is None:
            return
        count("fallback_grounded")
        text, kind = grounded_reflection(outcome, shown), "grounded"
        more = {"fallback_for": reflector.kind, "rejected": verdict.reason}
    else:
        count("kept")
    yield {
        "id": example_id,
        "source_id": outcome["id"],
        "messages": serializer.policy_messages(state)
        + [{"role": "assistant", "content": format_action(expert["action"], text)}],
        "meta": meta(kind, **more),
    }


def example_made_from(serializer: Serializer) -> MadeFrom:
    """What an SR example shows of the outcome it was written from, read alike from the outcome: the policy's
    prompt for its state (the example's messages before the reply) and the expert action the reply ends with.
    reflect --resume compares it for every outcome it skips (eexp.runner.SameInput), so that a part begun from
    other outcomes behind the same settings (another expert file's) is not continued with this input's."""

    def from_outcome(outcome: dict) -> tuple[str, list]:
        return str(outcome.get("id")), [serializer.policy_messages(outcome["state"]), outcome["expert"]["action"]]

    def from_example(example: dict) -> tuple[str, list]:
        *prompt, reply = example["messages"]
        # format_action: the action is the reply's last line, after `Action: ` (a thought, if any, comes before)
        return str(example.get("source_id")), [prompt, reply["content"].rpartition("Action: ")[2]]

    return MadeFrom(from_outcome, from_example)


class Reflect(Stage):
    """The stage: outcome records in, SR examples out, with up to `concurrency` reflections written at once.

    Each outcome's work (the reflection prompt, the model's reply, the filters) runs as one call, in a thread when
    concurrency > 1; its counts and rejected reflections are kept with its result and passed on, with its
    examples, in input order: the output, the --rejected file and --stats are those of a serial run."""

    def __init__(
        self,
        *,
        reflector: Reflector,
        template: Template,
        serializer: Serializer,
        settings: Settings,
        count: Callable[..., None],
        reject: Callable[[dict], None] | None = None,
        fallback: str | None = None,
        skip: set[str] = frozenset(),
        concurrency: int = 1,
    ):
        self.reflector, self.template, self.serializer, self.settings = reflector, template, serializer, settings
        self.count, self.reject, self.fallback, self.skip = count, reject, fallback, skip
        self.calls = InOrder(concurrency, name="eexp-reflect")

    def _one(self, outcome: dict) -> tuple[list[dict], list[tuple[str, int]], list[dict]]:
        counts: list[tuple[str, int]] = []
        rejected: list[dict] = []
        examples = list(
            reflect_examples(
                outcome,
                reflector=self.reflector,
                template=self.template,
                serializer=self.serializer,
                settings=self.settings,
                count=lambda name, n=1: counts.append((name, n)),
                reject=rejected.append,
                fallback=self.fallback,
            )
        )
        return examples, counts, rejected

    def __call__(self, outcome: dict) -> Iterator[dict]:
        if outcome["id"] in self.skip:  # rejected in an earlier run (--resume): its seed gives the same reply
            self.count("resumed")
        else:
            self.calls.submit(lambda: self._one(outcome))
        return self._collect()

    def finish(self) -> Iterator[dict]:
        return self._collect(block=True)

    def _collect(self, block: bool = False) -> Iterator[dict]:
        for _, (examples, counts, rejected) in self.calls.ready(block):
            for name, n in counts:
                self.count(name, n)
            if self.reject is not None:
                for record in rejected:
                    self.reject(record)
            yield from examples

    def close(self) -> None:
        self.calls.close()
