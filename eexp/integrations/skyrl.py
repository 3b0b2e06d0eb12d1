"""eexp environments for SkyRL, the RL engine to hand off to when one workstation is not enough.

SkyRL (skyrl-train, multi-GPU GRPO/PPO with vLLM rollouts) drives text environments through skyrl-gym's
`BaseTextEnv`: `init(prompt) -> (chat messages, metadata)` once per episode, then `step(model reply) ->
{observations, reward, done, metadata}` until done. `EexpTextEnv` is any eexp environment behind that interface:

- the environment, split, task, serializer settings and reward come from the dataset row (its `extra_info`, which
  SkyRL passes to the environment as `extras`), so one registered class serves every eexp environment;
- `init` returns the prompt eexp itself renders (eexp.prompts.Serializer.policy_messages, the settings a
  checkpoint records in its model card, card.yaml), so an IL, IWM or SR checkpoint starts from the prompt it was
  trained on;
- `step` reads the reply as eval does (`Action: ...`, optionally after `Thought: ...`; matched to the admissible
  actions after the environment's canonicalization), sends it to the environment (an unparseable reply is sent as
  is, as eval sends it, and the environment's own error is the next observation), and answers with the next state
  rendered by the same serializer as one user message;
- the reward is 0 until the episode ends, then the environment's success (1/0), score, or both (`reward`), the
  same rewards as `eexp rl`.

What differs from eexp's own prompts: SkyRL keeps the whole conversation (prompt, replies, observations) as the
model's context, while eexp renders each state alone with its recent history inside it. The first turn is
identical; later turns show the conversation so far and then the rendered state. Use the serializer's `history: 0`
for such runs (the conversation carries the history already), or SkyRL's step-wise trajectories.

`dataset_rows` writes the rows SkyRL's trainer reads (`prompt`, `env_class`, `reward_spec`, `extra_info`);
`register()` registers the class under the id "eexp" in skyrl-gym's registry, which SkyRL's entry point must do
inside its Ray task (recipes/README.md, "RL", has the launcher and the command). The checkpoint SkyRL starts from is
an eexp checkpoint directory as is (`eexp finetune` writes a Hugging Face folder with its tokenizer and chat
template); a LoRA output must be merged into its base first (PEFT's merge_and_unload).
"""

from __future__ import annotations

import argparse
import io
import sys
from typing import Any

import orjson
from skyrl_gym.envs.base_text_env import BaseTextEnv, BaseTextEnvStepOutput

from eexp.envs.base import make_env
from eexp.errors import EnvError, InputError, WriteError
from eexp.files import read_checkpoint_serializer
from eexp.io import write_atomic
from eexp.policies.actions import reply_from_text
from eexp.prompts import Serializer, clip

ENV_ID = "eexp"
REWARDS = ("success", "score", "success+score")
UNPARSED_CHARS = 300  # as eval: how much of an unparseable reply is sent to the environment


def _plain(value: Any) -> dict:
    """A mapping from a dict, an OmegaConf DictConfig (what SkyRL passes) or None."""
    if value is None:
        return {}
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(value, DictConfig):
            return dict(OmegaConf.to_container(value, resolve=True))
    except ImportError:
        pass
    return dict(value)


class EexpTextEnv(BaseTextEnv):
    """One episode of an eexp environment task, as a SkyRL text environment."""

    def __init__(self, env_config: Any = None, extras: dict | None = None):
        super().__init__()
        extras = _plain(extras)
        spec = {**_plain(env_config), **_plain(extras.get("extra_info"))}
        for key in ("env", "task_id"):
            if key not in spec:
                raise EnvError(
                    f"eexp SkyRL environment: the dataset row's extra_info has no {key!r} "
                    "(make the rows with eexp.integrations.skyrl.dataset_rows)"
                )
        self.reward_kind = spec.get("reward", "success")
        if self.reward_kind not in REWARDS:
            raise EnvError(f"eexp SkyRL environment: reward {self.reward_kind!r} is not one of {', '.join(REWARDS)}")
        self.env = make_env(spec["env"], **_plain(spec.get("env_kwargs")))
        self.task = self.env.task(spec.get("split", "train"), str(spec["task_id"]))
        self.serializer = Serializer.from_dict(_plain(spec.get("serializer")), "eexp SkyRL environment: serializer")
        self.max_turns = int(spec.get("max_turns") or self.env.max_steps)
        self.observations: list[str] = []
        self.actions: list[str] = []
        self.invalid = 0

    def _state(self) -> dict:
        state = {
            "goal": self.task["goal"],
            "observation": self.observations[-1],
            "history": [{"observation": o, "action": a} for o, a in zip(self.observations, self.actions)],
        }
        admissible = self.env.admissible()
        if admissible is not None:
            state["admissible"] = admissible
        return state

    def init(self, prompt=None):
        """The episode's first prompt, rendered by eexp (the row's `prompt` is the same text, made in advance)."""
        self.turns, self.actions, self.invalid = 0, [], 0
        self.observations = [self.env.reset(self.task)]
        return self.serializer.policy_messages(self._state()), {"env": self.env.name, "task_id": self.task["id"]}

    def step(self, action: str) -> BaseTextEnvStepOutput:
        self.turns += 1
        admissible = self.env.admissible()
        reply = reply_from_text(action or "", admissible, context={"env": self.env, "task": self.task})
        sent = reply.action if reply.action is not None else clip(action or "", UNPARSED_CHARS)
        observation, _reward, done, info = self.env.step(sent)
        valid = reply.action is not None and (info or {}).get("valid", reply.valid) is not False
        self.invalid += not valid
        self.actions.append(sent)
        self.observations.append(observation)
        done = bool(done) or self.turns >= self.max_turns
        success, score = bool(self.env.success()), float(self.env.score())
        reward = 0.0
        if done:
            reward = {"success": float(success), "score": score, "success+score": float(success) + score}[
                self.reward_kind
            ]
        observations = [] if done else [{"role": "user", "content": self.serializer.render_state(self._state())}]
        return BaseTextEnvStepOutput(
            observations=observations,
            reward=reward,
            done=done,
            metadata={"action": sent, "valid": valid, "success": success, "score": score, "thought": reply.thought},
            postprocessed_action=sent,
        )

    def get_metrics(self) -> dict:
        return {
            "success": float(self.env.success()),
            "score": float(self.env.score()),
            "steps": len(self.actions),
            "invalid_actions": self.invalid,
        }

    def close(self):
        self.env.close()


