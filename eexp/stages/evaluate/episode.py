"""An eval episode: `Evaluator` holds one environment and one policy and plays a task's episode (with --attempts N,
up to N of them), step by step into a `Play`, and makes the episode record (and, for a success, the trajectory
record) from it; `episode_id`, an episode's deterministic id."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from eexp.envs.base import Env, make_env, record_meta
from eexp.envs.dream import META_KEY
from eexp.envs.screens import can_screenshot, save_step
from eexp.errors import PolicyError, UsageProblem
from eexp.policies import load_policy
from eexp.policies.base import Policy, derive_seed
from eexp.prompts import clip
from eexp.records import make_meta, short_hash
from eexp.stages.evaluate.off_path import off_path_start
from eexp.stages.evaluate.settings import EvalSettings, resolve_serializer, resolve_thought_tokens
from eexp.stages.evaluate.summary import failed_requests
from eexp.stages.memory import diagnose, with_memory

UNPARSED_CHARS = 300  # how much of an unparseable reply is kept (sent to the env, and in meta)


@dataclass
class Play:
    """What one attempt has played so far, for its record. actions, observations and thoughts run in parallel and
    begin with the steps played for the policy (`lead` of them: an off-path start), seeds and admissibles with the
    policy's own steps."""

    actions: list[str] = field(default_factory=list)
    observations: list[str] = field(default_factory=list)
    thoughts: list[str | None] = field(default_factory=list)  # None: no thought behind that action
    seeds: list[int] = field(default_factory=list)
    admissibles: list[list[str] | None] = field(default_factory=list)
    thoughts_cut: int = 0  # steps whose thought never reached `Action:`
    # of those, the ones that ended short of the thought budget: why, as thought_stop_kind says
    thoughts_stopped: dict[str, int] = field(default_factory=lambda: {"empty": 0, "action": 0, "other": 0})
    unparsed: list[dict] = field(default_factory=list)
    invalid: int = 0
    critic_steps: list[dict] = field(default_factory=list)  # --critic: its candidates, scores and choice per step
    start: dict | None = None  # --start off-path: where the policy took over
    lead: int = 0  # the steps played for the policy before it takes over (off-path starts)
    stop_reason: str = "max_steps"
    error: str | None = None
    success: bool = False
    score: float = 0.0

    @property
    def policy_steps(self) -> int:
        return len(self.actions) - self.lead


