"""`RL`: the recipe of `eexp rl` (setup / train / save / resume / finish), in the style of torchtune's recipes.

`RL` is the trainer (eexp.training.trainer: device, precision, model loading, optimizer and schedule, checkpoints,
--resume, metrics.jsonl, the final save and --export-gguf) with the RL loop: each step draws samples from the live
weights (the objective --reward names in `REWARDS`, eexp.rl.config: `Episodes`, GRPO over whole episodes,
eexp.rl.rollouts; `ExpertStep`, actions at expert states, eexp.rl.expert_step; or `NextState`, predictions of the
next observation of recorded transitions, eexp.rl.next_state), weighs each by its group-relative advantage and
makes --ppo-epochs x --minibatches clipped-surrogate updates (eexp.rl.loss). Its options (`RLConfig`) are the
trainer's (TrainerConfig) and RL's own."""

from __future__ import annotations

import contextlib
import copy
import hashlib
import math
import os
import random
import re
import shutil
import time
import warnings
from dataclasses import replace
from typing import Callable

import orjson
import torch

from eexp import __version__
from eexp.envs.base import make_env
from eexp.errors import PolicyError, TrainingError, UsageProblem
from eexp.models.adapter import base_of
from eexp.rl.config import PACK_TOKENS, RESUME_FREE, REWARDS, RL_ACT_MODES, RLConfig
from eexp.rl.loss import batch_logprobs, chosen_units, clipped_surrogate, pack_chunks, packable, same_inputs, unit_count
from eexp.rl.objective import RLObjective
from eexp.rl.rollouts import LivePolicy, group_advantages, play_episodes
from eexp.runner import progress_bar
from eexp.stages.evaluate.episode import Evaluator
from eexp.stages.evaluate.settings import EvalSettings
from eexp.stages.evaluate.tasks import split_tasks
from eexp.training import checkpoint
from eexp.training.config import default_lr, from_scratch, objective_class
from eexp.training.model import check_model_dir
from eexp.training.objective import refuse_foreign_options
from eexp.training.trainer import Trainer