def register(env_id: str = ENV_ID) -> None:
    """Add EexpTextEnv to skyrl-gym's registry (SkyRL's entry point calls this inside its Ray task)."""
    from skyrl_gym.envs.registration import register as skyrl_register
    from skyrl_gym.envs.registration import registry

    if env_id not in registry:
        skyrl_register(id=env_id, entry_point="eexp.integrations.skyrl:EexpTextEnv")


def dataset_rows(
    env_name: str,
    split: str,
    n: int | None = None,
    *,
    env_kwargs: dict | None = None,
    serializer: dict | None = None,
    reward: str = "success",
    max_turns: int | None = None,
    env_id: str = ENV_ID,
) -> list[dict]:
    """SkyRL dataset rows, one per task of the split (the first n): the rendered first prompt, the environment
    class and what EexpTextEnv needs in `extra_info`."""
    env = make_env(env_name, **(env_kwargs or {}))
    try:
        tasks = list(env.tasks(split))[:n]
        rows = []
        for task in tasks:
            info = {
                "env": env_name,
                "env_kwargs": dict(env_kwargs or {}),
                "split": split,
                "task_id": task["id"],
                "serializer": Serializer.from_dict(serializer, "dataset_rows: serializer").to_dict(),
                "reward": reward,
                "max_turns": max_turns or env.max_steps,
            }
            first = EexpTextEnv(extras={"extra_info": info})
            prompt, _ = first.init()
            first.close()
            rows.append(
                {
                    "data_source": f"eexp/{env_name}",
                    "prompt": prompt,
                    "env_class": env_id,
                    "reward_spec": {"method": "env", "ground_truth": None},
                    "extra_info": info,
                }
            )
        return rows
    finally:
        env.close()


def main(argv: list[str] | None = None) -> int:
    """python -m eexp.integrations.skyrl --env shop --split train -n 1000 --model CKPT -o train.parquet"""
    parser = argparse.ArgumentParser(
        prog="python -m eexp.integrations.skyrl",
        description="Write a SkyRL dataset (parquet or jsonl) of an eexp environment's "
        "tasks, rendered with a checkpoint's serializer settings.",
    )
    parser.add_argument("--env", required=True)
    parser.add_argument("--split", default="train")
    parser.add_argument("-n", type=int, default=None)
    parser.add_argument("--model", help="checkpoint whose model card's serializer settings render the prompts")
    parser.add_argument("--reward", choices=REWARDS, default="success")
    parser.add_argument("--max-turns", type=int, default=None)
    parser.add_argument("-o", "--output", required=True, help="FILE.parquet or FILE.jsonl")
    args = parser.parse_args(argv)
    serializer = read_checkpoint_serializer(args.model) if args.model else None
    rows = dataset_rows(
        args.env, args.split, args.n, serializer=serializer, reward=args.reward, max_turns=args.max_turns
    )
    # made whole in memory, then written under a temporary name and renamed (eexp.io.write_atomic), as eexp's own
    # commands write a file: a run that fails, or a reader meanwhile, never sees half a dataset or loses the old one
    if args.output.endswith(".parquet"):
        import pandas

        buffer = io.BytesIO()
        pandas.DataFrame(rows).to_parquet(buffer)
        data = buffer.getvalue()
    else:
        data = b"".join(orjson.dumps(r) + b"\n" for r in rows)
    try:
        write_atomic(args.output, data)
    except (InputError, WriteError) as e:  # a folder in the way, a full disk: one line, as eexp says it
        print(f"eexp: {e}", file=sys.stderr)
        return 1
    print(f"wrote {len(rows)} rows to {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
