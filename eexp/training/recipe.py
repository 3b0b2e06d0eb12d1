"""`eexp finetune`: imitation (IL), the implicit-world-modeling schedule (IWM) and self-reflection (SR) training,
and DPO on preference pairs.

One readable recipe in plain PyTorch (no HF Trainer), in the style of torchtune's single-device recipes:

    options (config.FinetuneConfig) -> data (data.encode: chat-template masks, shortening) -> batches
    (batches: length-grouped) -> model (model.load_model: full, LoRA or QLoRA through PEFT)
    -> Finetune.setup / train / finish (checkpoints and resume: the Trainer's, eexp.training.trainer) -> OUT

`Finetune` is the trainer (eexp.training.trainer: device, precision, model, optimizer and schedule, checkpoints,
--resume, metrics, the final save) with the supervised loop: phases of updates over examples, validation. What it
optimizes is its objective (the interface: eexp.training.objective), the class --objective names in `OBJECTIVES`
(eexp.training.config): `SFT` (here), the likelihood of the target tokens, or, with `--objective dpo`, `DPO`
(eexp.training.dpo) on preference pairs.

Why a custom loop: every piece of state that decides the next update is ours (the batch order is a pure function of
seed, phase and epoch; the optimizer, scheduler and RNG state are saved with the weights), so `--resume` reproduces an
uninterrupted run's losses exactly; and logits are computed only where a target token is predicted, which is where
most of the time and memory of a chat fine-tune go (the prompt is long, the action is short).

The IWM schedule (paper §3, §5.1): phase "warmup" trains on world-model examples (`--warmup-data`), then phase
"train" continues the same weights (or LoRA adapter) on the training files with a fresh optimizer and schedule.
`--max-steps` counts the updates of both phases, so IL, IWM and SR runs can be held to one budget; without it each
phase runs its epochs (the paper's budgets: SR the same epochs over D_refl + D_expert as IL over D_expert).

An update is --batch-size x --grad-accum x processes examples, chosen before it is split into micro-batches
(batches.epoch_updates), and its loss is normalized over all of them (`_units`: target tokens, or examples with the
default --loss-norm example), so how it is split changes neither its examples nor its gradient.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import time
from typing import Callable

import orjson
import torch
from safetensors.torch import load_file

from eexp.card import check_serializer, data_file
from eexp.errors import TrainingError, UsageProblem
from eexp.runner import progress_bar
from eexp.training import checkpoint
from eexp.training.batches import collate_rows, example_nll, examples_per_update, phase_updates, updates_per_epoch
from eexp.training.config import OBJECTIVES, PHASES, RESUME_FREE, FinetuneConfig, objective_class
from eexp.training.data import Dataset, encode_items, read_examples, split_validation
from eexp.training.model import OOM_ADVICE, check_model_dir, is_out_of_memory
from eexp.training.objective import Objective, refuse_foreign_options
from eexp.training.trainer import Trainer


class SFT:
    """The weighted negative log-likelihood of the target tokens (the assistant turns) of training examples."""

    OPTIONS = ("packing",)  # --packing: the padding-free rows of this loss (batches.collate_rows)

    def check(self, cfg: FinetuneConfig) -> None:
        """Nothing beyond the recipe's own checks."""

    def read(self, paths: list[str], cfg: FinetuneConfig, echo):
        return read_examples(paths, cfg.on_error, echo)

    def encode(self, name: str, items, reader, tokenizer, cfg: FinetuneConfig) -> Dataset:
        return encode_items(name, items, reader, tokenizer, cfg)

    @staticmethod
    def example_key(example) -> list:
        return [example.ids, example.weights]

    @staticmethod
    def units(example, cfg: FinetuneConfig) -> int:
        """Its target tokens (--loss-norm token), or the example itself (example). An update's loss is the sum of
        `batch_loss` over its micro-batches divided by the units of all its examples, so grad-accum and several
        processes give the gradient of one batch of the same examples."""
        return example.n_targets if cfg.loss_norm == "token" else 1

    def batch_loss(self, run, batch: list):
        """Weight x negative log-likelihood of the target tokens, summed (--loss-norm token), or each example's mean
        over its target tokens, summed over the examples (--loss-norm example)."""
        rows = collate_rows(batch, run.pad_id, run.device, packed=run.cfg.packing)  # --packing: one row
        per_example = example_nll(run.model, rows)
        if run.cfg.loss_norm == "example":
            per_example = per_example / rows.n_targets
        return per_example.sum(), rows.tokens, {}

    def prepare(self, run) -> None:
        """Nothing: the loss needs only the weights being trained."""

    def card(self, cfg: FinetuneConfig) -> dict:
        return {}


