"""`eexp finetune`: imitation (IL), the implicit-world-modeling schedule (IWM) and self-reflection (SR) training.

One readable recipe in plain PyTorch (no HF Trainer), in the style of torchtune's single-device recipes:

    options (FinetuneConfig) -> data (encode: chat-template masks, truncation) -> batches (length-grouped)
    -> model (full fine-tuning, LoRA or QLoRA through PEFT) -> Finetune.setup / train / save / resume -> OUT

Why a custom loop: every piece of state that decides the next update is ours (the batch order is a pure function of
seed, phase and epoch; the optimizer, scheduler and RNG state are saved with the weights), so `--resume` reproduces an
uninterrupted run's losses exactly; and logits are computed only where a target token is predicted, which is where
most of the time and memory of a chat fine-tune go (the prompt is long, the action is short).

The IWM schedule (paper §3, §5.1): phase "warmup" trains on world-model examples (`--warmup-data`), then phase
"train" continues the same weights (or LoRA adapter) on the training files with a fresh optimizer and schedule.
`--max-steps` counts the updates of both phases, so IL, IWM and SR runs are held to one budget.

Security: weights are written and read as safetensors only; optimizer, scheduler and RNG state (written by eexp
itself) go through torch.save and are read back with `torch.load(weights_only=True)`, which refuses arbitrary
pickled objects; the run state is JSON.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import math
import os
import random
import re
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterator

import orjson
import yaml

from eexp import __version__, errors
from eexp.errors import EexpError
from eexp.io import InputError, Reader, WriteError, Writer, write_atomic
from eexp.policies.files import has_tokenizer
from eexp.prompts import fit_messages
from eexp.records import expect

PHASES = ("warmup", "train")
# Options that may differ between a run and its --resume without changing the loss curve.
RESUME_FREE = {"resume", "quiet", "export_gguf", "quant", "save_every", "log_every", "keep_checkpoints", "on_error"}


class TrainingError(EexpError):
    """A user-facing problem (bad model directory, no data, out of memory, disk full): message, exit 1."""


class UsageProblem(TrainingError, errors.UsageProblem):
    """A bad combination of options (exit 2 at the CLI)."""


@dataclass
class FinetuneConfig:
    train_files: list[str]
    model: str
    output: str
    lora: bool = False
    qlora: bool = False
    adapter: str | None = None
    lora_rank: int = 16
    lora_alpha: float = 32
    lora_dropout: float = 0.05
    lora_targets: list[str] = field(default_factory=lambda: ["all-linear"])
    epochs: int = 1
    max_steps: int | None = None
    lr: float | None = None            # None: see resolved_lr
    lr_scheduler: str = "cosine"
    lr_warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    batch_size: int = 8
    grad_accum: int = 1
    max_length: int = 2048
    truncate: bool = True
    seed: int = 0
    val: str | None = None
    val_fraction: float = 0.0
    eval_every: int | None = None      # None: at the end of every epoch of the training phase
    keep_best: bool = False
    save_every: int = 500
    keep_checkpoints: int = 1
    log_every: int | None = None       # None: every step for runs under 1,000 steps, else every 10
    warmup_data: list[str] = field(default_factory=list)
    warmup_epochs: int = 1
    warmup_steps: int | None = None    # None: warmup_epochs epochs of --warmup-data
    warmup_lr: float | None = None     # None: --lr
    precision: str = "auto"            # auto: bf16 on a GPU that supports it, fp32 otherwise
    gradient_checkpointing: bool = False
    export_gguf: bool = False
    quant: str = "q8_0"
    trust_remote_code: bool = False
    resume: bool = False
    on_error: str = "fail"
    quiet: bool = False

    @property
    def method(self) -> str:
        return "qlora" if self.qlora else "lora" if (self.lora or self.adapter) else "full"

    def resolved_lr(self) -> float:
        """1e-5 for full fine-tuning of a pretrained model (the paper's), 2e-4 for LoRA, and 1e-3 for a model whose
        weights are random (made by `eexp init-model`): at 1e-5 such a model would barely move."""
        if self.lr is not None:
            return self.lr
        if self.method != "full":
            return 2e-4
        return 1e-3 if from_scratch(self.model) else 1e-5


def from_scratch(model_dir: str) -> bool:
    """Whether a checkpoint's weights began random: made by `eexp init-model`, or fine-tuned from such a model."""
    try:
        with open(os.path.join(model_dir, "config.yaml")) as f:
            made = yaml.safe_load(f) or {}
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(made, dict) and (made.get("command") == "init-model" or bool(made.get("from_scratch")))


# --- data: chat-template masks ----------------------------------------------------------------------------------

@dataclass
class Encoded:
    """One tokenized example. weights[t] is the loss weight of predicting token t (0: not trained)."""

    ids: list[int]
    weights: list[float]
    truncated: bool = False
    system_tokens: int = 0   # where the system prompt ends
    last_target: int = 0     # where the last trained span starts

    @property
    def n_targets(self) -> int:
        return sum(1 for w in self.weights if w)


def render(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template([{"role": m["role"], "content": m["content"]} for m in messages],
                                         tokenize=False, add_generation_prompt=add_generation_prompt)


def target_spans(tokenizer, messages: list[dict]) -> tuple[str, int, list[tuple[int, int, float]]]:
    """(rendered text, end of the system prompt, [(start, end, weight)] character spans to train on).

    The spans come from rendering the conversation prefix by prefix with the model's own template: an assistant
    turn's target is what `messages[:i+1]` adds to `messages[:i]` + the generation prompt. This needs no
    `{% generation %}` tags and keeps the end-of-turn token (`<|im_end|>`, `<|eot_id|>`, EOS) inside the target;
    whitespace the template puts after it is left out (nothing to learn there).
    """
    full = render(tokenizer, messages)
    spans = []
    for i, m in enumerate(messages):
        weight = m.get("weight", 1)
        if m["role"] != "assistant" or not weight:
            continue
        start = render(tokenizer, messages[:i], add_generation_prompt=True) if i else ""
        end = render(tokenizer, messages[: i + 1])
        if not (end.startswith(start) and full.startswith(end)):
            raise ValueError(f"the chat template does not render messages[{i}] as an extension of the turns before "
                             "it, so the assistant turn cannot be located (a template that rewrites history?)")
        stop = len(end.rstrip()) if end[len(start):].strip() else len(end)
        spans.append((len(start), stop, float(weight)))
    system_end = 0
    if messages[0]["role"] == "system":
        try:
            head = render(tokenizer, messages[:1])
            system_end = len(head) if full.startswith(head) else 0
        except Exception:  # a template that refuses a system-only conversation: no protected system prompt
            system_end = 0
    return full, system_end, spans


def encode(tokenizer, messages: list[dict], max_length: int, truncate: bool = True) -> Encoded:
    """Token ids and per-token loss weights; raises ValueError (with a reason) for an example that cannot be used.

    An over-long example is shortened as inference shortens a prompt that does not fit its context
    (`eexp.prompts.fit_messages`: the oldest history first, then the current observation; never the task), so the
    model trains on long states as it will see them. Only if that is not enough (a task or a system prompt that
    alone is over the limit, or messages that are not a rendered state) are tokens cut from the left, keeping the
    system prompt when possible. The last target is never cut.
    """
    enc = _encode(tokenizer, messages)
    if len(enc.ids) <= max_length:
        return enc
    if not truncate:
        raise ValueError(f"{len(enc.ids)} tokens, over --max-length {max_length} (--no-truncate)")
    fitted, _ = fit_messages(messages, lambda m: len(_encode(tokenizer, m).ids), max_length)
    enc = _encode(tokenizer, fitted)
    enc.truncated = True
    return enc if len(enc.ids) <= max_length else _cut_left(enc, max_length)


def _encode(tokenizer, messages: list[dict]) -> Encoded:
    """Each piece between span boundaries is tokenized on its own, as at inference, where the prompt is tokenized and
    the answer generated after it. `system_tokens` and `last_target` say where the system prompt ends and the last
    trained span starts."""
    text, system_end, spans = target_spans(tokenizer, messages)
    if not spans:
        raise ValueError("no assistant turn with weight != 0 (nothing to learn)")
    cuts = sorted({0, system_end, len(text), *(s for s, _, _ in spans), *(e for _, e, _ in spans)})
    ids: list[int] = []
    weights: list[float] = []
    system_tokens = 0
    last_target = 0
    for a, b in zip(cuts, cuts[1:]):
        piece = tokenizer(text[a:b], add_special_tokens=False)["input_ids"]
        w = next((w for s, e, w in spans if s <= a and b <= e), 0.0)
        if w:
            last_target = len(ids)
        ids += piece
        weights += [w] * len(piece)
        if b == system_end:
            system_tokens = len(ids)
    # Nothing after the last trained token is learned from: drop it.
    end = max(i for i, w in enumerate(weights) if w) + 1
    ids, weights = ids[:end], weights[:end]
    weights[0] = 0.0  # the first token is never predicted
    return Encoded(ids, weights, system_tokens=system_tokens, last_target=last_target)


def _cut_left(enc: Encoded, max_length: int) -> Encoded:
    """The last resort: drop tokens after the system prompt (then the system prompt too), never the last target."""
    ids, weights = enc.ids, enc.weights
    excess = len(ids) - max_length
    if excess <= enc.last_target - enc.system_tokens:
        keep = list(range(enc.system_tokens)) + list(range(enc.system_tokens + excess, len(ids)))
    elif excess <= enc.last_target:
        keep = list(range(excess, len(ids)))
    else:
        raise ValueError(f"the last assistant turn alone is {len(ids) - enc.last_target} tokens, over --max-length "
                         f"{max_length}; raise --max-length (targets are never cut)")
    ids = [ids[i] for i in keep]
    weights = [weights[i] for i in keep]
    weights[0] = 0.0
    return Encoded(ids, weights, truncated=True)


@dataclass
class Dataset:
    name: str
    examples: list[Encoded]
    truncated: int = 0
    skipped: int = 0
    serializers: Counter = field(default_factory=Counter)

    @property
    def tokens(self) -> int:
        return sum(len(e.ids) for e in self.examples)


def read_examples(paths: list[str], on_error: str, warn: Callable[[str], None]) -> tuple[list, Reader]:
    """Valid training-example records with where they came from; bad ones fail or are skipped (--on-error)."""
    reader = Reader(list(paths), on_error=on_error, warn=warn)
    check = expect("example")
    items = []
    for item in reader:
        problem = check(item.record)
        if problem is None and not any(m["role"] == "assistant" and m.get("weight", 1) for m in
                                       item.record["messages"]):
            problem = "messages: every assistant turn has weight 0 (nothing to learn)"
        if problem:
            reader.reject(item.error(problem))
            continue
        items.append(item)
    return items, reader


def encode_items(name: str, items, reader: Reader, tokenizer, cfg: FinetuneConfig) -> Dataset:
    import jinja2
    data = Dataset(name, [])
    for item in items:
        try:
            enc = encode(tokenizer, item.record["messages"], cfg.max_length, cfg.truncate)
        except jinja2.TemplateSyntaxError as e:
            raise TrainingError(f"{cfg.model}: the chat template cannot be parsed: {e}") from None
        except (ValueError, jinja2.TemplateError) as e:
            what = str(e) if isinstance(e, ValueError) else f"the chat template cannot render this example: {e}"
            reader.reject(item.error(what))
            continue
        data.examples.append(enc)
        data.truncated += enc.truncated
        serializer = (item.record.get("meta") or {}).get("serializer")
        if serializer:
            data.serializers[serializer] += 1
    data.skipped = reader.skipped
    if data.examples:
        first = data.examples[0]
        last = first.ids[max(i for i, w in enumerate(first.weights) if w)]
        if last not in set(tokenizer.all_special_ids) | {tokenizer.eos_token_id}:
            print(f"eexp: warning: {cfg.model}: the chat template ends an assistant turn without an end-of-turn or "
                  "EOS token, so the model will not learn to stop", file=sys.stderr)
    return data


def split_validation(items: list, fraction: float, seed: int) -> tuple[list, list]:
    """A seeded split by trajectory (meta.trajectory_id, else source_id): steps of one trajectory share states, so
    they stay on one side and the validation loss is not measured on near-copies of training examples."""
    def group(item):
        meta = item.record.get("meta") or {}
        return str(meta.get("trajectory_id") or item.record.get("source_id") or item.record["id"])
    groups = sorted({group(i) for i in items})
    random.Random(f"val/{seed}").shuffle(groups)
    n_val = max(1, round(fraction * len(groups)))
    if n_val >= len(groups):
        raise UsageProblem(f"--val-fraction {fraction} leaves no training data ({len(groups)} trajectories)")
    held = set(groups[:n_val])
    return [i for i in items if group(i) not in held], [i for i in items if group(i) in held]


# --- batches ----------------------------------------------------------------------------------------------------

def epoch_batches(lengths: list[int], batch_size: int, seed: int, phase: str, epoch: int) -> list[list[int]]:
    """Length-grouped micro-batches: shuffle, sort within windows of 64 batches, shuffle the batches.

    Examples of similar length share a batch (little padding, no attention across examples, unlike naive
    packing) while the order stays random. A pure function of (seed, phase, epoch): resume needs no sampler state.
    """
    rng = random.Random(f"{seed}/{phase}/{epoch}")
    order = list(range(len(lengths)))
    rng.shuffle(order)
    window = batch_size * 64
    batches = []
    for i in range(0, len(order), window):
        chunk = sorted(order[i:i + window], key=lambda j: lengths[j], reverse=True)
        batches += [chunk[k:k + batch_size] for k in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def updates_per_epoch(n_examples: int, batch_size: int, grad_accum: int, world: int = 1) -> int:
    return math.ceil(math.ceil(n_examples / batch_size) / (grad_accum * world))


def phase_updates(data: Dataset, cfg: FinetuneConfig, phase: str, world: int = 1) -> Iterator[tuple[int, list]]:
    """(epoch, micro-batches) for every update of a phase, epoch after epoch, without end."""
    lengths = [len(e.ids) for e in data.examples]
    per_update = cfg.grad_accum * world
    for epoch in range(10**9):
        batches = epoch_batches(lengths, cfg.batch_size, cfg.seed, phase, epoch)
        for k in range(0, len(batches), per_update):
            yield epoch, batches[k:k + per_update]


def collate(examples: list[Encoded], pad_id: int, device):
    import torch
    width = max(len(e.ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    weights = torch.zeros((len(examples), width), dtype=torch.float32)
    for row, e in enumerate(examples):
        n = len(e.ids)
        ids[row, :n] = torch.tensor(e.ids)
        mask[row, :n] = 1
        weights[row, :n] = torch.tensor(e.weights)
    return ids.to(device), mask.to(device), weights.to(device)


def weighted_nll(model, ids, mask, weights):
    """Sum over target tokens of weight x negative log-likelihood, computing logits only where a target is predicted.

    `logits_to_keep` (a tensor of positions) makes the model apply its output layer at those positions only: for a
    chat example that is a few dozen of the sequence's positions, so the vocabulary-sized logits never exist for the
    prompt.
    """
    import torch
    import torch.nn.functional as F
    keep = torch.nonzero(weights[:, 1:].any(dim=0)).flatten()  # positions whose next token is a target
    try:
        logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=keep, use_cache=False).logits
    except TypeError:  # a model without logits_to_keep: full logits, then select
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, keep]
    labels = ids[:, keep + 1]
    w = weights[:, keep + 1]
    nll = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), reduction="none")
    return (nll * w.flatten()).sum()


# --- model ------------------------------------------------------------------------------------------------------

def check_model_dir(path: str) -> None:
    """--model is a local checkpoint directory whose weights are safetensors."""
    if not os.path.exists(path):
        raise TrainingError(f"{path}: no such model directory (the path does not exist)")
    if not os.path.isdir(path):
        raise TrainingError(f"{path}: not a model directory (a file)")
    names = os.listdir(path)
    pickles = sorted(n for n in names if n.endswith(".bin"))
    if pickles and not any(n.endswith(".safetensors") for n in names):
        raise TrainingError(f"{path}: the weights are {pickles[0]}, a pickle, and eexp loads safetensors only; "
                            "convert them once (if you trust the file): python -c \"from transformers import "
                            f"AutoModelForCausalLM as M; M.from_pretrained({path!r}, use_safetensors=False)"
                            f".save_pretrained({path!r})\"")


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _why(e: BaseException) -> str:
    """Why a write failed, in words: "the disk is full", or the system's reason. safetensors raises its own error
    type, whose message carries the errno (`I/O error: No space left on device (os error 28)`)."""
    code = getattr(e, "errno", None)
    if code is None:
        found = re.search(r"(?:os error|code:) (\d+)", str(e))
        code = int(found.group(1)) if found else None
    if code == errno.ENOSPC:
        return "the disk is full"
    return os.strerror(code) if code else _first_line(e)


def load_tokenizer(cfg: FinetuneConfig):
    from transformers import AutoTokenizer
    source = cfg.adapter if cfg.adapter and has_tokenizer(cfg.adapter) else cfg.model
    if not has_tokenizer(source):
        raise TrainingError(f"{cfg.model}: no tokenizer in this model directory (expected tokenizer.json or "
                            "tokenizer_config.json); a checkpoint from `eexp init-model` or `eexp finetune` has one")
    try:
        tok = AutoTokenizer.from_pretrained(source, trust_remote_code=cfg.trust_remote_code)
    except Exception as e:
        raise TrainingError(f"{source}: cannot load the tokenizer: {e}") from None
    if not tok.chat_template:
        raise TrainingError(f"{source}: the tokenizer has no chat template; eexp trains and acts through the "
                            "template stored with the model (add one to tokenizer_config.json or "
                            "chat_template.jinja)")
    return tok


def linear_module_names(model) -> list[str]:
    """The names LoRA can target: the last component of every linear layer's name (lm_head excluded)."""
    import torch
    names = set()
    for name, module in model.named_modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Embedding)) or type(module).__name__ in ("Conv1D",
                                                                                               "Linear4bit"):
            leaf = name.rsplit(".", 1)[-1]
            if leaf != "lm_head":
                names.add(leaf)
    return sorted(names)


