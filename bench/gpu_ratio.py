"""The GPU check's ratio (issue 62): eexp's fine-tune against a plain PEFT loop, and N eexp fine-tunes at once.

    .venv/bin/python bench/gpu_check.py --ratio [--steps 30] [--parallel 8,16] [--mps] [--out gpu-ratio.json]
    .venv/bin/python bench/gpu_check.py --ratio --tiny --device cpu     # a dry run of the script itself, on CPU

For SmolLM2-135M's shape and a 1B shape (Llama-3.2-1B's body on SmolLM2's 49,152-token vocabulary), both with random
weights (nothing from the Hub: the tokenizer is `eexp init-model`'s, the embedding has every row of the vocabulary),
on the same shop IL examples (the expert's 40 tasks), LoRA rank 16 on every linear layer, --max-length 1024,
batches of 8:

    eexp          eexp finetune --lora --batch-size 8 (its defaults: bf16 autocast on the GPU, gradient
                  checkpointing as its memory estimate decides: the card says which)
    eexp-packing  the same with --packing (and --attn-implementation flash_attention_2 where flash-attn is installed)
    plain         a plain loop, no eexp code in it: the same model folder, PEFT LoRA and tokens, bf16 autocast (the
                  frozen base in bf16, the adapter in fp32, as eexp), AdamW, batches of 8 by length, transformers' own
                  loss (labels -100 outside the targets)
    eexp xN       (the 135M shape) N `eexp finetune` processes started together: their tokens/s summed, for each
                  N of --parallel (8 by default; `--parallel 8,16` both)
    eexp xN MPS   with --mps, the same again under NVIDIA's Multi-Process Service (nvidia-cuda-mps-control -d,
                  started before these rows and stopped after them)

Every row runs in a process of its own under this one (one process tree), one after another, but the N processes of
the last. Tokens/s count non-padding input tokens (as eexp's metrics do; the plain loop counts the same), over the
updates after the first --warm ones (compilation, allocator warm-up). `--tiny` shrinks both shapes to a few layers
of width 64 and the steps to a handful: a dry run of this script, its figures meaningless.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

# (hidden, MLP width, layers, heads, key/value heads, rope theta): SmolLM2-135M's and Llama-3.2-1B's bodies
SHAPES = {"135M": (576, 1536, 30, 9, 3, 100000.0), "1B": (2048, 8192, 16, 32, 8, 500000.0)}
TINY = {"135M": (64, 128, 2, 2, 1, 10000.0), "1B": (96, 256, 3, 4, 2, 10000.0)}
VOCAB = 49152
BATCH, MAX_LENGTH, RANK = 8, 1024, 16


def shape_folder(work: Path, base: Path, name: str, tiny: bool) -> Path:
    """A checkpoint folder of the shape `name` with random weights (seed 0) and `base`'s tokenizer and card."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    out = work / f"shape-{name}"
    if (out / "config.json").exists():
        return out
    hidden, inner, layers, heads, kv, theta = (TINY if tiny else SHAPES)[name]
    ref = json.loads((base / "config.json").read_text())
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=hidden,
        intermediate_size=inner,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        rope_theta=theta,
        max_position_embeddings=8192,
        tie_word_embeddings=True,
        rms_norm_eps=1e-5,
        bos_token_id=None,
        eos_token_id=ref["eos_token_id"],
        pad_token_id=ref["pad_token_id"],
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    tmp = work / f".shape-{name}"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(base, tmp, ignore=shutil.ignore_patterns("*.safetensors", "config.json"))
    model.save_pretrained(tmp, safe_serialization=True)
    os.replace(tmp, out)
    return out


def eexp_rates(out: Path, warm: int) -> dict:
    """tokens/s of a finished eexp run: its log windows after the first `warm` updates, weighted by their time."""
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "tokens_per_s" in r]
    late = [r for r in rows if r["step"] > warm] or rows[-1:]
    ckpt = (yaml.safe_load((out / "card.yaml").read_text()) or {}).get("gradient_checkpointing")
    return {"tokens_per_s": round(sum(r["tokens_per_s"] for r in late) / len(late), 1), "gradient_checkpointing": ckpt}