class RL(Trainer):
    """setup() -> train() -> finish(), with the trainer's checkpoints, resume, metrics and final save, and the
    objective --reward names (`REWARDS`), or the one given. `rl` is the options as given; `cfg`, the trainer's,
    the same options as the trainer runs them (`_trainer_config`)."""

    def __init__(self, rl: RLConfig, echo: Callable[[str], None] | None = None, objective: RLObjective | None = None):
        self.rl = rl
        super().__init__(self._trainer_config(rl), echo)
        self.objective = objective  # None: --reward's, once setup has checked the options

    @staticmethod
    def _trainer_config(rl: RLConfig) -> RLConfig:
        """The options as the trainer loads, saves and resumes the model: --model may be a full checkpoint (trained
        whole, or with a fresh LoRA adapter under --lora) or a LoRA adapter (trained on, on its base); no LoRA
        dropout (the old and new log-probabilities are one function)."""
        if not os.path.isfile(os.path.join(rl.model, "adapter_config.json")):
            return replace(rl, lora_dropout=0.0)
        try:
            # rl takes no base option: the adapter's own config names it
            base = base_of(rl.model, override_with="base_model_name_or_path in its adapter_config.json, a local folder")
        except PolicyError as e:
            raise TrainingError(str(e)) from None
        return replace(rl, model=base, adapter=rl.model, lora=True, lora_dropout=0.0)

    # -- setup --

    def setup(self) -> None:
        rl, cfg = self.rl, self.cfg
        self._check_rl_options()
        self._runtime(distributed=False)  # one process: the episodes are played where the weights are
        self.model_cfg = self._import_base()
        check_model_dir(self.model_cfg.model)
        self.env = make_env(rl.env, **rl.env_kwargs)
        # an objective that says how it acts (next-state: a prediction is generated) has that default
        self.act = (
            rl.act or self.objective.act or ("score" if getattr(self.env, "closed_actions", True) else "generate")
        )
        self.tasks = split_tasks(self.env, rl.split, rl.tasks, self.echo)
        self.objective.setup(self)  # expert-step: the expert states (self.states); next-state: the outcome records
        self._existed = os.path.exists(cfg.output)
        self._prepare_output()
        self._load_tokenizer()
        self.model = self._load_model().eval()
        if self.model_cfg.gradient_checkpointing:
            # transformers recomputes activations only in train mode; the update switches to it for its packed
            # passes, so dropout is turned off for good here (old and new log-probabilities stay one function).
            without_dropout(self.model)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        lr = rl.lr if rl.lr is not None else default_lr(cfg.LR_KIND, cfg.method, self.model_cfg.model)
        self.cfg = replace(cfg, lr=lr)
        self.reference = None
        if rl.kl_coef > 0 and not (cfg.method != "full" and not cfg.adapter):
            # A fresh LoRA adapter's reference is its base with the adapter off; otherwise a frozen copy.
            self.reference = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.policy = LivePolicy.over(
            self.model, self.tokenizer, start=rl.model, act=self.act, max_tokens=rl.max_tokens, device=self.device
        )
        settings = EvalSettings(
            env_name=rl.env,
            policy_spec=rl.model,
            env_kwargs=dict(rl.env_kwargs),
            act=self.act,
            max_tokens=rl.max_tokens,
            max_steps=rl.episode_steps,
            temperature=rl.temperature,
            seed=rl.seed,
        )
        self.evaluator = Evaluator(settings, env=self.env, policy=self.policy)
        self.serializer = self.evaluator.serializer.to_dict()
        self.updates_per_step = rl.ppo_epochs * rl.minibatches
        # scheduler length, in optimizer updates; the card's phase name says which reward trained it
        self.phases = [(self.objective.phase, rl.max_steps * self.updates_per_step)]
        self.total_steps = rl.max_steps
        self.log_every = 1
        options = {k: v for k, v in rl.options().items() if k not in RESUME_FREE}
        self.fingerprint = checkpoint.fingerprint(
            options, hashlib.blake2b(orjson.dumps(self.objective.fingerprint_data(self)), digest_size=16).hexdigest()
        )
        self.state = {
            "phase": self.phases[0][0],
            "phase_step": 0,
            "global_step": 0,
            "best_val": None,
            "best_step": None,
            "fingerprint": self.fingerprint,
            "episodes": 0,
            "env_steps": 0,
            "actions": 0,
            "probe": None,
        }
        self.optimizer = self.scheduler = None
        if rl.resume:
            self.load_checkpoint()
            self.policy.weights_changed()
        if self.optimizer is None:
            self._new_optimizer("rl", self.phases[0][1])

    def _check_rl_options(self) -> None:
        """The options of every RL run; the objective's own, refused under another objective in one place for all
        (refuse_foreign_options: its OPTIONS) and checked by the objective (its check)."""
        rl = self.rl
        if not 0 < rl.clip <= 1:
            raise UsageProblem("--clip must be in (0, 1]")
        if rl.act is not None and rl.act not in RL_ACT_MODES:
            raise UsageProblem(
                f"--act {rl.act}: eexp rl acts with {' or '.join(RL_ACT_MODES)} (constrained "
                "sampling's probabilities are not computed; use score for a closed action space)"
            )
        if rl.reward not in REWARDS:
            raise UsageProblem(f"--reward {rl.reward}: choose from {', '.join(REWARDS)}")
        if self.objective is None:
            self.objective = objective_class(REWARDS, rl.reward)()
        refuse_foreign_options(REWARDS, rl, self.objective)
        self.objective.check(rl)
        if rl.group_size < 2:
            raise UsageProblem("--group-size must be at least 2 (advantages are relative to the group)")
        if rl.temperature <= 0:
            raise UsageProblem(
                "--temperature must be above 0: RL samples from the policy (greedy episodes of one "
                "task are all the same)"
            )

    # -- train --

    def train(self) -> None:
        bar = progress_bar(self.rl.quiet, total=self.total_steps, initial=self.state["global_step"], unit="step")
        try:
            while self.state["global_step"] < self.total_steps:
                self._rl_step(bar)
        finally:
            bar.close()

    def autocast(self):
        """bf16 autocast on a GPU (--precision auto or bf16): the rollouts and the update's passes; else nothing."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()

    def rollouts(self, step: int) -> list[tuple[dict, list[dict]]]:
        """The episodes of one RL step, grouped by task: [(episode record, its trace of policy calls)]."""
        return play_episodes(self, step)

    def _rl_step(self, bar) -> None:
        """One RL step: the objective's samples (episodes, or actions at expert states) from the current weights,
        their rewards, the group-relative update, a metrics row, and a checkpoint every --save-every steps."""
        rl, objective = self.rl, self.objective
        step = self.state["global_step"] + 1
        t0 = time.perf_counter()
        drawn = objective.collect(self, step)
        rollout_s = time.perf_counter() - t0
        objective.probe(self, drawn)
        rewards = objective.rewards(self, drawn)
        stats, update_s, n_samples = self._group_update([trace for _, trace in drawn], rewards, step)
        self.policy.weights_changed()
        self.state["global_step"] = self.state["phase_step"] = step
        row = {
            "step": step,
            "phase": objective.phase,
            "reward": rl.reward,
            **objective.account(self, drawn, rewards),
            "samples": n_samples,
            **stats,
            "lr": self.scheduler.get_last_lr()[0],
            "rollout_s": round(rollout_s, 3),
            "update_s": round(update_s, 3),
            f"{objective.unit}_per_s": round(len(drawn) / rollout_s, 3) if rollout_s > 0 else 0.0,
        }
        self._log(row)
        bar.update(1)
        bar.set_postfix(**objective.postfix(row), loss=f"{row['loss']:.4f}")
        self._checkpoint_if_due(step)

    @staticmethod
    def _trained(trace: list[dict], advantage: float) -> list[dict]:
        """The trace's policy calls that produced something to train on, each with the advantage."""
        return [
            {**s, "advantage": advantage}
            for s in trace
            if s["mode"] == "score" or (s["mode"] == "generate" and s["reply"]) or (s["mode"] == "think" and s["parts"])
        ]

    def _logprobs(self, model, samples: list[dict]) -> list[list[tuple]]:
        """The samples' log-probabilities under bf16 autocast on a GPU. With gradient checkpointing, a pass that
        computes gradients runs in train mode (where transformers recomputes activations; dropout is off) when it is
        packed; the one-part-at-a-time path shares the prompt's KV cache, which checkpointing would switch off."""
        checkpoint = (
            self.model_cfg.gradient_checkpointing
            and torch.is_grad_enabled()
            and model is self.model
            and packable(model)
        )
        if checkpoint:
            model.train()
        try:
            with self.autocast():
                return batch_logprobs(model, samples, self.device, self.pad_id, self.rl.temperature)
        finally:
            if checkpoint:
                model.eval()

    def _reference_logprobs(self, samples: list[dict]) -> list[list[tuple]]:
        if self.reference is not None:
            return self._logprobs(self.reference, samples)
        with self.model.disable_adapter():  # a fresh LoRA adapter: the start is the base without it
            return self._logprobs(self.model, samples)

    def _group_update(self, traces: list, rewards: list[float], step: int) -> tuple[dict, float, int]:
        """One update from consecutive groups of group_size samples (episodes, or actions at expert states): each
        trace weighted by its group-relative advantage (none with a zero one); (its stats, its seconds, how many
        samples it trained on)."""
        rl = self.rl
        samples = []
        for g in range(0, len(traces), rl.group_size):
            advantages = group_advantages(rewards[g : g + rl.group_size], rl.scale_rewards)
            for trace, adv in zip(traces[g : g + rl.group_size], advantages):
                if abs(adv) > 1e-8:
                    samples += self._trained(trace, adv)
        t1 = time.perf_counter()
        stats = self._update(samples, step)
        return stats, time.perf_counter() - t1, len(samples)

    def _update(self, samples: list[dict], step: int) -> dict:
        """--ppo-epochs passes of --minibatches optimizer updates over the step's samples."""
        rl = self.rl
        totals = {"loss": 0.0, "kl": 0.0, "clip_frac": 0.0, "units": 0}
        if not samples:
            for _ in range(self.updates_per_step):  # the schedule counts RL steps, signal or not
                self._schedule()
            return {"loss": 0.0, "kl": 0.0, "clip_frac": 0.0, "updates": 0}
        with torch.no_grad():
            for chunk in pack_chunks(same_inputs(samples), PACK_TOKENS):
                reps = [rep for rep, _ in chunk]
                if self.updates_per_step > 1:  # one on-policy update: the old log-probs are the first pass's own
                    for (_, members), parts in zip(chunk, self._logprobs(self.model, reps)):
                        for s in members:
                            s["old"] = chosen_units(parts, s).detach()
                if rl.kl_coef > 0:
                    for (_, members), parts in zip(chunk, self._reference_logprobs(reps)):
                        ref = [(logp.detach(), dist.detach() if dist is not None else None) for logp, dist in parts]
                        for s in members:
                            s["ref"] = ref
        updates = 0
        for epoch in range(rl.ppo_epochs):
            order = list(range(len(samples)))
            random.Random(f"{rl.seed}/rl-minibatch/{step}/{epoch}").shuffle(order)
            size = math.ceil(len(order) / rl.minibatches)
            for m in range(rl.minibatches):
                chunk = [samples[i] for i in order[m * size : (m + 1) * size]]
                if chunk:
                    self._minibatch(chunk, totals)
                    updates += 1
                self._schedule()
        n = max(totals["units"], 1)
        return {
            "loss": round(totals["loss"] / n, 6),
            "kl": round(totals["kl"] / n, 6),
            "clip_frac": round(totals["clip_frac"] / n, 4),
            "updates": updates,
        }

    def _schedule(self) -> None:
        with warnings.catch_warnings():  # a step without an update still advances the schedule: no warning
            warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()` before"))
            self.scheduler.step()

    def _minibatch(self, chunk: list[dict], totals: dict) -> None:
        """One optimizer update: the clipped surrogate (+ KL) averaged over every unit (action or token). Samples
        with the same inputs (a group's episodes share their first state, and often later ones) share one forward
        and backward pass; each keeps its own decision and advantage."""
        rl = self.rl
        units = sum(unit_count(s) for s in chunk)
        for packed in pack_chunks(same_inputs(chunk), PACK_TOKENS):
            total = 0.0
            for (rep, members), parts in zip(packed, self._logprobs(self.model, [rep for rep, _ in packed])):
                for s in members:
                    logp = chosen_units(parts, s)
                    loss, clipped = clipped_surrogate(
                        logp, s["old"] if "old" in s else logp.detach(), s["advantage"], rl.clip
                    )
                    total = total + loss.sum()
                    totals["loss"] += float(loss.detach().sum())
                    totals["clip_frac"] += float(clipped.sum())
                    totals["units"] += len(logp)
                if rl.kl_coef > 0:  # the same inputs, the same distributions: one KL, counted for every member
                    kl = 0.0
                    for (part_logp, dist), (ref_logp, ref_dist) in zip(parts, rep["ref"]):
                        if dist is not None:  # exact KL over the admissible set
                            kl = kl + (dist.exp() * (dist - ref_dist)).sum()
                        else:  # k3 per token
                            d = ref_logp - part_logp
                            kl = kl + (torch.exp(d) - d - 1).sum()
                    total = total + rl.kl_coef * len(members) * kl
                    totals["kl"] += float(kl.detach()) * len(members)
            (total / units).backward()
        self._clip_gradients()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def _discard_output(self) -> None:
        """A refused start leaves nothing behind: OUT goes if this run made it."""
        if not self._existed:
            shutil.rmtree(self.cfg.output, ignore_errors=True)

    # -- finish --

    def resolved_config(self) -> dict:
        rl = self.rl.options()
        for key in ("resume", "quiet"):
            rl.pop(key)
        start = self.base_hub.id if self.base_hub else os.path.abspath(self.rl.model)
        return {
            **rl,
            "act": self.act,
            "lr": self.cfg.lr,
            "method": self.cfg.method,
            "serializer": self.serializer,
            "command": "rl",
            "start": start,
            "gradient_checkpointing": self.model_cfg.gradient_checkpointing,
            "base_model": self.base_gguf or (start if self.base_hub else os.path.abspath(self.cfg.model)),
            "from_scratch": from_scratch(self.model_cfg.model),
            "eexp_version": __version__,
            "precision": "bf16" if self.bf16 else "fp32",
            "probe": self.state.get("probe"),
            "steps": self.state["global_step"],
            "episodes": self.state["episodes"],
            "env_steps": self.state["env_steps"],
            **self.objective.config(self),
        }

    def finish(self) -> None:
        super().finish()
        self.env.close()


def without_dropout(model) -> None:
    """Every dropout of the model at 0 (its modules and the attention's own rate), so train mode computes what eval
    mode does."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = 0.0


def run_rl(rl: RLConfig, echo: Callable[[str], None] | None = None) -> RL:
    run = RL(rl, echo)
    with checkpoint.run_folder(rl.output, main=checkpoint.is_main_process()):
        with run.saying_where_it_stopped():
            run.setup()
            run.train()
            run.finish()
    return run