def load_model(cfg: FinetuneConfig, device, bf16: bool):
    import torch
    from transformers import AutoModelForCausalLM
    check_model_dir(cfg.model)
    if os.path.exists(os.path.join(cfg.model, "adapter_config.json")):
        raise UsageProblem(f"{cfg.model} is a LoRA adapter: pass its base model as --model and the adapter as "
                           "--adapter DIR to continue training it")
    kwargs = {"trust_remote_code": cfg.trust_remote_code, "use_safetensors": True}  # never a pickle
    # Full fine-tuning keeps fp32 master weights (bf16 only inside autocast); LoRA may hold the frozen base in bf16.
    kwargs["dtype"] = torch.bfloat16 if (bf16 and cfg.method != "full") else torch.float32
    if cfg.qlora:
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise UsageProblem("--qlora needs bitsandbytes and a CUDA GPU (pip install bitsandbytes)") from None
        if device.type != "cuda":
            raise UsageProblem("--qlora needs a CUDA GPU (4-bit weights through bitsandbytes)")
        from transformers import BitsAndBytesConfig
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16 if bf16 else torch.float32)
        kwargs["device_map"] = {"": device}
    from safetensors import SafetensorError
    try:
        model = AutoModelForCausalLM.from_pretrained(cfg.model, **kwargs)
    except (OSError, ValueError, SafetensorError) as e:
        raise TrainingError(f"{cfg.model}: cannot load the model: {_first_line(e)}") from None
    if not cfg.qlora:
        model.to(device)
    model.config.use_cache = False
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.method == "full":
        return model
    from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
    if cfg.qlora:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    elif cfg.gradient_checkpointing:
        model.enable_input_require_grads()
    if cfg.adapter:
        if not os.path.exists(os.path.join(cfg.adapter, "adapter_config.json")):
            raise TrainingError(f"{cfg.adapter}: not a LoRA adapter directory (no adapter_config.json)")
        return PeftModel.from_pretrained(model, cfg.adapter, is_trainable=True)
    candidates = linear_module_names(model)
    targets = [t for t in cfg.lora_targets if t != "all-linear"]
    missing = [t for t in targets if t not in candidates and not any(n.endswith(t) for n, _ in
                                                                     model.named_modules())]
    if missing:
        raise UsageProblem(f"--lora-targets: {', '.join(missing)} not in this model; candidates: "
                           f"{', '.join(candidates)} (or all-linear)")
    lora = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=targets or "all-linear", task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    if bf16:  # trainable adapter weights stay fp32 (optimizer precision); autocast does the bf16 math
        for p in model.parameters():
            if p.requires_grad:
                p.data = p.data.float()
    return model