class Evaluator:
    """One environment and one policy; runs one episode at a time."""

    def __init__(self, settings: EvalSettings, *, env: Env | None = None, policy: Policy | None = None, critic=None):
        self.settings = settings
        self.env = env if env is not None else make_env(settings.env_name, **settings.env_kwargs)
        if policy is None:
            policy = load_policy(
                settings.policy_spec,
                settings.policy_args,
                act=settings.act,
                max_tokens=settings.max_tokens,
                top_p=settings.top_p,
            )
        self.policy = policy
        self.serializer = resolve_serializer(
            policy.serializer_settings(), settings.serializer_overrides, f"{policy.spec or policy.name}:"
        )
        self.max_steps = settings.max_steps or self.env.max_steps
        # --act think: the thought budget ({tokens, from, trained?}), given to the policy
        self.thought = resolve_thought_tokens(settings, policy) if settings.act == "think" else None
        if self.thought:
            policy.thought_tokens = self.thought["tokens"]
        # a critic is a model in this process: threads share one and take turns with it (critic.lock)
        self.critic = critic
        if critic is None and settings.critic:
            from eexp.policies.critic import Critic

            self.critic = Critic(settings.critic)

    def describe(self) -> dict:
        """What the parent needs for ids and meta (it may never load the policy itself)."""
        return {
            "policy": self.policy.name or self.settings.policy_spec,
            "policy_info": self.policy.describe(),
            "serializer": self.serializer.to_dict(),
            "max_steps": self.max_steps,
            "env_version": self.env.version,
            **({"thought_tokens": self.thought} if self.thought else {}),
            **(
                {
                    "critic": {
                        "spec": self.settings.critic,
                        **self.critic.describe(),
                        "k": self.settings.critic_k,
                        "temperature": self.settings.critic_temperature,
                    }
                }
                if self.critic
                else {}
            ),
        }

    def _reranked(self, messages, state, admissible, seed, context) -> tuple:
        """(reply, what the critic saw): the policy's own reply and critic_k - 1 samples; the critic chooses among
        the distinct valid actions (with one or none, the policy's own reply stands)."""
        s = self.settings
        own = self.policy.act(messages, admissible=admissible, seed=seed, temperature=s.temperature, context=context)
        samples = (
            self.policy.sample(
                messages,
                admissible=admissible,
                seeds=[derive_seed(seed, "critic", j) for j in range(s.critic_k - 1)],
                temperature=s.critic_temperature,
                context=context,
            )
            if s.critic_k > 1
            else []
        )
        by_action: dict[str, Any] = {}
        for reply in [own, *samples]:
            if reply.action is not None and reply.valid is not False and reply.action not in by_action:
                by_action[reply.action] = reply
        candidates = list(by_action)
        if len(candidates) < 2:
            return own, {"candidates": candidates, "scores": None, "chosen": 0 if candidates else None}
        with self.critic.lock:
            best, scores = self.critic.choose(state, candidates)
        return by_action[best], {
            "candidates": candidates,
            "scores": [round(x, 4) for x in scores],
            "chosen": candidates.index(best),
        }

    def run(self, task: dict, this_id: str) -> tuple[dict, dict | None]:
        """(episode record, trajectory record if the episode succeeded, else None). With `attempts` > 1 a failed
        attempt is followed by another, up to `attempts` or the first success; with memory "reflexion" the policy
        diagnoses each failed attempt and the kept diagnoses open every later attempt's prompt (eexp.stages.memory).
        The record is the last attempt's episode, with every attempt in meta.attempts; `success` is success within
        the attempts."""
        s = self.settings
        notes: list[str] = []
        attempts: list[dict] = []
        # attempt 1 is seeded as a single-attempt run's episode is, so success@1 is that run's success
        first_id = (
            this_id
            if s.attempts == 1
            else episode_id(dataclasses.replace(s, attempts=1, memory="none"), task, self.describe())
        )
        for attempt in range(s.attempts):
            episode, trajectory = self._attempt(task, this_id, first_id, attempt, notes)
            if s.attempts == 1:
                return episode, trajectory
            record = {
                "attempt": attempt,
                "success": episode["success"],
                "score": episode["score"],
                "steps": episode["steps"],
                "invalid_actions": episode["invalid_actions"],
                "stop_reason": episode["stop_reason"],
                "actions": episode["actions"],
                "memory": list(notes),
            }
            if "error" in episode["meta"]:  # counted and warned about by Evaluation, as a last attempt's is
                record["error"] = episode["meta"]["error"]
            failed = failed_requests(episode)
            if failed:  # counted by summarize and the stage, every attempt's
                record["failed_requests"] = failed
            attempts.append(record)
            if episode["success"] or attempt == s.attempts - 1:
                break
            if s.memory == "reflexion" and episode["stop_reason"] != "error":
                record["diagnosis"] = diagnose(
                    self.policy,
                    task["goal"],
                    episode["actions"],
                    episode["observations"],
                    seed=derive_seed(s.seed, f"{this_id}\x1fdiagnosis", attempt),
                    temperature=s.temperature,
                )
                if record["diagnosis"]["kept"]:
                    notes.append(record["diagnosis"]["text"])
        episode["meta"].update(attempts=attempts, attempts_allowed=s.attempts, memory=s.memory)
        if trajectory is not None:  # a success at attempt k, made with the notes of the attempts before it
            trajectory["meta"].update(
                attempt=attempts[-1]["attempt"],
                attempts_allowed=s.attempts,
                memory=s.memory,
                memory_notes=attempts[-1]["memory"],
            )
        return episode, trajectory

    def _attempt(
        self, task: dict, episode_id: str, first_id: str, attempt: int, notes: list[str]
    ) -> tuple[dict, dict | None]:
        """One episode; attempt 0 is the episode a single-attempt run plays (seeded from its id, first_id), later
        ones seed each step from the attempt too and carry the memory's notes in their prompts."""
        env, s = self.env, self.settings
        seed_key = first_id if attempt == 0 else f"{episode_id}\x1fattempt{attempt}"
        shots = s.screenshots if s.screenshots and can_screenshot(env) else None
        # the folder of this attempt's screenshots: the episode's, and for later attempts one of their own
        shots_id = episode_id if attempt == 0 else f"{episode_id}.attempt{attempt}"
        play = Play()
        try:
            observation = self._begin(task, play)
            for step in range(self.max_steps):
                observation, done = self._step(
                    task,
                    play,
                    step,
                    observation,
                    seed=derive_seed(s.seed, seed_key, step),
                    notes=notes,
                    shots=shots,
                    shots_id=shots_id,
                )
                if done:
                    play.stop_reason = "done"
                    break
            if shots:  # the state the last action led to, numbered after the policy's steps
                save_step(env, shots, shots_id, play.policy_steps, observation)
            play.success = bool(env.success())
            play.score = float(env.score())
            if play.success:
                play.stop_reason = "success"
        except (PolicyError, UsageProblem):  # the policy cannot go on (its server is gone), or the environment
            raise  # cannot start off the path: the run stops, not this episode
        except Exception as e:  # noqa: BLE001 - an environment failure ends this episode, never the run
            play.stop_reason, play.success, play.score = "error", False, 0.0
            play.error = f"{type(e).__name__}: {e}"
        episode = self._record(task, episode_id, play)
        trajectory = None
        if play.success:
            trajectory = episode_trajectory(episode, env.env_record(), play.admissibles)
        return episode, trajectory

    def _begin(self, task: dict, play: Play) -> str:
        """Reset the environment for the task and return the observation the policy starts from; with --start
        off-path, after the steps played for it (in `play` as the policy's history, as if it had acted them)."""
        env, s = self.env, self.settings
        observation = env.reset(task)
        if s.start == "off-path":
            play.start = off_path_start(env, task, derive_seed(s.seed, f"off-path\x1f{task['id']}", 0))
            if play.start["injected"] is not None:
                played = play.start["prefix"] + [play.start["injected"]]
                observation = env.reset(task)
                for action in played:
                    play.observations.append(observation)
                    play.actions.append(action)
                    play.thoughts.append(None)  # kept parallel to actions: no thought behind a played step
                    observation, _, _, _ = env.step(action)
                play.lead = len(played)
        play.observations.append(observation)
        return observation

    def _step(
        self,
        task: dict,
        play: Play,
        step: int,
        observation: str,
        *,
        seed: int,
        notes: list[str],
        shots: str | None,
        shots_id: str,
    ) -> tuple[str, bool]:
        """One policy step from `observation`, recorded in `play`: (the next observation, done)."""
        env, s = self.env, self.settings
        admissible = env.admissible()
        state = {
            "goal": task["goal"],
            "observation": observation,
            "history": [{"observation": o, "action": a} for o, a in zip(play.observations, play.actions)],
        }
        if admissible is not None:
            state["admissible"] = admissible
        messages = self.serializer.policy_messages(state)
        if notes:
            messages = with_memory(messages, notes)
        if shots:
            save_step(env, shots, shots_id, step, observation, prompt=messages[-1]["content"])
        context = {"env": env, "task": task, "step": step}
        if self.critic is not None:
            reply, judged = self._reranked(messages, state, admissible, seed, context)
            play.critic_steps.append(judged)
        else:
            reply = self.policy.act(
                messages, admissible=admissible, seed=seed, temperature=s.temperature, context=context
            )
        play.seeds.append(seed)
        play.thoughts.append(reply.thought)
        play.thoughts_cut += bool(reply.thought_cut)
        if reply.thought_cut:
            kind = thought_stop_kind(reply.thought, admissible, reply.action, (self.thought or {}).get("tokens"))
            if kind:
                play.thoughts_stopped[kind] += 1
        if reply.action is None:
            # Unparseable: still sent, so the policy sees the environment's own error observation.
            action = clip(reply.text or "", UNPARSED_CHARS)
            play.unparsed.append({"step": step, "text": action, "finish_reason": reply.finish_reason})
        else:
            action = reply.action
        observation, _reward, done, info = env.step(action)
        play.actions.append(action)
        play.observations.append(observation)
        play.admissibles.append(admissible)
        if reply.action is None or (info or {}).get("valid", reply.valid) is False:
            play.invalid += 1
        return observation, done

    def _record(self, task: dict, episode_id: str, play: Play) -> dict:
        """The episode record of what `play` holds."""
        env, s = self.env, self.settings
        desc = self.describe()
        meta_fields: dict[str, Any] = {
            **desc["policy_info"],
            "env": env.name,
            "env_version": env.version,
            "env_kwargs": dict(s.env_kwargs),
            "split": task.get("split", ""),
            "policy": desc["policy"],
            "policy_spec": s.policy_spec,
            "act": s.act,
            "temperature": s.temperature,
            "top_p": s.top_p,
            "seed": s.seed,
            "seeds": play.seeds,
            "max_steps": self.max_steps,
            "max_tokens": s.max_tokens,
            "serializer": desc["serializer"],
            **record_meta(env),
        }
        if s.act == "think":  # steps whose thought never reached `Action:` (cut, the action chosen after it)
            meta_fields["thoughts_cut"] = play.thoughts_cut
            meta_fields["thoughts_stopped"] = play.thoughts_stopped  # cut, but short of the budget: why
            meta_fields["thought_tokens"] = desc["thought_tokens"]  # the budget, and where it came from
        if self.critic is not None:  # the critic, and at each step its candidates, their scores and its choice
            meta_fields["critic"] = desc["critic"]
            meta_fields["critic_steps"] = play.critic_steps
        if play.unparsed:
            meta_fields["unparsed"] = play.unparsed
        if play.error:
            meta_fields["error"] = play.error
        if play.start is not None:  # actions[:played] were played for the policy, not chosen by it
            meta_fields["start"] = {**play.start, "played": play.lead}
        episode = {
            "id": episode_id,
            "task": task,
            "policy": desc["policy"],
            "actions": play.actions,
            "observations": play.observations,
            "success": play.success,
            "score": play.score,
            "steps": play.policy_steps,
            "invalid_actions": play.invalid,
            "stop_reason": play.stop_reason,
            "meta": make_meta("eval", **meta_fields),
        }
        # the thought before each action (None: none)
        if s.act == "think" or any(t is not None for t in play.thoughts):
            episode["thoughts"] = play.thoughts
        return episode


