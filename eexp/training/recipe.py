"""`eexp finetune`: imitation (IL), the implicit-world-modeling schedule (IWM) and self-reflection (SR) training.

One readable recipe in plain PyTorch (no HF Trainer), in the style of torchtune's single-device recipes:

    options (config.FinetuneConfig) -> data (data.encode: chat-template masks, shortening) -> batches
    (batches: length-grouped) -> model (model.load_model: full, LoRA or QLoRA through PEFT)
    -> Finetune.setup / train / save / resume (checkpoint) / finish -> OUT

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

The objective is a few methods (`_read`, `_encode`, `_units`, `_batch_loss`, `prepare_objective`): here the
likelihood of the target tokens; `--objective dpo` is `eexp.training.dpo.DPO`, which overrides them and keeps the
rest (batches, checkpoints, resume, validation, the final save).

Security: weights are written and read as safetensors only; optimizer, scheduler and RNG state (written by eexp
itself) go through torch.save and are read back with `torch.load(weights_only=True)`, which refuses arbitrary
pickled objects; the run state is JSON.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import random
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from typing import Callable

import orjson
import yaml

from eexp import __version__
from eexp.card import Card, check_serializer, write_card
from eexp.io import WriteError, Writer, write_atomic
from eexp.training import checkpoint
from eexp.training.batches import collate, examples_per_update, phase_updates, updates_per_epoch, weighted_nll
from eexp.training.config import PHASES, RESUME_FREE, FinetuneConfig, TrainingError, UsageProblem, from_scratch
from eexp.training.data import Dataset, encode_items, read_examples, split_validation
from eexp.training.config import check_full_fits
from eexp.training.model import (OOM_ADVICE, _accelerator, _is_oom, check_model_dir, count_parameters, enable_tf32,
                                 load_model, load_tokenizer)


class Finetune:
    """setup() -> train() -> finish(); save_checkpoint / load_checkpoint make a killed run resumable exactly."""

    def __init__(self, cfg: FinetuneConfig, echo: Callable[[str], None] | None = None):
        self.cfg = cfg
        self.echo = echo or (lambda msg: print(f"eexp: {msg}", file=sys.stderr, flush=True))
        self.ckpt_root = os.path.join(cfg.output, "checkpoints")
        self.metrics_path = os.path.join(cfg.output, "metrics.jsonl")

    # -- setup --

    def setup(self) -> None:
        import torch
        cfg = self.cfg
        self._check_options()
        self.acc = _accelerator()
        self.world = self.acc.num_processes if self.acc else 1
        self.rank = self.acc.process_index if self.acc else 0
        self.main = self.rank == 0
        if not self.main:  # one voice on stderr
            self.echo = lambda msg: None
        if self.acc:
            self.device = self.acc.device
        else:
            self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if cfg.precision == "bf16" and self.device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise UsageProblem("--precision bf16: this GPU does not support bfloat16")
        self.bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and self.device.type == "cuda"
                                                and torch.cuda.is_bf16_supported())
        enable_tf32(self.device)
        # Under FSDP each process holds a shard of the model and of the optimizer state; eexp's checkpoints hold one
        # full copy, so they (and --resume) are for one process or plain data parallelism.
        self.sharded = bool(self.acc) and "FSDP" in str(self.acc.distributed_type)
        self.fsdp2 = self.sharded and bool(getattr(self.acc, "is_fsdp2", False))
        if self.sharded and cfg.resume:
            raise UsageProblem("--resume is not supported under FSDP (sharded optimizer state)")
        self.model_cfg = self._import_base()  # --model X.gguf: its import; a Hub id: its snapshot in the HF cache
        check_model_dir(self.model_cfg.model)  # before OUT is made: a wrong --model leaves nothing behind
        self._check_memory()
        self._prepare_output()
        if self.acc:  # every process checks OUT before the first one writes into it
            self.acc.wait_for_everyone()
        self.tokenizer = load_tokenizer(self.model_cfg)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else (
            self.tokenizer.eos_token_id or 0)
        self._load_data()
        self._plan()
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        self.model = load_model(self.model_cfg, self.device, self.bf16, sharded=self.sharded)
        if self.fsdp2:
            # FSDP2 swaps the parameters for sharded ones, so accelerate prepares the model only together with an
            # optimizer; each phase's own optimizer is then made over the sharded parameters (_new_optimizer).
            import torch
            trainable = [p for p in self.model.parameters() if p.requires_grad]
            self.model, _ = self.acc.prepare(self.model, torch.optim.AdamW(trainable, lr=0.0))
        elif self.acc:
            self.model = self.acc.prepare(self.model)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.prepare_objective()  # from the starting weights, before a checkpoint replaces them
        self.state = {"phase": self.phases[0][0], "phase_step": 0, "global_step": 0, "best_val": None,
                      "best_step": None, "fingerprint": self.fingerprint}
        self.optimizer = self.scheduler = None
        if cfg.resume:
            self.load_checkpoint()

    def _import_base(self) -> FinetuneConfig:
        """The config that names the checkpoint folder to load: cfg itself; when --model is a Hub id, a copy naming
        its snapshot in the Hugging Face cache (the card records the id and the revision); when it is a GGUF file, a
        copy naming its import (made once into the cache by eexp.models.import_gguf; the main process imports, the
        others find it there). The card still records the GGUF as the base. Every resolved option (gradient
        checkpointing: on with CUDA unless turned off) is in the copy."""
        from dataclasses import replace

        from eexp.policies.files import HubError, hub_id, resolve_hub_model
        self.base_gguf = self.base_hub = None
        resolved = replace(self.cfg, gradient_checkpointing=self.checkpointing)
        if hub_id(self.cfg.model):
            try:
                self.base_hub = resolve_hub_model(self.cfg.model, trust_remote_code=self.cfg.trust_remote_code)
            except HubError as e:
                raise TrainingError(f"--model {e}") from None
            self.echo(f"base model: {self.base_hub.id} at revision {self.base_hub.revision} ({self.base_hub.path})")
            return replace(resolved, model=self.base_hub.path)
        if not (self.cfg.model.lower().endswith(".gguf") and os.path.isfile(self.cfg.model)):
            return resolved
        from eexp.models.import_gguf import import_gguf
        from eexp.models.init import ModelError
        if self.acc and not self.main:
            self.acc.wait_for_everyone()
        try:
            folder = import_gguf(self.cfg.model, echo=self.echo)
        except ModelError as e:
            raise TrainingError(f"--model: {e}") from None
        if self.acc and self.main:
            self.acc.wait_for_everyone()
        self.base_gguf = os.path.abspath(self.cfg.model)
        self.echo(f"base model: {self.cfg.model}, imported as {folder}")
        return replace(resolved, model=str(folder))

    @property
    def checkpointing(self) -> bool:
        """--gradient-checkpointing as resolved: on with a CUDA GPU unless turned off, off on CPU unless asked."""
        if self.cfg.gradient_checkpointing is not None:
            return self.cfg.gradient_checkpointing
        return self.device.type == "cuda"

    def _check_memory(self) -> None:
        """On a GPU, refuse a full fine-tune whose weights, gradients and AdamW state cannot fit (eexp.training.config
        .check_full_fits), before anything is loaded or written."""
        import torch
        if self.cfg.method != "full" or self.device.type != "cuda":
            return
        total = torch.cuda.get_device_properties(self.device).total_memory
        check_full_fits(self.cfg.model, count_parameters(self.model_cfg.model), total, self.world, self.sharded)

    def _check_options(self) -> None:
        cfg = self.cfg
        if cfg.val and cfg.val_fraction:
            raise UsageProblem("give --val FILE or --val-fraction F, not both")
        if not 0 <= cfg.val_fraction < 1:
            raise UsageProblem("--val-fraction must be in [0, 1)")
        if cfg.keep_best and not (cfg.val or cfg.val_fraction):
            raise UsageProblem("--keep-best needs validation data (--val FILE or --val-fraction F)")
        if cfg.objective != "dpo" and cfg.beta != FinetuneConfig.beta:
            raise UsageProblem("--beta is the DPO loss's; give --objective dpo")
        if cfg.adapter and cfg.lora_targets != ["all-linear"]:
            raise UsageProblem("--adapter continues an existing adapter with its own target modules; drop "
                               "--lora-targets")

    def _prepare_output(self) -> None:
        out = self.cfg.output
        if os.path.exists(out) and not os.path.isdir(out):
            raise TrainingError(f"{out}: exists and is not a directory")
        if os.path.isdir(out) and os.listdir(out) and not self.cfg.resume:
            raise TrainingError(f"{out}: already exists and is not empty (use --resume to continue that run, or "
                                "another -o)")
        if self.main:
            try:
                os.makedirs(out, exist_ok=True)
            except OSError as e:
                raise TrainingError(f"{out}: cannot create the directory ({e.strerror})") from None
            try:  # found now, not after the training
                fd, probe = tempfile.mkstemp(prefix=".eexp-write-test-", dir=out)
                os.close(fd)
                os.unlink(probe)
            except OSError as e:
                raise TrainingError(f"{out}: cannot write into this directory ({e.strerror})") from None

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
        # What --resume must find unchanged: the options that shape the run and the data it reads.
        digest = hashlib.blake2b(digest_size=16)
        for name in ("warmup", "train"):
            for e in self.data.get(name, Dataset(name, [])).examples:
                digest.update(orjson.dumps(self._example_key(e)))
        options = {k: v for k, v in asdict(cfg).items() if k not in RESUME_FREE}
        self.fingerprint = {"options": options, "data": digest.hexdigest()}

    # -- the objective: what the data is and what one micro-batch adds to the loss (eexp.training.dpo overrides) --

    def _read(self, paths: list[str]):
        """The valid records of `paths` with where they came from, and their reader (--on-error)."""
        return read_examples(paths, self.cfg.on_error, self.echo)

    def _encode(self, name: str, items, reader) -> Dataset:
        return encode_items(name, items, reader, self.tokenizer, self.cfg)

    @staticmethod
    def _example_key(example) -> list:
        """What --resume's fingerprint of the data hashes for one encoded example."""
        return [example.ids, example.weights]

    def _units(self, example) -> int:
        """What the loss is averaged over, per example (--loss-norm): its target tokens, or the example itself. An
        update's loss is the sum of `_batch_loss` over its micro-batches divided by the units of all its examples,
        so grad-accum and several processes give the gradient of one batch of the same examples."""
        return example.n_targets if self.cfg.loss_norm == "token" else 1

    def _batch_loss(self, batch: list):
        """(the loss summed over the batch's units, as a tensor; its tokens; other sums to log per unit, {name:
        tensor}). Here: weight x negative log-likelihood of the target tokens, summed (--loss-norm token), or each
        example's mean over its target tokens, summed over the examples (--loss-norm example)."""
        import torch
        ids, mask, weights = collate(batch, self.pad_id, self.device)
        per_example = weighted_nll(self.model, ids, mask, weights, per_example=True)
        if self.cfg.loss_norm == "example":
            per_example = per_example / torch.tensor([max(e.n_targets, 1) for e in batch], dtype=per_example.dtype,
                                                     device=per_example.device)
        return per_example.sum(), int(mask.sum()), {}

    def prepare_objective(self) -> None:
        """What the objective needs from the starting weights, computed before a checkpoint replaces them (DPO: the
        reference log-probabilities). Nothing here."""

    def _files(self, name: str) -> list[str]:
        return self.cfg.warmup_data if name == "warmup" else self.cfg.train_files

    def _serializer(self) -> dict | None:
        """The serializer settings the examples were made with (meta.serializer), for the card, eval and export."""
        counts = self.data["train"].serializers
        if not counts:
            self.echo("warning: the training examples carry no meta.serializer; the model card records none, so "
                      "eval will render states with its defaults")
            return None
        if len(counts) > 1:
            self.echo(f"warning: the training examples were made with {len(counts)} different serializer settings; "
                      "the model card records the most common")
        return check_serializer(counts.most_common(1)[0][0], "meta.serializer of the training examples")

    def _plan(self) -> None:
        """How many updates each phase gets. --max-steps is the budget of both phases together."""
        cfg = self.cfg
        self.phases: list[tuple[str, int]] = []
        budget = cfg.max_steps
        if "warmup" in self.data:
            n = cfg.warmup_steps or cfg.warmup_epochs * updates_per_epoch(
                len(self.data["warmup"].examples), cfg.batch_size, cfg.grad_accum, self.world)
            if budget is not None and n >= budget:
                what = (f"--warmup-steps {n}" if cfg.warmup_steps else
                        f"{n} updates for {cfg.warmup_epochs} epoch(s) of --warmup-data")
                raise UsageProblem(f"--max-steps {budget} leaves no updates for the training data after the "
                                   f"warm-up ({what}); give a larger --max-steps or a smaller --warmup-steps")
            self.phases.append(("warmup", n))
        per_epoch = updates_per_epoch(len(self.data["train"].examples), cfg.batch_size, cfg.grad_accum, self.world)
        used = sum(n for _, n in self.phases)
        self.phases.append(("train", budget - used if budget is not None else cfg.epochs * per_epoch))
        self.per_epoch = {"train": per_epoch}
        if "warmup" in self.data:
            self.per_epoch["warmup"] = updates_per_epoch(len(self.data["warmup"].examples), cfg.batch_size,
                                                         cfg.grad_accum, self.world)
        self.total_steps = sum(n for _, n in self.phases)
        self.log_every = cfg.log_every or (1 if self.total_steps < 1000 else 10)
        self.echo("plan: " + ", then ".join(f"{name} {n} updates" for name, n in self.phases)
                  + f" ({self.total_steps} in all)")

    def _new_optimizer(self, phase: str, steps: int) -> None:
        """A fresh optimizer and schedule for each phase (the IWM schedule restarts both)."""
        import torch
        from transformers import get_scheduler
        lr = self.cfg.warmup_lr if (phase == "warmup" and self.cfg.warmup_lr) else self.cfg.resolved_lr()
        decay = [p for p in self.params if p.ndim >= 2]
        no_decay = [p for p in self.params if p.ndim < 2]
        groups = [{"params": decay, "weight_decay": self.cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        self.optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=(0.9, 0.999))
        if self.acc and not self.fsdp2:  # under FSDP2 a plain optimizer over the sharded parameters (see setup)
            self.optimizer = self.acc.prepare(self.optimizer)
        self.scheduler = get_scheduler(self.cfg.lr_scheduler, self.optimizer,
                                       num_warmup_steps=round(self.cfg.lr_warmup_ratio * steps),
                                       num_training_steps=steps)

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
                self.echo(f"phase {name}: {steps} updates over {len(self.data[name].examples)} examples"
                          + (f" (resumed at update {self.state['phase_step']})" if resumed else ""))
                self._train_phase(name, steps, bar)
                self.echo(f"phase {name} done: {steps} updates")
            if self.val is not None and self.state.get("last_val_step") != self.state["global_step"]:
                self._validate()
        finally:
            bar.close()

    def _train_phase(self, phase: str, steps: int, bar) -> None:
        import torch
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
                if self.acc:
                    self.acc.clip_grad_norm_(self.params, cfg.max_grad_norm)
                    loss_sum = float(self.acc.reduce(torch.tensor(loss_sum, device=self.device), "sum"))
                    extra_sum = {name: float(self.acc.reduce(torch.tensor(v, device=self.device), "sum"))
                                 for name, v in sorted(extra_sum.items())}
                    window_tokens_all = int(self.acc.reduce(torch.tensor(window_tokens, device=self.device), "sum"))
                else:
                    torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm)
                    window_tokens_all = window_tokens
                lr = self.scheduler.get_last_lr()[0]
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
            except Exception as e:
                if _is_oom(e):
                    longest = max(x.length for batch in examples for x in batch)
                    raise TrainingError(OOM_ADVICE.format(step=self.state["global_step"] + 1,
                                                          batch=cfg.batch_size, length=longest)) from None
                raise
            self.state["phase_step"] += 1
            self.state["global_step"] += 1
            step = self.state["global_step"]
            loss = loss_sum / max(n_units, 1)
            window_loss.append(loss)
            window_extra.append({name: v / max(n_units, 1) for name, v in extra_sum.items()})
            bar.update(1)
            if step % self.log_every == 0 or self.state["phase_step"] == steps:
                elapsed = time.perf_counter() - window_start
                tps = window_tokens_all / elapsed if elapsed > 0 else 0.0
                row = {"step": step, "phase": phase, "epoch": round(self.state["phase_step"] /
                                                                    self.per_epoch[phase], 4),
                       "loss": round(sum(window_loss) / len(window_loss), 6),
                       **{name: round(sum(u[name] for u in window_extra) / len(window_extra), 6)
                          for name in window_extra[-1]},
                       "lr": lr, "tokens_per_s": round(tps, 1)}
                self._log(row)
                bar.set_postfix(loss=f"{row['loss']:.4f}", tok_s=f"{tps:.0f}", phase=phase)
                window_tokens, window_start, window_loss, window_extra = 0, time.perf_counter(), [], []
            end_of_epoch = self.state["phase_step"] % self.per_epoch[phase] == 0
            if self.val is not None and (
                    (cfg.eval_every and step % cfg.eval_every == 0)
                    or (not cfg.eval_every and phase == "train" and end_of_epoch)
                    or (phase == "warmup" and self.state["phase_step"] == steps)):  # right after the world model
                self._validate()
            if step % cfg.save_every == 0 and step < self.total_steps and not self.sharded:
                self.save_checkpoint()
            self.model.train()

    def _accumulate(self, examples: list[list], autocast=contextlib.nullcontext()) -> tuple[float, dict, int]:
        """The forward and backward passes of this process's share of one update, its gradient added to `.grad`.

        `examples`: the update's micro-batches, every process's (a process takes every world-th). Each micro-batch's
        loss is divided by the units of the whole update (every micro-batch and process: its target tokens, or its
        examples; `_units`), never by its own, so whatever the split the gradient is that of one batch of the
        update's examples. Returns this process's loss summed over units, its other sums, and its tokens.
        """
        n_units = sum(self._units(e) for batch in examples for e in batch)
        mine = examples[self.rank::self.world]
        # Every process runs as many forward and backward passes as the busiest one: DDP syncs gradients at each
        # backward and FSDP gathers weights at each forward, so a process short of micro-batches in the last update
        # of an epoch (3 micro-batches for 2 processes x --grad-accum 2) repeats one with zero weight.
        rounds = math.ceil(len(examples) / self.world)
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
            loss_sum += float(nll.detach()) if real else 0.0
            tokens_sum += tokens if real else 0
            for name, value in extra.items():
                extra_sum[name] = extra_sum.get(name, 0.0) + (float(value) if real else 0.0)
        return loss_sum, extra_sum, tokens_sum

    def _validate(self) -> float:
        import torch
        self.model.eval()
        total, n, extra_total = 0.0, 0, {}
        lengths = [e.length for e in self.val.examples]
        order = sorted(range(len(lengths)), key=lambda j: lengths[j])
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()
        size = self.cfg.batch_size
        batches = [order[k:k + size] for k in range(0, len(order), size)]
        rounds = math.ceil(len(batches) / self.world)  # as many forward passes on every process (FSDP gathers)
        with torch.no_grad(), autocast:
            for r in range(rounds):
                k = r * self.world + self.rank
                real = k < len(batches)
                batch = [self.val.examples[j] for j in (batches[k] if real else batches[0])]
                nll, _, extra = self._batch_loss(batch)
                if real:
                    total += float(nll)
                    n += sum(self._units(e) for e in batch)
                for name, value in extra.items():   # every process has every name: one reduce each, below
                    extra_total[name] = extra_total.get(name, 0.0) + (float(value) if real else 0.0)
        if self.acc:
            total = float(self.acc.reduce(torch.tensor(total, device=self.device), "sum"))
            n = int(self.acc.reduce(torch.tensor(n, device=self.device), "sum"))
            extra_total = {name: float(self.acc.reduce(torch.tensor(v, device=self.device), "sum"))
                           for name, v in sorted(extra_total.items())}
        val = total / max(n, 1)
        step = self.state["global_step"]
        self.state["last_val_step"] = step
        self._log({"step": step, "phase": self.state["phase"], "val_loss": round(val, 6),
                   **{f"val_{name}": round(v / max(n, 1), 6) for name, v in extra_total.items()}})
        self.echo(f"step {step}: validation loss {val:.4f}")
        if self.cfg.keep_best and self.state["phase"] == "train" and step > 0 and (
                self.state["best_val"] is None or val < self.state["best_val"]):
            self.state.update(best_val=val, best_step=step)
            self._save_dir(os.path.join(self.ckpt_root, "best"), optimizer=False)
        return val

    def _log(self, row: dict) -> None:
        if self.main:  # whole lines even when the disk fills up (`OUT/metrics.jsonl: cannot write (...)`)
            writer = Writer(self.metrics_path, append=True)
            try:
                writer.write(row)
            finally:
                writer.close()

    # -- save / resume --

    def _trainable_state(self) -> dict:
        """The weights training changes (all of them, or the LoRA adapter), detached and contiguous for safetensors."""
        if self.acc:  # gathered on the main process, under the model's own (unwrapped) names
            state = self.acc.get_state_dict(self.model)
            keep = (lambda n: True) if self.cfg.method == "full" else (lambda n: "lora_" in n)
            out, seen = {}, set()
            for n, t in state.items():  # tied weights (embeddings = output layer) are saved once
                if keep(n) and t.data_ptr() not in seen:
                    seen.add(t.data_ptr())
                    out[n] = t.detach().to("cpu").contiguous()
            return out
        return {n: p.detach().to("cpu").contiguous() for n, p in self.model.named_parameters() if p.requires_grad}

    def _save_dir(self, final: str, optimizer: bool = True) -> None:
        weights = self._trainable_state()  # every process takes part in gathering them; the main one writes
        if self.main:
            checkpoint.save(self.ckpt_root, final, weights, self.state, *(
                (self.optimizer, self.scheduler) if optimizer else ()))

    def _checkpoints(self) -> list[str]:
        return checkpoint.checkpoints(self.ckpt_root)

    def save_checkpoint(self) -> None:
        self._save_dir(os.path.join(self.ckpt_root, f"step-{self.state['global_step']}"))
        if self.main:
            checkpoint.prune(self.ckpt_root, self.cfg.keep_checkpoints)

    def load_checkpoint(self) -> None:
        found = self._checkpoints()
        if not found:
            if os.path.exists(os.path.join(self.cfg.output, "config.yaml")):
                raise TrainingError(f"{self.cfg.output}: this run already finished; nothing to resume")
            self.echo(f"no checkpoint in {self.ckpt_root}: starting from the beginning")
            if os.path.exists(self.metrics_path) and self.main:
                os.remove(self.metrics_path)
            return
        path = found[-1]
        state = checkpoint.read_state(path)
        checkpoint.check_fingerprint(state.get("fingerprint") or {}, self.fingerprint, path)
        checkpoint.load_weights(path, self.acc.unwrap_model(self.model) if self.acc else self.model, self.device)
        self.state = state
        self._new_optimizer(state["phase"], dict(self.phases)[state["phase"]])
        checkpoint.load_optimizer(path, self.optimizer, self.scheduler, self.device)
        if self.main:
            checkpoint.trim_metrics(self.metrics_path, state["global_step"])
        self.echo(f"resumed from {path} (step {state['global_step']} of {self.total_steps})")

    # -- finish --

    def finish(self) -> None:
        """OUT: the model (or adapter), tokenizer, card.yaml, config.yaml, metrics.jsonl; then model.gguf if asked."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        cfg = self.cfg
        model = self.acc.unwrap_model(self.model) if self.acc else self.model
        if cfg.keep_best and self.state.get("best_step"):
            best = os.path.join(self.ckpt_root, "best", "weights.safetensors")
            model.load_state_dict(load_file(best, device=str(self.device)), strict=False)
            self.echo(f"keeping the best checkpoint: step {self.state['best_step']} "
                      f"(validation loss {self.state['best_val']:.4f})")
        state = without_tied_copies(self.acc.get_state_dict(self.model), model) if self.acc else None
        dtype = self.saved_dtype()
        cast = cfg.method == "full" and self.main and dtype is not None
        if cast:
            state = cast_state(state if state is not None else model.state_dict(), dtype)
        if self.main:
            try:
                model.save_pretrained(cfg.output, state_dict=state)
                if cast:  # config.json says what the file holds (vLLM and transformers load that by default)
                    model.config.dtype = dtype
                    model.config.save_pretrained(cfg.output)
                self.tokenizer.save_pretrained(cfg.output)
                if cfg.method != "full":  # policies find the base model from the adapter config
                    self._point_adapter_at_base()
                write_card(cfg.output, self.card())
                write_atomic(os.path.join(cfg.output, "config.yaml"), yaml.safe_dump(
                    self.resolved_config(), sort_keys=False, allow_unicode=True).encode())  # last: "finished"
            except (OSError, SafetensorError, WriteError) as e:
                why = checkpoint.why(e)
                previous = self._checkpoints()
                then = (f"the last checkpoint {previous[-1]} is intact (free space, then --resume)" if previous
                        else "no checkpoint was kept (free space, then --resume starts the run over)")
                raise TrainingError(f"cannot write the final model to {cfg.output}: {why}; {then}") from None
            shutil.rmtree(self.ckpt_root, ignore_errors=True)
            self.echo(f"wrote {cfg.output} ({'full model' if cfg.method == 'full' else 'LoRA adapter'}, "
                      f"{self.state['global_step']} updates)")
        if cfg.export_gguf and self.main:
            self._export()

    def saved_dtype(self):
        """The dtype a full model is saved in (--save-dtype; auto: bf16 when trained in bf16), or None for fp32 (the
        weights as they are)."""
        import torch
        wanted = self.cfg.save_dtype if self.cfg.save_dtype != "auto" else ("bf16" if self.bf16 else "fp32")
        return torch.bfloat16 if wanted == "bf16" else None

    def _point_adapter_at_base(self) -> None:
        path = os.path.join(self.cfg.output, "adapter_config.json")
        with open(path, "rb") as f:
            conf = orjson.loads(f.read())
        if self.base_hub:  # the Hub id and its commit, as PEFT, vLLM and eexp's policies read them
            conf["base_model_name_or_path"], conf["revision"] = self.base_hub.id, self.base_hub.revision
        else:
            conf["base_model_name_or_path"] = os.path.abspath(self.model_cfg.model)  # a GGUF's import folder
        write_atomic(path, orjson.dumps(conf, option=orjson.OPT_INDENT_2) + b"\n")

    def resolved_config(self) -> dict:
        """OUT/config.yaml: every option of the run as resolved (the learning rate, log interval), under the option
        names of `eexp finetune`, so `eexp finetune --config OUT/config.yaml -o OTHER` runs it again."""
        cfg = asdict(self.cfg)
        cfg.update(lr=self.cfg.resolved_lr(), warmup_lr=self.cfg.warmup_lr or (self.cfg.resolved_lr()
                   if self.cfg.warmup_data else None), log_every=self.log_every,
                   gradient_checkpointing=self.model_cfg.gradient_checkpointing)
        for key in ("resume", "quiet"):
            cfg.pop(key)
        return cfg

    def card(self) -> Card:
        """OUT/card.yaml: what the model is and how it was made (eexp.card)."""
        from eexp.policies.files import content_hash
        from eexp.card import read_card
        base = self.base_gguf or (self.base_hub.id if self.base_hub else os.path.abspath(self.cfg.model))
        data = getattr(self, "data", {})  # RL has phases but no datasets
        phases = [{"name": name, "updates": n, **(self._phase_card(name, n) if name in data else {})}
                  for name, n in self.phases]
        return Card(command=self.resolved_config().get("command", "finetune"),  # RL's config names its command
                    eexp_version=__version__, serializer=self.serializer, base_model=base,
                    base_sha256=content_hash([self.base_hub.path if self.base_hub else base]),
                    base_import=os.path.abspath(self.model_cfg.model) if self.base_gguf else None,
                    base_revision=self.base_hub.revision if self.base_hub else None,
                    from_scratch=from_scratch(self.model_cfg.model), method=self.cfg.method,
                    precision="bf16" if self.bf16 else "fp32", phases=phases, updates=self.state["global_step"],
                    best_step=self.state.get("best_step"), best_val_loss=self.state.get("best_val"),
                    # the longest thought trained, here or before (a base that was itself trained on SR examples)
                    thought_tokens=max([d.longest_thought for d in data.values()]
                                       + [read_card(self.model_cfg.model).thought_tokens or 0]) or None)

    def _phase_card(self, name: str, updates: int) -> dict:
        """What the card says of a phase trained on data: its examples, the examples per update, the epochs its
        updates made (updates / updates per epoch: a --max-steps budget may end mid-epoch) and the loss
        normalization, so a results page can state what each run trained on."""
        data = self.data[name]
        return {"examples": len(data.examples), "tokens": data.tokens, "truncated": data.truncated,
                "skipped": data.skipped, "examples_per_update": examples_per_update(self.cfg, self.world),
                "epochs": round(updates / self.per_epoch[name], 4), "loss_norm": self.cfg.loss_norm}

    def _export(self) -> None:
        try:
            from eexp.models.export import export_gguf
        except ImportError:
            raise TrainingError("--export-gguf: GGUF export is not available in this installation "
                                "(eexp.models.export)") from None
        from eexp.models.init import ModelError
        out = os.path.join(self.cfg.output, "model.gguf")
        try:
            if self.cfg.method == "full":
                export_gguf(self.cfg.output, out, self.cfg.quant)
            else:
                export_gguf(self.model_cfg.model, out, self.cfg.quant, adapter=self.cfg.output)
        except ModelError as e:
            raise TrainingError(f"--export-gguf: {e} (the trained model in {self.cfg.output} is complete; "
                                "`eexp export` can be run again)") from None
        self.echo(f"wrote {out} ({self.cfg.quant})")


def without_tied_copies(state: dict, model) -> dict:
    """A gathered state dict (FSDP's holds tied weights as separate tensors) without the copies of tied weights
    (the output layer that is the input embedding), so they are saved once, as transformers saves them."""
    import torch
    for target, source in dict(getattr(model, "all_tied_weights_keys", None) or {}).items():
        if target in state and source in state and torch.equal(state[target], state[source]):
            del state[target]
    return state


def cast_state(state: dict, dtype) -> dict:
    """The floating-point tensors of a state dict in `dtype`; tensors that shared storage (tied embeddings) still
    share it, so they are saved once."""
    cast, out = {}, {}
    for name, t in state.items():
        if not t.is_floating_point():
            out[name] = t
            continue
        key = (t.data_ptr(), t.dtype, tuple(t.shape))
        if key not in cast:
            cast[key] = t.detach().to(device="cpu", dtype=dtype)
        out[name] = cast[key]
    return out


def _progress(disabled: bool, total: int, initial: int):
    from eexp.io import progress_bar
    return progress_bar(disabled, total=total, initial=initial, unit="step")


def finetune(cfg: FinetuneConfig, echo: Callable[[str], None] | None = None) -> Finetune:
    """Run a whole fine-tune; returns the recipe (its state and config) for callers and tests."""
    if cfg.objective == "dpo":
        from eexp.training.dpo import DPO
        run = DPO(cfg, echo)
    else:
        run = Finetune(cfg, echo)
    run.setup()
    run.train()
    run.finish()
    return run