def _accelerator():
    """An accelerate Accelerator when launched by `accelerate launch` (or torchrun), else None: a plain run on one
    CPU or GPU does not need accelerate."""
    launched = "ACCELERATE_MIXED_PRECISION" in os.environ or int(os.environ.get("WORLD_SIZE", "1")) > 1
    if not launched:
        return None
    try:
        from accelerate import Accelerator
    except ImportError:
        raise TrainingError("launched for several processes but accelerate is not installed "
                            "(pip install accelerate)") from None
    acc = Accelerator()
    kind = str(acc.distributed_type).rsplit(".", 1)[-1]
    if kind == "DEEPSPEED":
        # DeepSpeed's engine owns gradient accumulation and the optimizer, which this loop does itself (a fresh
        # optimizer per phase, token-normalized accumulation). FSDP's full sharding gives ZeRO-3's memory savings.
        raise UsageProblem("eexp finetune does not run under DeepSpeed; use FSDP "
                           "(accelerate launch --config_file recipes/accelerate/fsdp.yaml -m eexp finetune ...)")
    return acc


OOM_ADVICE = ("out of memory at step {step} (micro-batch of {batch} examples, up to {length} tokens). Try a smaller "
              "--batch-size with a larger --grad-accum (same effective batch), a lower --max-length, "
              "--gradient-checkpointing, or --lora")