def thought_stop_kind(
    thought: str | None, admissible: list[str] | None, action: str | None, budget: int | None
) -> str | None:
    """Why a thought that never reached `Action:` ended, when it was not the budget: "empty" (the model wrote no
    thought), "action" (it wrote an action where the thought belongs: one of the step's admissible actions, or the
    action chosen after it), "other" (it ended early otherwise); None: it may have run into the budget. A reply cut
    at a budget of N tokens holds about N characters or more (a token decodes to one character or more, but for
    pieces of a multi-byte character and whitespace stripped at the ends), so one under half that stopped by itself,
    and a larger budget would not change it."""
    text = (thought or "").strip()
    if not text:
        return "empty"
    if text in (admissible or ()) or text == action:
        return "action"
    if budget and len(text) < budget / 2:
        return "other"
    return None


def episode_trajectory(episode: dict, env_record: dict, admissibles: list[list[str] | None]) -> dict:
    """A successful episode as a DESIGN.md trajectory, so a strong policy's successes can serve as expert data."""
    steps = []
    for observation, action, admissible in zip(episode["observations"], episode["actions"], admissibles):
        step = {"observation": observation, "action": action}
        if admissible is not None:
            step["admissible"] = admissible
        steps.append(step)
    meta = episode["meta"]
    return {
        "id": episode["id"],
        "source_id": episode["id"],
        "env": env_record,
        "task": episode["task"],
        "steps": steps,
        "final_observation": episode["observations"][-1],
        "success": episode["success"],
        "score": episode["score"],
        "meta": make_meta(
            "eval",
            source="policy",
            policy=episode["policy"],
            policy_spec=meta.get("policy_spec"),
            model_sha256=meta.get("model_sha256", ""),
            temperature=meta.get("temperature"),
            **({"top_p": meta["top_p"]} if "top_p" in meta else {}),
            seed=meta.get("seed"),
            serializer=meta.get("serializer"),
            invalid_actions=episode["invalid_actions"],
            **({META_KEY: meta[META_KEY]} if META_KEY in meta else {}),
        ),
    }


