"""The model to train: checks on --model, the tokenizer (whose chat template is the source of truth for masks),
full / LoRA / QLoRA loading through transformers and PEFT, the accelerate launcher, out-of-memory detection."""

from __future__ import annotations

import os

import torch
from accelerate import Accelerator
from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
from safetensors import SafetensorError, safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

from eexp.errors import TrainingError, UsageProblem, first_line
from eexp.files import has_tokenizer, unsafe_adapter
from eexp.training.config import TrainerConfig


def check_model_dir(path: str) -> None:
    """--model is a local checkpoint directory whose weights are safetensors."""
    if not os.path.exists(path):
        raise TrainingError(f"{path}: no such model directory (the path does not exist)")
    if not os.path.isdir(path):
        raise TrainingError(f"{path}: not a model directory (a file)")
    names = os.listdir(path)
    pickles = sorted(n for n in names if n.endswith(".bin"))
    if pickles and not any(n.endswith(".safetensors") for n in names):
        raise TrainingError(
            f"{path}: the weights are {pickles[0]}, a pickle, and eexp loads safetensors only; "
            'convert them once (if you trust the file): python -c "from transformers import '
            f"AutoModelForCausalLM as M; M.from_pretrained({path!r}, use_safetensors=False)"
            f'.save_pretrained({path!r})"'
        )


def load_tokenizer(cfg: TrainerConfig):
    source = cfg.adapter if cfg.adapter and has_tokenizer(cfg.adapter) else cfg.model
    if not has_tokenizer(source):
        raise TrainingError(
            f"{cfg.model}: no tokenizer in this model directory (expected tokenizer.json or "
            "tokenizer_config.json); a checkpoint from `eexp init-model` or `eexp finetune` has one"
        )
    try:
        tok = AutoTokenizer.from_pretrained(source, trust_remote_code=cfg.trust_remote_code)
    except Exception as e:
        raise TrainingError(f"{source}: cannot load the tokenizer: {e}") from None
    if not tok.chat_template:
        raise TrainingError(
            f"{source}: the tokenizer has no chat template; eexp trains and acts through the "
            "template stored with the model (add one to tokenizer_config.json or "
            "chat_template.jinja)"
        )
    return tok


def linear_module_names(model) -> list[str]:
    """The names LoRA can target: the last component of every linear layer's name (lm_head excluded)."""
    names = set()
    for name, module in model.named_modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Embedding)) or type(module).__name__ in (
            "Conv1D",
            "Linear4bit",
        ):
            leaf = name.rsplit(".", 1)[-1]
            if leaf != "lm_head":
                names.add(leaf)
    return sorted(names)


def count_parameters(folder: str) -> int:
    """The parameters of a checkpoint, read from its safetensors headers (no weights are loaded)."""
    total = 0
    for name in sorted(os.listdir(folder)):
        if name.endswith(".safetensors"):
            with safe_open(os.path.join(folder, name), "pt") as f:
                for key in f.keys():
                    n = 1
                    for d in f.get_slice(key).get_shape():
                        n *= d
                    total += n
    return total