def _is_oom(e: BaseException) -> bool:
    import torch
    if isinstance(e, torch.OutOfMemoryError):
        return True
    text = str(e)
    return isinstance(e, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text
                                            or "DefaultCPUAllocator" in text)


# --- the recipe -------------------------------------------------------------------------------------------------

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
        self.model_cfg = self._import_base()  # --model X.gguf: its import, a checkpoint folder
        check_model_dir(self.model_cfg.model)  # before OUT is made: a wrong --model leaves nothing behind
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
        self.model = load_model(self.model_cfg, self.device, self.bf16)
        if self.acc:
            self.model = self.acc.prepare(self.model)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.state = {"phase": self.phases[0][0], "phase_step": 0, "global_step": 0, "best_val": None,
                      "best_step": None, "fingerprint": self.fingerprint}
        self.optimizer = self.scheduler = None
        # Under FSDP each process holds a shard of the optimizer state; eexp's checkpoints hold one full copy, so
        # they (and --resume) are for one process or plain data parallelism.
        self.sharded = bool(self.acc) and "FSDP" in str(self.acc.distributed_type)
        if self.sharded and cfg.resume:
            raise UsageProblem("--resume is not supported under FSDP (sharded optimizer state)")
        if cfg.resume:
            self.load_checkpoint()

    def _import_base(self) -> FinetuneConfig:
        """The config that names the checkpoint folder to load: cfg itself, or, when --model is a GGUF file, a copy
        naming its import (made once into the cache by eexp.models.import_gguf; the main process imports, the others
        find it there). config.yaml still records the GGUF as the base."""
        from dataclasses import replace
        self.base_gguf = None
        if not (self.cfg.model.lower().endswith(".gguf") and os.path.isfile(self.cfg.model)):
            return self.cfg
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
        return replace(self.cfg, model=str(folder))

    def _check_options(self) -> None:
        cfg = self.cfg
        if cfg.val and cfg.val_fraction:
            raise UsageProblem("give --val FILE or --val-fraction F, not both")
        if not 0 <= cfg.val_fraction < 1:
            raise UsageProblem("--val-fraction must be in [0, 1)")
        if cfg.keep_best and not (cfg.val or cfg.val_fraction):
            raise UsageProblem("--keep-best needs validation data (--val FILE or --val-fraction F)")
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
        warn = self.echo
        items, reader = read_examples(cfg.train_files, cfg.on_error, warn)
        if cfg.val:
            val_items, val_reader = read_examples([cfg.val], cfg.on_error, warn)
        elif cfg.val_fraction:
            items, val_items = split_validation(items, cfg.val_fraction, cfg.seed)
            val_reader = reader
        else:
            val_items, val_reader = [], None
        self.data = {"train": encode_items("train", items, reader, self.tokenizer, cfg)}
        if cfg.warmup_data:
            w_items, w_reader = read_examples(cfg.warmup_data, cfg.on_error, warn)
            self.data["warmup"] = encode_items("warmup", w_items, w_reader, self.tokenizer, cfg)
        self.val = encode_items("val", val_items, val_reader, self.tokenizer, cfg) if val_items else None
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
                digest.update(orjson.dumps([e.ids, e.weights]))
        options = {k: v for k, v in asdict(cfg).items() if k not in RESUME_FREE}
        self.fingerprint = {"options": options, "data": digest.hexdigest()}

    def _files(self, name: str) -> list[str]:
        return self.cfg.warmup_data if name == "warmup" else self.cfg.train_files

    def _serializer(self) -> dict | None:
        """The serializer settings the examples were made with (meta.serializer), for eval and export."""
        counts = self.data["train"].serializers
        if not counts:
            self.echo("warning: the training examples carry no meta.serializer; config.yaml records none, so eval "
                      "will render states with its defaults")
            return None
        if len(counts) > 1:
            self.echo(f"warning: the training examples were made with {len(counts)} different serializer settings; "
                      "config.yaml records the most common")
        return orjson.loads(counts.most_common(1)[0][0])

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
        if self.acc:
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
        window_tokens, window_start, window_loss = 0, time.perf_counter(), []
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()
        self.model.train()
        while self.state["phase_step"] < steps:
            epoch, micro = next(updates)
            examples = [[data.examples[j] for j in batch] for batch in micro]
            n_targets = sum(e.n_targets for batch in examples for e in batch)
            mine = examples[self.rank::self.world]
            try:
                loss_sum = 0.0
                for batch in mine or examples[:1]:
                    ids, mask, weights = collate(batch, self.pad_id, self.device)
                    with autocast:
                        nll = weighted_nll(self.model, ids, mask, weights)
                    # Normalized by the update's target tokens (over every micro-batch and process), so grad-accum
                    # and several GPUs give the same gradient as one big batch. A process with no micro-batch in the
                    # last update of an epoch still joins the gradient sync, with zero weight.
                    loss = nll / max(n_targets, 1) * self.world * (1 if mine else 0)
                    if self.acc:
                        self.acc.backward(loss)
                    else:
                        loss.backward()
                    loss_sum += float(nll.detach()) if mine else 0.0
                    window_tokens += int(mask.sum()) if mine else 0
                if self.acc:
                    self.acc.clip_grad_norm_(self.params, cfg.max_grad_norm)
                    loss_sum = float(self.acc.reduce(torch.tensor(loss_sum, device=self.device), "sum"))
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
                    longest = max(len(x.ids) for batch in examples for x in batch)
                    raise TrainingError(OOM_ADVICE.format(step=self.state["global_step"] + 1,
                                                          batch=cfg.batch_size, length=longest)) from None
                raise
            self.state["phase_step"] += 1
            self.state["global_step"] += 1
            step = self.state["global_step"]
            loss = loss_sum / max(n_targets, 1)
            window_loss.append(loss)
            bar.update(1)
            if step % self.log_every == 0 or self.state["phase_step"] == steps:
                elapsed = time.perf_counter() - window_start
                tps = window_tokens_all / elapsed if elapsed > 0 else 0.0
                row = {"step": step, "phase": phase, "epoch": round(self.state["phase_step"] /
                                                                    self.per_epoch[phase], 4),
                       "loss": round(sum(window_loss) / len(window_loss), 6), "lr": lr,
                       "tokens_per_s": round(tps, 1)}
                self._log(row)
                bar.set_postfix(loss=f"{row['loss']:.4f}", tok_s=f"{tps:.0f}", phase=phase)
                window_tokens, window_start, window_loss = 0, time.perf_counter(), []
            end_of_epoch = self.state["phase_step"] % self.per_epoch[phase] == 0
            if self.val is not None and (
                    (cfg.eval_every and step % cfg.eval_every == 0)
                    or (not cfg.eval_every and phase == "train" and end_of_epoch)
                    or (phase == "warmup" and self.state["phase_step"] == steps)):  # right after the world model
                self._validate()
            if step % cfg.save_every == 0 and step < self.total_steps and not self.sharded:
                self.save_checkpoint()
            self.model.train()

    def _validate(self) -> float:
        import torch
        self.model.eval()
        total, n = 0.0, 0
        lengths = [len(e.ids) for e in self.val.examples]
        order = sorted(range(len(lengths)), key=lambda j: lengths[j])
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()
        with torch.no_grad(), autocast:
            for k in range(self.rank * self.cfg.batch_size, len(order), self.cfg.batch_size * self.world):
                batch = [self.val.examples[j] for j in order[k:k + self.cfg.batch_size]]
                ids, mask, weights = collate(batch, self.pad_id, self.device)
                total += float(weighted_nll(self.model, ids, mask, weights))
                n += sum(e.n_targets for e in batch)
        if self.acc:
            total = float(self.acc.reduce(torch.tensor(total, device=self.device), "sum"))
            n = int(self.acc.reduce(torch.tensor(n, device=self.device), "sum"))
        val = total / max(n, 1)
        step = self.state["global_step"]
        self.state["last_val_step"] = step
        self._log({"step": step, "phase": self.state["phase"], "val_loss": round(val, 6)})
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
        """Write a checkpoint into a temporary directory and rename it into place: a save that fails (disk full,
        killed) leaves the previous checkpoint as it was."""
        import torch
        from safetensors import SafetensorError
        from safetensors.torch import save_file
        weights = self._trainable_state()
        if not self.main:
            return
        os.makedirs(self.ckpt_root, exist_ok=True)
        tmp = os.path.join(self.ckpt_root, f".tmp-{os.path.basename(final)}")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            os.makedirs(tmp)
            save_file(weights, os.path.join(tmp, "weights.safetensors"))
            if optimizer:
                torch.save(self.optimizer.state_dict(), os.path.join(tmp, "optimizer.pt"))
                torch.save(self.scheduler.state_dict(), os.path.join(tmp, "scheduler.pt"))
                rng = {"torch": torch.get_rng_state()}
                if torch.cuda.is_available():
                    rng["cuda"] = torch.cuda.get_rng_state_all()
                torch.save(rng, os.path.join(tmp, "rng.pt"))
            write_atomic(os.path.join(tmp, "state.json"),
                         orjson.dumps(self.state, option=orjson.OPT_INDENT_2) + b"\n")
            old = final + ".old"  # only "best" is ever replaced; step-N directories are new
            shutil.rmtree(old, ignore_errors=True)
            if os.path.exists(final):
                os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        except (OSError, SafetensorError, WriteError) as e:  # safetensors has its own error for a full disk
            shutil.rmtree(tmp, ignore_errors=True)
            previous = self._checkpoints()
            kept = f"; the previous checkpoint {previous[-1]} is intact" if previous else ""
            why = _why(e)
            raise TrainingError(f"cannot save the checkpoint {final} (step {self.state['global_step']}): {why}"
                                f"{kept}. Free space and run again with --resume") from None

    def _checkpoints(self) -> list[str]:
        if not os.path.isdir(self.ckpt_root):
            return []
        steps = sorted(int(d.split("-")[1]) for d in os.listdir(self.ckpt_root)
                       if d.startswith("step-") and d.split("-")[1].isdigit())
        return [os.path.join(self.ckpt_root, f"step-{s}") for s in steps]

    def save_checkpoint(self) -> None:
        self._save_dir(os.path.join(self.ckpt_root, f"step-{self.state['global_step']}"))
        if self.main:
            for old in self._checkpoints()[:-max(self.cfg.keep_checkpoints, 1)]:
                shutil.rmtree(old, ignore_errors=True)

    def load_checkpoint(self) -> None:
        import torch
        from safetensors.torch import load_file
        found = self._checkpoints()
        if not found:
            if os.path.exists(os.path.join(self.cfg.output, "config.yaml")):
                raise TrainingError(f"{self.cfg.output}: this run already finished; nothing to resume")
            self.echo(f"no checkpoint in {self.ckpt_root}: starting from the beginning")
            if os.path.exists(self.metrics_path) and self.main:
                os.remove(self.metrics_path)
            return
        path = found[-1]
        with open(os.path.join(path, "state.json"), "rb") as f:
            state = orjson.loads(f.read())
        self._check_fingerprint(state.get("fingerprint") or {}, path)
        model = self.acc.unwrap_model(self.model) if self.acc else self.model
        weights = load_file(os.path.join(path, "weights.safetensors"), device=str(self.device))
        missing = {n for n, p in model.named_parameters() if p.requires_grad} - set(weights)
        if missing:
            raise TrainingError(f"{path}: the checkpoint lacks {len(missing)} trained tensor(s) "
                                f"(e.g. {sorted(missing)[0]}): not a checkpoint of this run")
        model.load_state_dict(weights, strict=False)
        self.state = state
        phase_steps = dict(self.phases)[state["phase"]]
        self._new_optimizer(state["phase"], phase_steps)
        # weights_only=True: plain tensors and containers only, never arbitrary pickled objects.
        self.optimizer.load_state_dict(torch.load(os.path.join(path, "optimizer.pt"), weights_only=True,
                                                  map_location=self.device))
        self.scheduler.load_state_dict(torch.load(os.path.join(path, "scheduler.pt"), weights_only=True))
        rng = torch.load(os.path.join(path, "rng.pt"), weights_only=True)
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        if self.main:
            self._trim_metrics(state["global_step"])
        self.echo(f"resumed from {path} (step {state['global_step']} of {self.total_steps})")

    def _check_fingerprint(self, saved: dict, path: str) -> None:
        if saved.get("data") and saved["data"] != self.fingerprint["data"]:
            raise TrainingError(f"cannot resume from {path}: the training data differ from that run's")
        before, now = saved.get("options", {}), self.fingerprint["options"]
        changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
        if changed:
            raise TrainingError(f"cannot resume from {path}: options differ from that run's: "
                                + ", ".join(f"{k} ({before.get(k)!r} -> {now.get(k)!r})" for k in changed))

    def _trim_metrics(self, step: int) -> None:
        """Rows logged after the checkpoint are logged again by the resumed run."""
        if not os.path.exists(self.metrics_path):
            return
        with open(self.metrics_path, "rb") as f:
            rows = [line for line in f.read().splitlines(keepends=True) if line.strip()]
        kept = []
        for line in rows:
            try:
                if orjson.loads(line)["step"] <= step:
                    kept.append(line)
            except (orjson.JSONDecodeError, KeyError, TypeError):
                continue  # a torn last line from the killed run
        write_atomic(self.metrics_path, b"".join(kept))

    # -- finish --

    def finish(self) -> None:
        """OUT: the model (or adapter), tokenizer, config.yaml, metrics.jsonl; then model.gguf if asked."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        cfg = self.cfg
        model = self.acc.unwrap_model(self.model) if self.acc else self.model
        if cfg.keep_best and self.state.get("best_step"):
            best = os.path.join(self.ckpt_root, "best", "weights.safetensors")
            model.load_state_dict(load_file(best, device=str(self.device)), strict=False)
            self.echo(f"keeping the best checkpoint: step {self.state['best_step']} "
                      f"(validation loss {self.state['best_val']:.4f})")
        state = self.acc.get_state_dict(self.model) if self.acc else None
        if self.main:
            try:
                model.save_pretrained(cfg.output, state_dict=state)
                self.tokenizer.save_pretrained(cfg.output)
                if cfg.method != "full":  # policies find the base model from the adapter config
                    self._point_adapter_at_base()
                write_atomic(os.path.join(cfg.output, "config.yaml"), yaml.safe_dump(
                    self.resolved_config(), sort_keys=False, allow_unicode=True).encode())
            except (OSError, SafetensorError, WriteError) as e:
                why = _why(e)
                previous = self._checkpoints()
                then = (f"the last checkpoint {previous[-1]} is intact (free space, then --resume)" if previous
                        else "no checkpoint was kept (free space, then --resume starts the run over)")
                raise TrainingError(f"cannot write the final model to {cfg.output}: {why}; {then}") from None
            shutil.rmtree(self.ckpt_root, ignore_errors=True)
            self.echo(f"wrote {cfg.output} ({'full model' if cfg.method == 'full' else 'LoRA adapter'}, "
                      f"{self.state['global_step']} updates)")
        if cfg.export_gguf and self.main:
            self._export()

    def _point_adapter_at_base(self) -> None:
        path = os.path.join(self.cfg.output, "adapter_config.json")
        with open(path, "rb") as f:
            conf = orjson.loads(f.read())
        conf["base_model_name_or_path"] = os.path.abspath(self.model_cfg.model)  # a GGUF's import folder
        write_atomic(path, orjson.dumps(conf, option=orjson.OPT_INDENT_2) + b"\n")

    def resolved_config(self) -> dict:
        cfg = asdict(self.cfg)
        cfg.update(lr=self.cfg.resolved_lr(), warmup_lr=self.cfg.warmup_lr or (self.cfg.resolved_lr()
                   if self.cfg.warmup_data else None), log_every=self.log_every, method=self.cfg.method)
        for key in ("resume", "quiet"):
            cfg.pop(key)
        return {
            **cfg,
            "serializer": self.serializer,
            "command": "finetune",
            "base_model": self.base_gguf or os.path.abspath(self.cfg.model),
            **({"base_import": os.path.abspath(self.model_cfg.model)} if self.base_gguf else {}),
            "from_scratch": from_scratch(self.cfg.model),
            "eexp_version": __version__,
            "precision": "bf16" if self.bf16 else "fp32",
            "phases": [{"name": name, "updates": n, "examples": len(self.data[name].examples),
                        "tokens": self.data[name].tokens, "truncated": self.data[name].truncated,
                        "skipped": self.data[name].skipped} for name, n in self.phases],
            "updates": self.state["global_step"],
            "best_step": self.state.get("best_step"),
            "best_val_loss": self.state.get("best_val"),
        }

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


def _progress(disabled: bool, total: int, initial: int):
    from eexp.io import progress_bar
    return progress_bar(disabled, total=total, initial=initial, unit="step")


def finetune(cfg: FinetuneConfig, echo: Callable[[str], None] | None = None) -> Finetune:
    """Run a whole fine-tune; returns the recipe (its state and config) for callers and tests."""
    run = Finetune(cfg, echo)
    run.setup()
    run.train()
    run.finish()
    return run


__all__ = ["FinetuneConfig", "Finetune", "finetune", "encode", "target_spans", "TrainingError", "UsageProblem",
           "InputError"]