def eexp_command(il: Path, model: Path, out: Path, steps: int, warm: int, device: str, *extra: str) -> list[str]:
    log_every = max(1, min(warm, 5))
    return [
        sys.executable,
        "-m",
        "eexp",
        "finetune",
        str(il),
        "--model",
        str(model),
        "-o",
        str(out),
        "--lora",
        "--lora-rank",
        str(RANK),
        "--batch-size",
        str(BATCH),
        "--max-length",
        str(MAX_LENGTH),
        "--max-steps",
        str(steps),
        "--log-every",
        str(log_every),
        "-q",
        *(["--precision", "fp32"] if device == "cpu" else []),
        *extra,
    ]


def run_eexp(il: Path, model: Path, out: Path, steps: int, warm: int, device: str, *extra: str) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    env = dict(os.environ, **({"CUDA_VISIBLE_DEVICES": ""} if device == "cpu" else {}))
    proc = subprocess.run(
        eexp_command(il, model, out, steps, warm, device, *extra), capture_output=True, text=True, env=env
    )
    if proc.returncode != 0:
        return {"failed": (proc.stderr.strip().splitlines() or ["?"])[-1]}
    return eexp_rates(out, warm)


def run_parallel(il: Path, model: Path, work: Path, n: int, steps: int, warm: int, device: str) -> dict:
    """N eexp fine-tunes of `model` started together (seeds 0..N-1, as a comparison's seeds), their rates summed."""
    env = dict(os.environ, **({"CUDA_VISIBLE_DEVICES": ""} if device == "cpu" else {}))
    outs = [work / f"parallel-{k}" for k in range(n)]
    procs = []
    start = time.perf_counter()
    for k, out in enumerate(outs):
        shutil.rmtree(out, ignore_errors=True)
        procs.append(
            subprocess.Popen(
                eexp_command(il, model, out, steps, warm, device, "--seed", str(k)),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
        )
    failed = [p.communicate()[1].strip().splitlines()[-1:] for p in procs if p.wait() != 0]
    wall = time.perf_counter() - start
    if failed:
        return {"failed": (failed[0] or ["?"])[0]}
    each = [eexp_rates(out, warm)["tokens_per_s"] for out in outs]
    return {
        "processes": n,
        "aggregate_tokens_per_s": round(sum(each), 1),
        "each_min": min(each),
        "each_max": max(each),
        "wall_s_with_start_up": round(wall, 1),
    }


def plain_loop(il: str, model_dir: str, steps: int, warm: int, device: str) -> dict:
    """The plain PEFT loop (runs in a child process: `--plain`). The examples are eexp's tokens of il.jsonl (the
    same ids and targets eexp trains), so both sides train on the same data; the loop itself is transformers, PEFT
    and torch alone."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from eexp.training.data import encode

    tok = AutoTokenizer.from_pretrained(model_dir)
    examples = []
    for line in Path(il).read_text().splitlines():
        try:
            e = encode(tok, json.loads(line)["messages"], MAX_LENGTH)
        except ValueError:
            continue
        examples.append((e.ids, [t if w else -100 for t, w in zip(e.ids, e.weights)]))
    rng = random.Random(0)
    order = sorted(range(len(examples)), key=lambda j: len(examples[j][0]))
    batches = [order[k : k + BATCH] for k in range(0, len(order), BATCH)]
    rng.shuffle(batches)
    cuda = device == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device)
    model = get_peft_model(
        model, LoraConfig(r=RANK, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM")
    )
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    tokens, t0 = 0, None
    for step in range(steps):
        if step == warm:
            if cuda:
                torch.cuda.synchronize()
            t0, tokens = time.perf_counter(), 0
        batch = [examples[j] for j in batches[step % len(batches)]]
        width = max(len(ids) for ids, _ in batch)
        ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in batch], device=device)
        labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in batch], device=device)
        mask = torch.tensor([[1] * len(ids_) + [0] * (width - len(ids_)) for ids_, _ in batch], device=device)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=cuda):
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        tokens += sum(len(i) for i, _ in batch)
    if cuda:
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    peak = round(torch.cuda.max_memory_allocated() / 1024**3, 2) if cuda else None
    return {"tokens_per_s": round(tokens / elapsed, 1), "peak_gpu_gib": peak, "final_loss": round(float(loss), 4)}


def run_plain(il: Path, model: Path, steps: int, warm: int, device: str) -> dict:
    env = dict(os.environ, **({"CUDA_VISIBLE_DEVICES": ""} if device == "cpu" else {}))
    proc = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).with_name("gpu_check.py")),
            "--plain",
            str(il),
            "--model",
            str(model),
            "--steps",
            str(steps),
            "--warm",
            str(warm),
            "--device",
            device,
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    if proc.returncode != 0:
        return {"failed": (proc.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def ratio(work: Path, il: Path, base: Path, args) -> dict:
    """Every row of both shapes, printed as it comes; the figures as a dict."""
    try:
        import flash_attn  # noqa: F401

        flash = ["--attn-implementation", "flash_attention_2"]
    except ImportError:
        flash = []
    results = {"shapes": {}, "flash_attn": bool(flash)}
    for name in ("135M", "1B"):
        model = shape_folder(work, base, name, args.tiny)
        rows = {"eexp": run_eexp(il, model, work / f"eexp-{name}", args.steps, args.warm, args.device)}
        print(json.dumps({"shape": name, "row": "eexp", **rows["eexp"]}), flush=True)
        rows["eexp-packing"] = run_eexp(
            il,
            model,
            work / f"packed-{name}",
            args.steps,
            args.warm,
            args.device,
            "--packing",
            *(flash if args.device == "cuda" else []),
        )
        print(json.dumps({"shape": name, "row": "eexp-packing", **rows["eexp-packing"]}), flush=True)
        rows["plain"] = run_plain(il, model, args.steps, args.warm, args.device)
        print(json.dumps({"shape": name, "row": "plain", **rows["plain"]}), flush=True)
        plain = rows["plain"].get("tokens_per_s")
        for row in ("eexp", "eexp-packing"):
            mine = rows[row].get("tokens_per_s")
            rows[row]["ratio_to_plain"] = round(mine / plain, 3) if mine and plain else None
        if name == "135M":
            for mps in (False, True) if args.mps else (False,):
                if mps:
                    # NVIDIA's Multi-Process Service: the processes' kernels share the GPU at once instead of
                    # taking turns; started here, stopped after the rows, so the rows without it come first
                    subprocess.run(["nvidia-cuda-mps-control", "-d"], check=True)
                try:
                    for n in args.parallel:
                        row = f"eexp x{n}" + (" MPS" if mps else "")
                        rows[row] = run_parallel(il, model, work, n, args.steps, args.warm, args.device)
                        print(json.dumps({"shape": name, "row": row, **rows[row]}), flush=True)
                finally:
                    if mps:
                        subprocess.run(["nvidia-cuda-mps-control"], input="quit\n", text=True, check=True)
        results["shapes"][name] = rows
    return results


def table(results: dict) -> str:
    lines = [f"{'shape':<6} {'row':<14} {'tokens/s':>10} {'x plain':>8}  notes"]
    for name, rows in results["shapes"].items():
        for row, r in rows.items():
            rate = r.get("tokens_per_s", r.get("aggregate_tokens_per_s"))
            notes = (
                r.get("failed")
                or r.get("gradient_checkpointing")
                or (f"each {r['each_min']}-{r['each_max']}" if "each_min" in r else "")
                or (f"peak {r['peak_gpu_gib']} GiB" if r.get("peak_gpu_gib") else "")
            )
            ratio_ = r.get("ratio_to_plain")
            lines.append(
                f"{name:<6} {row:<14} {'' if rate is None else rate:>10} {'' if ratio_ is None else ratio_:>8}  {notes}"
            )
    return "\n".join(lines)