def model_dims(config) -> tuple[int, int, int, int, int]:
    """(hidden size, layers, MLP width, vocabulary, attention heads) of a transformers config (Llama / Qwen2 names,
    or GPT-2's)."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden = getattr(text, "hidden_size", None) or getattr(text, "n_embd", None) or 1024
    layers = getattr(text, "num_hidden_layers", None) or getattr(text, "n_layer", None) or 24
    inner = getattr(text, "intermediate_size", None) or getattr(text, "n_inner", None) or 4 * hidden
    vocab = getattr(text, "vocab_size", None) or 32000
    heads = getattr(text, "num_attention_heads", None) or getattr(text, "n_head", None) or max(hidden // 64, 1)
    return hidden, layers, inner, vocab, heads


def activation_bytes_per_token(config, method: str, bf16: bool) -> int:
    """The activations backward keeps for one token of one micro-batch, all layers together, without gradient
    checkpointing: about 6 x hidden + 4 x intermediate values a layer (norms, q/k/v, attention output, the MLP's
    gate, up and product), and with LoRA the dropped-out input of each adapted layer (about 4 x hidden +
    intermediate more), in bf16 under autocast, else fp32. Fitted to the plain loop of issue 62 on an H100 (a 1B
    Llama shape, LoRA on every linear layer, batch 8: 9.7 GiB at peak), so an estimate, not a measurement."""
    hidden, layers, inner, _, _ = model_dims(config)
    values = 6 * hidden + 4 * inner + ((4 * hidden + inner) if method != "full" else 0)
    return values * layers * (2 if bf16 else 4)


def training_memory(
    config,
    n_params: int,
    *,
    method: str,
    bf16: bool,
    rows: int,
    row_tokens: int,
    kept: int,
    lora_rank: int = 16,
    attn: str | None = None,
    processes: int = 1,
) -> dict[str, int]:
    """Bytes a training step needs at its largest micro-batch (`rows` x `row_tokens`, logits at `kept` positions a
    row) without gradient checkpointing, by part: the weights (fp32 for a full fine-tune, bf16 for a LoRA base
    under bf16, 4-bit for QLoRA), gradients and AdamW state (of every weight, or of the adapter's), activations, and
    the logits (bf16, their fp32 copy and its gradient). Under FSDP (`processes`) the weights and state are
    divided; activations are each process's own."""
    hidden, layers, inner, vocab, heads = model_dims(config)
    per_weight = {"full": 4, "qlora": 0.6}.get(method, 2 if bf16 else 4)
    adapter = lora_rank * layers * (9 * hidden + 3 * inner)  # q, k, v, o, gate, up, down: in + out each
    state = n_params * 12 if method == "full" else adapter * 16
    activations = rows * row_tokens * activation_bytes_per_token(config, method, bf16)
    if attn == "eager":  # the attention weights themselves (softmax and its dropout), every head and layer
        activations += rows * heads * row_tokens * row_tokens * layers * (2 if bf16 else 4) * 2
    return {
        "weights": int(n_params * per_weight) // processes,
        "state": int(state) // processes,
        "activations": int(activations),
        "logits": int(rows * kept * vocab * 10),
    }


# Gradient checkpointing goes on by default where the estimate (training_memory) exceeds this share of the GPU's
# free memory: the rest is for the allocator's fragmentation and what the estimate leaves out.
CHECKPOINT_ABOVE = 0.8


def checkpointing_default(parts: dict[str, int], free: int) -> tuple[bool, str]:
    """(gradient checkpointing on?, why), from `training_memory`'s estimate and the GPU's free memory."""
    need = sum(parts.values())
    said = (
        f"about {_gib(need)} without it (activations {_gib(parts['activations'])}, weights "
        f"{_gib(parts['weights'])}, gradients and optimizer {_gib(parts['state'])}, logits "
        f"{_gib(parts['logits'])}; estimated) against {_gib(free)} free on the GPU"
    )
    if need > CHECKPOINT_ABOVE * free:
        return True, f"on: {said}"
    return False, f"off: {said}"


def _gib(n: int) -> str:
    return f"{n / 1024**3:.1f} GiB"


def enable_tf32(device) -> None:
    """TF32 matrix products on an Ampere or newer GPU (fp32 math on tensor cores: ~8x faster, 10-bit mantissa),
    for what autocast leaves in fp32."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def load_model(cfg: TrainerConfig, device, bf16: bool, sharded: bool = False):
    """The model to train, on `device`; under FSDP (`sharded`) it stays where transformers loaded it (the first
    process's CPU memory, the others' meta device with accelerate's CPU-efficient loading) until accelerate shards
    it, so no GPU ever holds the whole model."""
    check_model_dir(cfg.model)
    if os.path.exists(os.path.join(cfg.model, "adapter_config.json")):
        raise UsageProblem(
            f"{cfg.model} is a LoRA adapter: pass its base model as --model and the adapter as "
            "--adapter DIR to continue training it"
        )
    kwargs = {"trust_remote_code": cfg.trust_remote_code, "use_safetensors": True}  # never a pickle
    if cfg.attn_implementation:
        kwargs["attn_implementation"] = cfg.attn_implementation
    # Full fine-tuning keeps fp32 master weights (bf16 only inside autocast); LoRA may hold the frozen base in bf16.
    kwargs["dtype"] = torch.bfloat16 if (bf16 and cfg.method != "full") else torch.float32
    if cfg.qlora:
        try:  # not a dependency of eexp[train] (CUDA only): looked for only when --qlora asks for it
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise UsageProblem("--qlora needs bitsandbytes and a CUDA GPU (pip install bitsandbytes)") from None
        if device.type != "cuda":
            raise UsageProblem("--qlora needs a CUDA GPU (4-bit weights through bitsandbytes)")
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16 if bf16 else torch.float32,
        )
        kwargs["device_map"] = {"": device}
    try:
        model = AutoModelForCausalLM.from_pretrained(cfg.model, **kwargs)
    except ImportError as e:  # flash_attention_2 without flash-attn
        raise UsageProblem(f"--attn-implementation {cfg.attn_implementation}: {first_line(e)}") from None
    except (OSError, ValueError, SafetensorError) as e:
        if cfg.attn_implementation and "attn" in str(e).lower():
            raise UsageProblem(f"--attn-implementation {cfg.attn_implementation}: {first_line(e)}") from None
        raise TrainingError(f"{cfg.model}: cannot load the model: {first_line(e)}") from None
    if not cfg.qlora and not sharded:
        model.to(device)
    model.config.use_cache = False
    if cfg.gradient_checkpointing:
        if hasattr(model, "activation_checkpointing_enable"):  # transformers 5's name (the old one warns)
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.method == "full":
        return model
    if cfg.qlora:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    elif cfg.gradient_checkpointing:
        model.enable_input_require_grads()
    if cfg.adapter:
        if not os.path.exists(os.path.join(cfg.adapter, "adapter_config.json")):
            raise TrainingError(f"{cfg.adapter}: not a LoRA adapter directory (no adapter_config.json)")
        if why := unsafe_adapter(cfg.adapter):
            raise TrainingError(f"{cfg.adapter}: {why}")
        return PeftModel.from_pretrained(model, cfg.adapter, is_trainable=True)
    candidates = linear_module_names(model)
    targets = [t for t in cfg.lora_targets if t != "all-linear"]
    missing = [t for t in targets if t not in candidates and not any(n.endswith(t) for n, _ in model.named_modules())]
    if missing:
        raise UsageProblem(
            f"--lora-targets: {', '.join(missing)} not in this model; candidates: "
            f"{', '.join(candidates)} (or all-linear)"
        )
    lora = LoraConfig(
        r=cfg.lora_rank,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=targets or "all-linear",
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora)
    if bf16:  # trainable adapter weights stay fp32 (optimizer precision); autocast does the bf16 math
        for p in model.parameters():
            if p.requires_grad:
                p.data = p.data.float()
    return model


def launched_accelerator():
    """An accelerate Accelerator when launched by `accelerate launch` (or torchrun), else None: a plain run on one
    CPU or GPU does not need accelerate."""
    launched = "ACCELERATE_MIXED_PRECISION" in os.environ or int(os.environ.get("WORLD_SIZE", "1")) > 1
    if not launched:
        return None
    acc = Accelerator()
    kind = str(acc.distributed_type).rsplit(".", 1)[-1]
    if kind == "DEEPSPEED":
        # DeepSpeed's engine owns gradient accumulation and the optimizer, which this loop does itself (a fresh
        # optimizer per phase, accumulation normalized over the whole update). FSDP's full sharding gives ZeRO-3's
        # memory savings.
        raise UsageProblem(
            "eexp finetune does not run under DeepSpeed; use FSDP "
            "(accelerate launch --config_file recipes/accelerate/fsdp.yaml -m eexp finetune ...)"
        )
    return acc


OOM_ADVICE = (
    "out of memory at step {step} (micro-batch of {batch} examples, up to {length} tokens). Try a smaller "
    "--batch-size with a larger --grad-accum (same effective batch), a lower --max-length, "
    "--gradient-checkpointing, or --lora"
)


def is_out_of_memory(e: BaseException) -> bool:
    if isinstance(e, torch.OutOfMemoryError):
        return True
    text = str(e)
    return isinstance(e, RuntimeError) and (
        "out of memory" in text or "can't allocate memory" in text or "DefaultCPUAllocator" in text
    )
