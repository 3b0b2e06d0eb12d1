"""`Trainer`: what every training recipe of eexp shares, whatever it optimizes.

The trainer owns the device and precision (one process, or the processes of `accelerate launch`), the model to
train (a checkpoint folder, a Hub id through the Hugging Face cache, or a GGUF imported once; full, LoRA or QLoRA),
the optimizer and learning-rate schedule, gradient clipping, metrics.jsonl, the resumable checkpoints and --resume,
and the final save (model or adapter, tokenizer, card.yaml, config.yaml, --export-gguf). Its options are
`TrainerConfig` (eexp.training.config), which each recipe's config extends. What it optimizes is an objective
object, named by the recipe's option (its registry: `OBJECTIVES`, eexp.training.config; `REWARDS`, eexp.rl.config):

    eexp.training.recipe.Finetune   over examples: `SFT` (eexp.training.recipe) or `DPO` (eexp.training.dpo)
    eexp.rl.recipe.RL               over its own samples: GRPO over episodes (eexp.rl.rollouts.Episodes) or
                                    actions at expert states (eexp.rl.expert_step.ExpertStep)

A recipe (a subclass) says how its run is set up and trained: `setup` (calling `_runtime`, `_import_base`,
`_prepare_output`, `_load_tokenizer`, `_load_model`), `train` (with `_clip_gradients`, `_checkpoint_if_due`), and the
few things the optimizer and the final save ask of it: `_lr` (a phase's learning rate), `resolved_config` (its
config.yaml), `_phase_card` (what the card says of each phase) and `_thoughts_trained`.

Security: weights are written and read as safetensors only; optimizer, scheduler and RNG state (written by eexp
itself) go through torch.save and are read back with `torch.load(weights_only=True)`, which refuses arbitrary
pickled objects; the run state is JSON.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import sys
import tempfile
from dataclasses import replace
from typing import Callable

import orjson
import torch
import yaml
from safetensors import SafetensorError
from transformers import AutoConfig, get_scheduler

from eexp import __version__
from eexp.card import Card, read_card, write_card
from eexp.errors import HubError, ModelError, Terminated, TrainingError, WriteError
from eexp.files import content_hash, hub_id, resolve_hub_model
from eexp.io import Writer, write_atomic
from eexp.models.export import export_gguf
from eexp.models.import_gguf import import_gguf
from eexp.models.llama_converter import converter_dir
from eexp.training import checkpoint
from eexp.training.config import TrainerConfig, check_full_fits, from_scratch
from eexp.training.machine import machine_card
from eexp.training.model import (
    checkpointing_default,
    count_parameters,
    enable_tf32,
    launched_accelerator,
    load_model,
    load_tokenizer,
    training_memory,
)


class Trainer:
    """Device, precision, model, optimizer and schedule, checkpoints and --resume, metrics, the final save."""

    def __init__(self, cfg: TrainerConfig, echo: Callable[[str], None] | None = None):
        self.cfg = cfg
        self.echo = echo or (lambda msg: print(f"eexp: {msg}", file=sys.stderr, flush=True))
        self.ckpt_root = os.path.join(cfg.output, "checkpoints")
        self.metrics_path = os.path.join(cfg.output, "metrics.jsonl")
        if cfg.export_gguf:  # refused now, not after the training: the converter is installed apart (it reaches PyPI)
            try:
                converter_dir()
            except ModelError as e:
                raise TrainingError(f"--export-gguf: {e}") from None

    # -- setup --

    def _runtime(self, distributed: bool = True) -> None:
        """Where the run computes: the processes of `accelerate launch` when there are (`distributed`), their rank
        (only the main process speaks), the device, bf16 autocast (--precision; auto: on a GPU that supports it),
        TF32, and whether the model is sharded (FSDP)."""
        cfg = self.cfg
        self.acc = launched_accelerator() if distributed else None
        self.world = self.acc.num_processes if self.acc else 1
        self.rank = self.acc.process_index if self.acc else 0
        self.main = self.rank == 0
        if not self.main:  # one voice on stderr
            self.echo = lambda msg: None
        if self.acc:
            self.device = self.acc.device
        else:
            self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.bf16 = cfg.precision == "bf16" or (
            cfg.precision == "auto" and self.device.type == "cuda" and torch.cuda.is_bf16_supported()
        )
        enable_tf32(self.device)
        # Under FSDP each process holds a shard of the model and of the optimizer state; eexp's checkpoints hold one
        # full copy, so they (and --resume) are for one process or plain data parallelism.
        self.sharded = bool(self.acc) and "FSDP" in str(self.acc.distributed_type)
        self.fsdp2 = self.sharded and bool(getattr(self.acc, "is_fsdp2", False))

    def _import_base(self) -> TrainerConfig:
        """The config that names the checkpoint folder to load: cfg itself; when --model is a Hub id, a copy naming
        its snapshot in the Hugging Face cache (the card records the id and the revision); when it is a GGUF file, a
        copy naming its import (made once into the cache by eexp.models.import_gguf; the main process imports, the
        others find it there). The card still records the GGUF as the base. Gradient checkpointing is resolved when the
        model is loaded (`_load_model`)."""
        self.base_gguf = self.base_hub = None
        resolved = self.cfg
        if hub_id(self.cfg.model):
            try:
                self.base_hub = resolve_hub_model(self.cfg.model, trust_remote_code=self.cfg.trust_remote_code)
            except HubError as e:
                raise TrainingError(f"--model {e}") from None
            self.echo(f"base model: {self.base_hub.id} at revision {self.base_hub.revision} ({self.base_hub.path})")
            return replace(resolved, model=self.base_hub.path)
        if not (self.cfg.model.lower().endswith(".gguf") and os.path.isfile(self.cfg.model)):
            return resolved
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

    def _checkpointing(self) -> tuple[bool, str]:
        """--gradient-checkpointing as resolved, and why: as asked; else off on CPU; else on a GPU, on only where
        the step's memory without it, estimated from the model's shape and the largest micro-batch
        (`_activation_shape`), would not fit the GPU's free memory (eexp.training.model.training_memory); a recipe
        that cannot say its micro-batches keeps it on."""
        cfg = self.cfg
        if cfg.gradient_checkpointing is not None:
            return cfg.gradient_checkpointing, (
                "on: asked (--gradient-checkpointing)"
                if cfg.gradient_checkpointing
                else "off: asked (--no-gradient-checkpointing)"
            )
        if self.device.type != "cuda":
            return False, "off: not on a CUDA GPU (the default there)"
        shape = self._activation_shape()
        if shape is None:
            return True, "on: the default on a GPU for this command (no estimate of its micro-batches)"
        rows, row_tokens, kept = shape
        try:
            config = AutoConfig.from_pretrained(self.model_cfg.model, trust_remote_code=cfg.trust_remote_code)
        except (OSError, ValueError) as e:
            return True, f"on: the model's shape is unknown ({str(e).splitlines()[0] if str(e) else e})"
        parts = training_memory(
            config,
            count_parameters(self.model_cfg.model),
            method=cfg.method,
            bf16=self.bf16,
            rows=rows,
            row_tokens=row_tokens,
            kept=kept,
            lora_rank=cfg.lora_rank,
            attn=cfg.attn_implementation,
            processes=self.world if self.sharded else 1,
        )
        free = torch.cuda.mem_get_info(self.device)[0]
        return checkpointing_default(parts, free)

    def _activation_shape(self) -> tuple[int, int, int] | None:
        """(rows, tokens a row, positions whose logits are computed a row) of the recipe's largest micro-batch, for
        the memory estimate behind the default of --gradient-checkpointing; None: unknown (the recipe's)."""
        return None

    def _check_memory(self) -> None:
        """On a GPU, refuse a full fine-tune whose weights, gradients and AdamW state cannot fit (eexp.training.config
        .check_full_fits), before anything is loaded or written."""
        if self.cfg.method != "full" or self.device.type != "cuda":
            return
        total = torch.cuda.get_device_properties(self.device).total_memory
        check_full_fits(self.cfg.model, count_parameters(self.model_cfg.model), total, self.world, self.sharded)

    def _prepare_output(self) -> None:
        out = self.cfg.output
        if os.path.exists(out) and not os.path.isdir(out):
            raise TrainingError(f"{out}: exists and is not a directory")
        if os.path.isdir(out) and os.listdir(out) and not self.cfg.resume:
            raise TrainingError(
                f"{out}: already exists and is not empty (use --resume to continue that run, or another -o)"
            )
        if self.acc:  # every process has checked OUT before the main one writes into it (its write probe included)
            self.acc.wait_for_everyone()
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

    def _load_tokenizer(self) -> None:
        """The tokenizer of the model to train, and the id that pads a batch (its pad token, else end of sequence)."""
        self.tokenizer = load_tokenizer(self.model_cfg)
        self.pad_id = (
            self.tokenizer.pad_token_id
            if self.tokenizer.pad_token_id is not None
            else (self.tokenizer.eos_token_id or 0)
        )

    def _load_model(self):
        """The model to train (eexp.training.model.load_model: full, LoRA or QLoRA), made after seeding torch and
        `random` with --seed (a fresh LoRA adapter's initial weights come from it)."""
        on, self.checkpointing_why = self._checkpointing()
        self.model_cfg = replace(self.model_cfg, gradient_checkpointing=on)
        if self.device.type == "cuda":  # on CPU nothing was weighed: the card alone says why
            self.echo(f"gradient checkpointing {self.checkpointing_why}")
        torch.manual_seed(self.cfg.seed)
        random.seed(self.cfg.seed)
        return load_model(self.model_cfg, self.device, self.bf16, sharded=self.sharded)

    # -- optimizer and schedule --

    def _new_optimizer(self, phase: str, steps: int) -> None:
        """A fresh optimizer and schedule for each phase (the IWM schedule restarts both)."""
        lr = self._lr(phase)
        decay = [p for p in self.params if p.ndim >= 2]
        no_decay = [p for p in self.params if p.ndim < 2]
        groups = [{"params": decay, "weight_decay": self.cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        self.optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=(0.9, 0.999))
        if self.acc and not self.fsdp2:  # under FSDP2 a plain optimizer over the sharded parameters (see setup)
            self.optimizer = self.acc.prepare(self.optimizer)
        self.scheduler = get_scheduler(
            self.cfg.lr_scheduler,
            self.optimizer,
            num_warmup_steps=round(self.cfg.lr_warmup_ratio * steps),
            num_training_steps=steps,
        )

    def _clip_gradients(self) -> None:
        """Clip the gradient to --max-grad-norm (over every process's, under accelerate)."""
        if self.acc:
            self.acc.clip_grad_norm_(self.params, self.cfg.max_grad_norm)
        else:
            torch.nn.utils.clip_grad_norm_(self.params, self.cfg.max_grad_norm)

    # -- metrics, save / resume --

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
            checkpoint.save(
                self.ckpt_root, final, weights, self.state, *((self.optimizer, self.scheduler) if optimizer else ())
            )

    def _checkpoints(self) -> list[str]:
        return checkpoint.checkpoints(self.ckpt_root)

    def _checkpoint_if_due(self, step: int) -> None:
        """A resumable checkpoint every --save-every steps (the recipe's), but after the last (the final save comes
        then) and under FSDP (eexp's checkpoints hold one full copy)."""
        if step % self.cfg.save_every == 0 and step < self.total_steps and not self.sharded:
            self.save_checkpoint()

    def save_checkpoint(self) -> None:
        self._save_dir(os.path.join(self.ckpt_root, f"step-{self.state['global_step']}"))
        if self.main:
            checkpoint.prune(self.ckpt_root, self.cfg.keep_checkpoints)

    def load_checkpoint(self) -> None:
        found = self._checkpoints()
        if not found:
            if os.path.exists(os.path.join(self.cfg.output, "config.yaml")):
                raise TrainingError(
                    f"{self.cfg.output}: this run already finished; nothing to resume (delete it, or give another -o, "
                    "to train again)"
                )
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
        """OUT: the model (or adapter), tokenizer, card.yaml, config.yaml, metrics.jsonl; then model.gguf if asked.

        The final model is written whole into OUT/.tmp-final first, then its files are renamed into OUT, the files
        that make OUT a model last (config.json or adapter_config.json, then config.yaml, the "finished" mark): a run
        killed while it writes several GB of weights leaves no folder that loads as a model, but its checkpoints,
        from which --resume finishes it (as checkpoints are written: eexp.training.checkpoint.save)."""
        cfg = self.cfg
        model = self.acc.unwrap_model(self.model) if self.acc else self.model
        state = without_tied_copies(self.acc.get_state_dict(self.model), model) if self.acc else None
        dtype = self.saved_dtype()
        cast = cfg.method == "full" and self.main and dtype is not None
        if cast:
            state = cast_state(state if state is not None else model.state_dict(), dtype)
        if self.main:
            tmp = os.path.join(cfg.output, FINAL_TMP)
            try:
                shutil.rmtree(tmp, ignore_errors=True)  # a killed run's half-written one
                os.makedirs(tmp)
                model.save_pretrained(tmp, state_dict=state)
                if cast:  # config.json says what the file holds (vLLM and transformers load that by default)
                    model.config.dtype = dtype
                    model.config.save_pretrained(tmp)
                self.tokenizer.save_pretrained(tmp)
                if cfg.method != "full":  # policies find the base model from the adapter config
                    self._point_adapter_at_base(tmp)
                write_card(tmp, self.card())
                config = absolute_paths(self.resolved_config())  # replayed from anywhere: `absolute_paths`
                write_atomic(
                    os.path.join(tmp, "config.yaml"),
                    yaml.safe_dump(config, sort_keys=False, allow_unicode=True).encode(),
                )
                move_final(tmp, cfg.output)
            except (OSError, SafetensorError, WriteError) as e:
                shutil.rmtree(tmp, ignore_errors=True)
                why = checkpoint.why(e)
                previous = self._checkpoints()
                then = (
                    f"the last checkpoint {previous[-1]} is intact (free space, then --resume)"
                    if previous
                    else "no checkpoint was kept (free space, then --resume starts the run over)"
                )
                raise TrainingError(f"cannot write the final model to {cfg.output}: {why}; {then}") from None
            shutil.rmtree(self.ckpt_root, ignore_errors=True)
            self.echo(
                f"wrote {cfg.output} ({'full model' if cfg.method == 'full' else 'LoRA adapter'}, "
                f"{self.state['global_step']} updates)"
            )
        if cfg.export_gguf and self.main:
            self._export()

    @contextlib.contextmanager
    def saying_where_it_stopped(self):
        """Around setup, train and finish: a run stopped early (Ctrl-C, SIGTERM) says on stderr which checkpoint it
        leaves and that --resume continues from it (stopped_note), then stops as it was stopping."""
        try:
            yield
        except (KeyboardInterrupt, Terminated):
            note = self.stopped_note()
            if note:
                self.echo(note)
            raise

    def stopped_note(self) -> str | None:
        """What a run stopped early (Ctrl-C) says on stderr when it leaves a checkpoint: which one, and that --resume
        continues from it; None when it leaves none."""
        found = self._checkpoints() if self.main else []
        if not found:
            return None
        return f"stopped; {found[-1]} holds the last checkpoint: the same command with --resume continues from it"

    def saved_dtype(self):
        """The dtype a full model is saved in (--save-dtype; auto: bf16 when trained in bf16), or None for fp32 (the
        weights as they are)."""
        wanted = self.cfg.save_dtype if self.cfg.save_dtype != "auto" else ("bf16" if self.bf16 else "fp32")
        return torch.bfloat16 if wanted == "bf16" else None

    def _point_adapter_at_base(self, folder: str) -> None:
        path = os.path.join(folder, "adapter_config.json")
        with open(path, "rb") as f:
            conf = orjson.loads(f.read())
        if self.base_hub:  # the Hub id and its commit, as PEFT, vLLM and eexp's policies read them
            conf["base_model_name_or_path"], conf["revision"] = self.base_hub.id, self.base_hub.revision
        else:
            conf["base_model_name_or_path"] = os.path.abspath(self.model_cfg.model)  # a GGUF's import folder
        write_atomic(path, orjson.dumps(conf, option=orjson.OPT_INDENT_2) + b"\n")

    def card(self) -> Card:
        """OUT/card.yaml: what the model is and how it was made (eexp.card)."""
        base = self.base_gguf or (self.base_hub.id if self.base_hub else os.path.abspath(self.cfg.model))
        phases = [{"name": name, "updates": n, **self._phase_card(name, n)} for name, n in self.phases]
        return Card(
            command=self.resolved_config().get("command", "finetune"),  # RL's config names its command
            eexp_version=__version__,
            serializer=self.serializer,
            base_model=base,
            base_sha256=content_hash([self.base_hub.path if self.base_hub else base]),
            base_import=os.path.abspath(self.model_cfg.model) if self.base_gguf else None,
            base_revision=self.base_hub.revision if self.base_hub else None,
            from_scratch=from_scratch(self.model_cfg.model),
            method=self.cfg.method,
            precision="bf16" if self.bf16 else "fp32",
            gradient_checkpointing=self.checkpointing_why,
            phases=phases,
            updates=self.state["global_step"],
            best_step=self.state.get("best_step"),
            best_val_loss=self.state.get("best_val"),
            data=self._data_card(),
            # the longest thought trained, here or before (a base that was itself trained on SR examples)
            thought_tokens=max(self._thoughts_trained() + [read_card(self.model_cfg.model).thought_tokens or 0])
            or None,
            machine=machine_card(),
        )

    # -- what the optimizer and the final save ask of the recipe --

    def _lr(self, phase: str) -> float:
        """The peak learning rate of a phase's optimizer: --lr as resolved (`TrainerConfig.resolved_lr`)."""
        return self.cfg.resolved_lr()

    def resolved_config(self) -> dict:
        """OUT/config.yaml: every option of the run as resolved."""
        raise NotImplementedError

    def _phase_card(self, name: str, updates: int) -> dict:
        """What the card says of a phase beyond its name and updates."""
        return {}

    def _data_card(self) -> list | None:
        """The card's data: the files trained (and validated) on, with their sha256 (eexp.card.data_file); None where
        the recipe reads none."""
        return None

    def _thoughts_trained(self) -> list[int]:
        """The longest thought (in tokens) of each data set trained on, for the card's thought_tokens."""
        return []

    def _export(self) -> None:
        out = os.path.join(self.cfg.output, "model.gguf")
        try:
            if self.cfg.method == "full":
                export_gguf(self.cfg.output, out, self.cfg.quant)
            else:
                export_gguf(self.model_cfg.model, out, self.cfg.quant, adapter=self.cfg.output)
        except ModelError as e:
            raise TrainingError(
                f"--export-gguf: {e} (the trained model in {self.cfg.output} is complete; "
                "`eexp export` can be run again)"
            ) from None
        self.echo(f"wrote {out} ({self.cfg.quant})")


# Where the final model is written before its files are renamed into OUT (`Trainer.finish`).
FINAL_TMP = ".tmp-final"
# The files that make a folder a model (transformers' and PEFT's configs), renamed into OUT after every other file of
# the final model, and config.yaml, the "finished" mark, after them.
LAST_FILES = ("config.json", "adapter_config.json", "config.yaml")


def move_final(tmp: str, out: str) -> None:
    """The final model's files from `tmp` into `out`, each by a rename (whole or absent), LAST_FILES last; then `tmp`
    goes."""
    names = sorted(os.listdir(tmp), key=lambda n: (LAST_FILES.index(n) if n in LAST_FILES else -1, n))
    for name in names:
        target = os.path.join(out, name)
        if os.path.isdir(target) and not os.path.islink(target):  # a killed run's, renamed before it stopped
            shutil.rmtree(target)
        os.replace(os.path.join(tmp, name), target)
    os.rmdir(tmp)


def absolute_paths(config: dict) -> dict:
    """config.yaml's options with every local path made absolute (the model when it is not a Hub id, the data files,
    OUT), so `--config OUT/config.yaml` replays the run from any directory. Other values, a Hub id and stdin (`-`)
    stay as given."""

    def absolute(value):
        if isinstance(value, list):
            return [absolute(v) for v in value]
        if not isinstance(value, str) or value in ("", "-") or hub_id(value):
            return value
        return os.path.abspath(value)

    return {k: absolute(v) if k in checkpoint.PATH_OPTIONS | {"output"} else v for k, v in config.items()}


def without_tied_copies(state: dict, model) -> dict:
    """A gathered state dict (FSDP's holds tied weights as separate tensors) without the copies of tied weights
    (the output layer that is the input embedding), so they are saved once, as transformers saves them."""
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