class Finetune(Trainer):
    """setup() -> train() -> finish() over training examples, with the objective --objective names (`OBJECTIVES`),
    or the one given; the trainer's save_checkpoint / load_checkpoint make a killed run resumable exactly."""

    def __init__(
        self, cfg: FinetuneConfig, echo: Callable[[str], None] | None = None, objective: Objective | None = None
    ):
        super().__init__(cfg, echo)
        self.objective = objective if objective is not None else objective_class(OBJECTIVES, cfg.objective)()

    # -- setup --

    def setup(self) -> None:
        cfg = self.cfg
        self._check_options()
        self._runtime()
        if cfg.precision == "bf16" and self.device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise UsageProblem("--precision bf16: this GPU does not support bfloat16")
        if self.sharded and cfg.resume:
            raise UsageProblem("--resume is not supported under FSDP (sharded optimizer state)")
        self.model_cfg = self._import_base()  # --model X.gguf: its import; a Hub id: its snapshot in the HF cache
        check_model_dir(self.model_cfg.model)  # before OUT is made: a wrong --model leaves nothing behind
        self._check_memory()
        self._prepare_output()
        if self.acc:  # OUT exists, made by the main process, before any process goes on
            self.acc.wait_for_everyone()
        self._load_tokenizer()
        self._load_data()
        self._plan()
        self.model = self._load_model()
        if self.fsdp2:
            # FSDP2 swaps the parameters for sharded ones, so accelerate prepares the model only together with an
            # optimizer; each phase's own optimizer is then made over the sharded parameters (_new_optimizer).
            trainable = [p for p in self.model.parameters() if p.requires_grad]
            self.model, _ = self.acc.prepare(self.model, torch.optim.AdamW(trainable, lr=0.0))
        elif self.acc:
            self.model = self.acc.prepare(self.model)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.objective.prepare(self)  # from the starting weights, before a checkpoint replaces them
        self.state = {
            "phase": self.phases[0][0],
            "phase_step": 0,
            "global_step": 0,
            "best_val": None,
            "best_step": None,
            "fingerprint": self.fingerprint,
        }
        self.optimizer = self.scheduler = None
        if cfg.resume:
            self.load_checkpoint()

    def _check_options(self) -> None:
        cfg = self.cfg
        if cfg.val and cfg.val_fraction:
            raise UsageProblem("give --val FILE or --val-fraction F, not both")
        if not 0 <= cfg.val_fraction < 1:
            raise UsageProblem("--val-fraction must be in [0, 1)")
        if cfg.keep_best and not (cfg.val or cfg.val_fraction):
            raise UsageProblem("--keep-best needs validation data (--val FILE or --val-fraction F)")
        refuse_foreign_options(OBJECTIVES, cfg, self.objective)
        if cfg.adapter and cfg.lora_targets != ["all-linear"]:
            raise UsageProblem(
                "--adapter continues an existing adapter with its own target modules; drop --lora-targets"
            )
        self.objective.check(cfg)

    def _load_data(self) -> None:
        cfg = self.cfg
        items, reader = self._read(cfg.train_files)
        if cfg.val:
            val_items, val_reader = self._read([cfg.val])
        elif cfg.val_fraction:
            items, val_items = split_validation(items, cfg.val_fraction, cfg.seed)
            val_reader = reader
        else:
            val_items, val_reader = [], None
        self.data = {"train": self._encode("train", items, reader)}
        if cfg.warmup_data:
            w_items, w_reader = self._read(cfg.warmup_data)
            self.data["warmup"] = self._encode("warmup", w_items, w_reader)
        self.val = self._encode("val", val_items, val_reader) if val_items else None
        for name, data in self.data.items():
            if not data.examples:
                raise TrainingError(f"no usable {name} examples in {', '.join(self._files(name))}")
            note = f", {data.truncated} truncated from the left" if data.truncated else ""
            note += f", {data.skipped} skipped" if data.skipped else ""
            self.echo(f"{name} data: {len(data.examples)} examples, {data.tokens} tokens{note}")
        if self.val:
            self.echo(f"validation data: {len(self.val.examples)} examples, {self.val.tokens} tokens")
        self.serializer = self._serializer()
        # What the card says it trained on: hashed now, as read (a file changed during the run is not misreported).
        roles = [("warmup", cfg.warmup_data), ("train", cfg.train_files), ("val", [cfg.val] if cfg.val else [])]
        self.data_files = [data_file(role, path) for role, paths in roles for path in paths]
        # What --resume must find unchanged: the options that shape the run and the data it reads.
        digest = hashlib.blake2b(digest_size=16)
        for name in ("warmup", "train"):
            for e in self.data.get(name, Dataset(name, [])).examples:
                digest.update(orjson.dumps(self.objective.example_key(e)))
        options = {k: v for k, v in cfg.options().items() if k not in RESUME_FREE}
        self.fingerprint = checkpoint.fingerprint(options, digest.hexdigest())

    def _activation_shape(self) -> tuple[int, int, int]:
        """The largest micro-batch for the memory estimate behind --gradient-checkpointing's default: --batch-size
        rows of the longest sequence (a DPO pair is two), logits at the targets of every row (the positions kept are
        the union over the rows); packed, one row of them all."""
        seqs = [
            s
            for d in self.data.values()
            for e in d.examples
            for s in ((e.chosen, e.rejected) if hasattr(e, "chosen") else (e,))
        ]
        rows = self.cfg.batch_size * len(seqs) // sum(len(d.examples) for d in self.data.values())
        longest, targets = max(s.length for s in seqs), max(s.n_targets for s in seqs)
        if self.cfg.packing:
            return 1, rows * longest, rows * targets
        return rows, longest, min(longest, rows * targets)

    # -- the objective (eexp.training.objective): what the data is and what one micro-batch adds to the loss --

    def _read(self, paths: list[str]):
        """The valid records of `paths` with where they came from, and their reader (--on-error)."""
        return self.objective.read(paths, self.cfg, self.echo)

    def _encode(self, name: str, items, reader) -> Dataset:
        return self.objective.encode(name, items, reader, self.tokenizer, self.cfg)

    def _units(self, example) -> int:
        """What the loss is averaged over, per example (--loss-norm; `objective.units`)."""
        return self.objective.units(example, self.cfg)

    def _batch_loss(self, batch: list):
        """(the loss summed over the batch's units, as a tensor; its tokens; other sums to log per unit)."""
        return self.objective.batch_loss(self, batch)

    def _files(self, name: str) -> list[str]:
        return self.cfg.warmup_data if name == "warmup" else self.cfg.train_files

    def _serializer(self) -> dict | None:
        """The serializer settings the examples were made with (meta.serializer), for the card, eval and export."""
        counts = self.data["train"].serializers
        if not counts:
            self.echo(
                "warning: the training examples carry no meta.serializer; the model card records none, so "
                "eval will render states with its defaults"
            )
            return None
        if len(counts) > 1:
            self.echo(
                f"warning: the training examples were made with {len(counts)} different serializer settings; "
                "the model card records the most common"
            )
        settings = check_serializer(counts.most_common(1)[0][0], "meta.serializer of the training examples")
        # IWM's world model should learn the states as the policy will read them: a warm-up rendered otherwise (say
        # without the history the imitation examples show) is allowed, but rarely meant.
        warmup = self.data.get("warmup")
        if warmup and warmup.serializers:
            theirs = check_serializer(warmup.serializers.most_common(1)[0][0], "meta.serializer of --warmup-data")
            if theirs != settings:
                differ = ", ".join(
                    f"{k} {theirs.get(k)} against {settings.get(k)}"
                    for k in sorted(set(theirs) | set(settings))
                    if theirs.get(k) != settings.get(k)
                )
                self.echo(
                    f"warning: --warmup-data renders states with other serializer settings than the training "
                    f"data ({differ}); make both with the same options"
                )
        return settings

    def _plan(self) -> None:
        """How many updates each phase gets. --max-steps is the budget of both phases together."""
        cfg = self.cfg
        self.phases: list[tuple[str, int]] = []
        budget = cfg.max_steps
        if "warmup" in self.data:
            n = cfg.warmup_steps or cfg.warmup_epochs * updates_per_epoch(
                len(self.data["warmup"].examples), cfg.batch_size, cfg.grad_accum, self.world
            )
            if budget is not None and n >= budget:
                what = (
                    f"--warmup-steps {n}"
                    if cfg.warmup_steps
                    else f"{n} updates for {cfg.warmup_epochs} epoch(s) of --warmup-data"
                )
                raise UsageProblem(
                    f"--max-steps {budget} leaves no updates for the training data after the "
                    f"warm-up ({what}); give a larger --max-steps or a smaller --warmup-steps"
                )
            self.phases.append(("warmup", n))
        per_epoch = updates_per_epoch(len(self.data["train"].examples), cfg.batch_size, cfg.grad_accum, self.world)
        used = sum(n for _, n in self.phases)
        self.phases.append(("train", budget - used if budget is not None else cfg.epochs * per_epoch))
        self.per_epoch = {"train": per_epoch}
        if "warmup" in self.data:
            self.per_epoch["warmup"] = updates_per_epoch(
                len(self.data["warmup"].examples), cfg.batch_size, cfg.grad_accum, self.world
            )
        self.total_steps = sum(n for _, n in self.phases)
        self.log_every = cfg.log_every or (1 if self.total_steps < 1000 else 10)
        self.echo(
            "plan: "
            + ", then ".join(f"{name} {n} updates" for name, n in self.phases)
            + f" ({self.total_steps} in all)"
        )

    # -- train --

    def train(self) -> None:
        cfg = self.cfg
        start_phase = PHASES.index(self.state["phase"])
        bar = _progress(cfg.quiet or not self.main, self.total_steps, self.state["global_step"])
        try:
            if self.val is not None and self.state["global_step"] == 0:
                self._validate()
            for name, steps in self.phases:
                if PHASES.index(name) < start_phase:
                    continue
                resumed = name == self.state["phase"] and self.state["phase_step"] > 0
                if not resumed:
                    self.state.update(phase=name, phase_step=0)
                    self._new_optimizer(name, steps)
                self.echo(
                    f"phase {name}: {steps} updates over {len(self.data[name].examples)} examples"
                    + (f" (resumed at update {self.state['phase_step']})" if resumed else "")
                )
                self._train_phase(name, steps, bar)
                self.echo(f"phase {name} done: {steps} updates")
            if self.val is not None and self.state.get("last_val_step") != self.state["global_step"]:
                self._validate()
        finally:
            bar.close()

    def _lr(self, phase: str) -> float:
        """--warmup-lr for the warm-up phase where given, else --lr as resolved."""
        return self.cfg.warmup_lr if (phase == "warmup" and self.cfg.warmup_lr) else self.cfg.resolved_lr()

    def _train_phase(self, phase: str, steps: int, bar) -> None:
        cfg = self.cfg
        data = self.data[phase]
        updates = phase_updates(data, cfg, phase, self.world)
        for _ in range(self.state["phase_step"]):  # the batch plan is a pure function: skip what is done
            next(updates)
        window_tokens, window_start, window_loss, window_extra = 0, time.perf_counter(), [], []
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()
        self.model.train()
        while self.state["phase_step"] < steps:
            epoch, micro = next(updates)
            examples = [[data.examples[j] for j in batch] for batch in micro]
            n_units = sum(self._units(e) for batch in examples for e in batch)
            try:
                loss_sum, extra_sum, tokens = self._accumulate(examples, autocast)
                window_tokens += tokens
                self._clip_gradients()
                if self.acc:  # device tensors: read on the host at the next log row, not here
                    loss_sum = self.acc.reduce(self._on_device(loss_sum), "sum")
                    extra_sum = {
                        name: self.acc.reduce(self._on_device(v), "sum") for name, v in sorted(extra_sum.items())
                    }
                lr = self.scheduler.get_last_lr()[0]
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
            except Exception as e:
                if is_out_of_memory(e):
                    longest = max(x.length for batch in examples for x in batch)
                    raise TrainingError(
                        OOM_ADVICE.format(step=self.state["global_step"] + 1, batch=cfg.batch_size, length=longest)
                    ) from None
                raise
            self.state["phase_step"] += 1
            self.state["global_step"] += 1
            step = self.state["global_step"]
            loss = loss_sum / max(n_units, 1)
            window_loss.append(loss)
            window_extra.append({name: v / max(n_units, 1) for name, v in extra_sum.items()})
            bar.update(1)
            if step % self.log_every == 0 or self.state["phase_step"] == steps:
                # the one wait for the device per log row: the losses of the window, read together
                window_loss = self._floats(window_loss)
                window_extra = [dict(zip(u, self._floats(list(u.values())))) for u in window_extra]
                window_tokens_all = (
                    int(self.acc.reduce(torch.tensor(window_tokens, device=self.device), "sum"))
                    if self.acc
                    else window_tokens
                )
                elapsed = time.perf_counter() - window_start
                tps = window_tokens_all / elapsed if elapsed > 0 else 0.0
                row = {
                    "step": step,
                    "phase": phase,
                    "epoch": round(self.state["phase_step"] / self.per_epoch[phase], 4),
                    "loss": round(sum(window_loss) / len(window_loss), 6),
                    **{
                        name: round(sum(u[name] for u in window_extra) / len(window_extra), 6)
                        for name in window_extra[-1]
                    },
                    "lr": lr,
                    "tokens_per_s": round(tps, 1),
                }
                self._log(row)
                bar.set_postfix(loss=f"{row['loss']:.4f}", tok_s=f"{tps:.0f}", phase=phase)
                window_tokens, window_start, window_loss, window_extra = 0, time.perf_counter(), [], []
            end_of_epoch = self.state["phase_step"] % self.per_epoch[phase] == 0
            if self.val is not None and (
                (cfg.eval_every and step % cfg.eval_every == 0)
                or (not cfg.eval_every and phase == "train" and end_of_epoch)
                or (phase == "warmup" and self.state["phase_step"] == steps)
            ):  # right after the world model
                self._validate()
            self._checkpoint_if_due(step)
            self.model.train()

    def _accumulate(self, examples: list[list], autocast=contextlib.nullcontext()) -> tuple[float, dict, int]:
        """The forward and backward passes of this process's share of one update, its gradient added to `.grad`.

        `examples`: the update's micro-batches, every process's (a process takes every world-th). Each micro-batch's
        loss is divided by the units of the whole update (every micro-batch and process: its target tokens, or its
        examples; `_units`), never by its own, so whatever the split the gradient is that of one batch of the
        update's examples. Returns this process's loss summed over units, its other sums, and its tokens.
        """
        n_units = sum(self._units(e) for batch in examples for e in batch)
        mine = examples[self.rank :: self.world]
        # Every process runs as many forward and backward passes as the busiest one: DDP syncs gradients at each
        # backward and FSDP gathers weights at each forward, so a process short of micro-batches in the last update
        # of an epoch (3 micro-batches for 2 processes x --grad-accum 2) repeats one with zero weight.
        rounds = math.ceil(len(examples) / self.world)
        # The sums stay on the device (float64, as the floats they were once read into): reading a loss per
        # micro-batch would make the host wait for the device at every one.
        loss_sum, extra_sum, tokens_sum = 0.0, {}, 0
        for k in range(rounds):
            real = k < len(mine)
            batch = mine[k] if real else examples[0]
            with autocast:
                nll, tokens, extra = self._batch_loss(batch)
            # x world: DDP and FSDP average the processes' gradients, where the update's loss is their sum.
            loss = nll / max(n_units, 1) * self.world * (1 if real else 0)
            if self.acc:
                self.acc.backward(loss)
            else:
                loss.backward()
            if real:
                loss_sum = loss_sum + nll.detach().double()
                tokens_sum += tokens
            for name, value in extra.items():
                extra_sum[name] = extra_sum.get(name, 0.0) + (value.detach().double() if real else 0.0)
        return loss_sum, extra_sum, tokens_sum

    def _on_device(self, value) -> torch.Tensor:
        return torch.as_tensor(value, dtype=torch.float64, device=self.device)

    def _floats(self, values: list) -> list[float]:
        """Device scalars (or plain numbers) as floats, in one transfer."""
        return torch.stack([self._on_device(v) for v in values]).tolist() if values else []

    def _validate(self) -> float:
        self.model.eval()
        total, n, extra_total = 0.0, 0, {}
        lengths = [e.length for e in self.val.examples]
        order = sorted(range(len(lengths)), key=lambda j: lengths[j])
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()
        size = self.cfg.batch_size
        batches = [order[k : k + size] for k in range(0, len(order), size)]
        rounds = math.ceil(len(batches) / self.world)  # as many forward passes on every process (FSDP gathers)
        with torch.no_grad(), autocast:
            for r in range(rounds):
                k = r * self.world + self.rank
                real = k < len(batches)
                batch = [self.val.examples[j] for j in (batches[k] if real else batches[0])]
                nll, _, extra = self._batch_loss(batch)
                if real:  # summed on the device (float64), read once below
                    total = total + nll.double()
                    n += sum(self._units(e) for e in batch)
                for name, value in extra.items():  # every process has every name: one reduce each, below
                    extra_total[name] = extra_total.get(name, 0.0) + (value.double() if real else 0.0)
        if self.acc:
            total = self.acc.reduce(self._on_device(total), "sum")
            n = int(self.acc.reduce(torch.tensor(n, device=self.device), "sum"))
            extra_total = {name: self.acc.reduce(self._on_device(v), "sum") for name, v in sorted(extra_total.items())}
        total, *sums = self._floats([total, *extra_total.values()])
        extra_total = dict(zip(extra_total, sums))
        val = total / max(n, 1)
        step = self.state["global_step"]
        self.state["last_val_step"] = step
        self._log(
            {
                "step": step,
                "phase": self.state["phase"],
                "val_loss": round(val, 6),
                **{f"val_{name}": round(v / max(n, 1), 6) for name, v in extra_total.items()},
            }
        )
        self.echo(f"step {step}: validation loss {val:.4f}")
        if (
            self.cfg.keep_best
            and self.state["phase"] == "train"
            and step > 0
            and (self.state["best_val"] is None or val < self.state["best_val"])
        ):
            self.state.update(best_val=val, best_step=step)
            self._save_dir(os.path.join(self.ckpt_root, "best"), optimizer=False)
        return val

    # -- finish --

    def finish(self) -> None:
        """--keep-best: the weights of the best validation loss replace the last ones; then the trainer's final
        save."""
        if self.cfg.keep_best and self.state.get("best_step"):
            model = self.acc.unwrap_model(self.model) if self.acc else self.model
            best = os.path.join(self.ckpt_root, "best", "weights.safetensors")
            model.load_state_dict(load_file(best, device=str(self.device)), strict=False)
            self.echo(
                f"keeping the best checkpoint: step {self.state['best_step']} "
                f"(validation loss {self.state['best_val']:.4f})"
            )
        super().finish()

    def resolved_config(self) -> dict:
        """OUT/config.yaml: every option of the run as resolved (the learning rate, log interval), under the option
        names of `eexp finetune`, so `eexp finetune --config OUT/config.yaml -o OTHER` runs it again (from any
        directory: the trainer writes its local paths absolute, eexp.training.trainer.absolute_paths)."""
        cfg = self.cfg.options()
        cfg.update(
            lr=self.cfg.resolved_lr(),
            warmup_lr=self.cfg.warmup_lr or (self.cfg.resolved_lr() if self.cfg.warmup_data else None),
            log_every=self.log_every,
            gradient_checkpointing=self.model_cfg.gradient_checkpointing,
        )
        for key in ("resume", "quiet"):
            cfg.pop(key)
        return cfg

    def _phase_card(self, name: str, updates: int) -> dict:
        """What the card says of a phase trained on data: its examples, the examples per update, the epochs its
        updates made (updates / updates per epoch: a --max-steps budget may end mid-epoch) and the loss
        normalization, so a results page can state what each run trained on."""
        if name not in self.data:
            return {}
        data = self.data[name]
        return {
            "examples": len(data.examples),
            "tokens": data.tokens,
            "truncated": data.truncated,
            "skipped": data.skipped,
            "examples_per_update": examples_per_update(self.cfg, self.world),
            "epochs": round(updates / self.per_epoch[name], 4),
            "loss_norm": self.cfg.loss_norm,
            **self.objective.card(self.cfg),
        }

    def _thoughts_trained(self) -> list[int]:
        return [d.longest_thought for d in self.data.values()]

    def _data_card(self) -> list:
        return self.data_files


def _progress(disabled: bool, total: int, initial: int):
    return progress_bar(disabled, total=total, initial=initial, unit="step")


def finetune(cfg: FinetuneConfig, echo: Callable[[str], None] | None = None) -> Finetune:
    """Run a whole fine-tune; returns the recipe (its state and config) for callers and tests."""
    run = Finetune(cfg, echo)
    with checkpoint.run_folder(cfg.output, main=checkpoint.is_main_process()):
        with run.saying_where_it_stopped():
            run.setup()
            run.train()
            run.finish()
    return run