def episode_id(settings: EvalSettings, task: dict, description: dict) -> str:
    """Deterministic from the environment, the task and the policy (and the settings that change an episode), so
    --resume can tell what is done and two runs of the same thing have the same ids."""
    info = description.get("policy_info") or {}
    # --act think: the reply begun with `Thought:` and the thought's budget change the episode (kept out of the other
    # modes' ids, which stay what they were)
    think = (settings.max_tokens, "prefill", description["thought_tokens"]["tokens"]) if settings.act == "think" else ()
    # an off-path start is another episode (kept out of reset's ids, which stay what they were)
    start = (settings.start,) if settings.start != "reset" else ()
    attempts = (settings.attempts, settings.memory) if settings.attempts > 1 else ()
    critic = description.get("critic")
    critic = (critic["spec"], critic.get("model_sha256", ""), critic["k"], critic["temperature"]) if critic else ()
    # a nucleus other than the whole distribution, and the policy args that change what the model sees or computes
    # (its describe()'s policy_args: n_ctx, tokenizer, dtype, ...), are other episodes too; both are kept out of the
    # ids of the defaults, which stay what they were
    top_p = ("top_p", settings.top_p) if settings.top_p != 1.0 else ()
    policy_args = ("policy_args", info["policy_args"]) if info.get("policy_args") else ()
    return short_hash(
        "episode",
        settings.env_name,
        settings.env_kwargs,
        task.get("split", ""),
        task["id"],
        description["policy"],
        info.get("model_sha256", ""),
        settings.act,
        settings.temperature,
        settings.seed,
        description["max_steps"],
        description["serializer"],
        *think,
        *start,
        *attempts,
        *critic,
        *top_p,
        *policy_args,
    )
