"""eexp finetune against TRL's SFTTrainer: tokens/s and peak RSS, same model, data, LoRA config and batch size, CPU.

    .venv/bin/python bench/bench_finetune.py [--size small] [--steps 30] [--batch-size 8] [--full] [--threads 2]

Both sides train the same init-model checkpoint on the same shop IL examples for the same number of updates, fp32,
with loss on the assistant answer only (TRL: the conversational prompt/completion format with
completion_only_loss, since the ChatML template has no `{% generation %}` tags for assistant_only_loss), the same
LoRA adapter (rank, alpha, dropout, all linear layers) or full fine-tuning, lr and batch size. Each runs in its own
subprocess, so peak RSS (VmHWM since its exec, imports included: bench/rss.py) is that trainer's alone. Throughput is
the tokens of the examples trained on (eexp's tokenization of the same data, counted the same for both) over the
training loop's wall time (model loading and tokenization excluded). TRL is a dev-only dependency (pip install trl).
Targets: eexp/TRL tokens/s >= 1.0, peak RSS <= TRL's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rss import self_peak_mb  # bench/rss.py, beside this script
from trl_baseline import sft_trainer, tokens_per_example  # bench/trl_baseline.py, beside this script

HERE = Path(__file__).resolve().parent.parent


def make_inputs(work: Path, size: str, n_tasks: int) -> tuple[Path, Path]:
    eexp = [sys.executable, "-m", "eexp"]
    expert = work / "expert.jsonl"
    with open(expert, "wb") as f:
        subprocess.run(eexp + ["expert", "--env", "shop", "-n", str(n_tasks), "-q"], stdout=f, check=True)
    il = work / "il.jsonl"
    with open(il, "wb") as f:
        subprocess.run(eexp + ["imitation-data", str(expert), "-q"], stdout=f, check=True)
    model = work / "model"
    subprocess.run(
        eexp + ["init-model", str(model), "--size", size, "--corpus", str(expert)],
        check=True,
        stderr=subprocess.DEVNULL,
    )
    return il, model


def run_eexp(args) -> dict:
    from eexp.training.config import FinetuneConfig
    from eexp.training.recipe import Finetune

    cfg = FinetuneConfig(
        train_files=[args.data],
        model=args.model,
        output=args.out,
        lora=not args.full,
        lora_rank=16,
        lora_alpha=32,
        lora_dropout=0.0,
        max_steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        max_length=args.max_length,
        seed=0,
        quiet=True,
        save_every=10**9,
    )
    run = Finetune(cfg, echo=lambda m: None)
    run.setup()
    start = time.perf_counter()
    run.train()
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "examples": args.steps * args.batch_size,
        "final_loss": [r for r in map(json.loads, open(Path(args.out) / "metrics.jsonl")) if "loss" in r][-1]["loss"],
    }


def run_trl(args) -> dict:
    trainer, _, losses = sft_trainer(args, seed=0, logging_steps=args.steps)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "examples": args.steps * args.batch_size, "final_loss": losses[-1] if losses else None}


def child(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()
    result = (run_eexp if args.which == "eexp" else run_trl)(args)
    result["peak_rss_mb"] = self_peak_mb()  # since this child's exec, not the parent's RSS at the fork
    print("RESULT " + json.dumps(result))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="small", choices=["tiny", "small"])
    p.add_argument("--tasks", type=int, default=60, help="shop expert trajectories to make the IL data from")
    p.add_argument("--steps", type=int, default=35, help="updates (35 x batch 8 = one epoch of the default data)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=1024)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--full", action="store_true", help="full fine-tuning instead of LoRA")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=1, help="alternate the two this many times; report the best")
    p.add_argument("--which", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    return p


def compare(**options) -> dict:
    """Run eexp and TRL (options: the command-line options, by dest name; the rest default) and return
    {"examples", "tokens_per_example", "best": {"eexp": result, "trl": result}, "rss": {"eexp": MB, "trl": MB}};
    a result has tokens_per_s, seconds, peak_rss_mb, final_loss."""
    args = parser().parse_args([])
    for key, value in options.items():
        setattr(args, key, value)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        il, model = make_inputs(work, args.size, args.tasks)
        per_example = tokens_per_example(str(il), str(model), args.max_length)
        n = sum(1 for _ in open(il))
        results: dict[str, list[dict]] = {"eexp": [], "trl": []}
        for r in range(args.repeats):
            for which in ("eexp", "trl"):
                cmd = [
                    sys.executable,
                    __file__,
                    "--which",
                    which,
                    "--data",
                    str(il),
                    "--model",
                    str(model),
                    "--out",
                    str(work / f"{which}{r}"),
                    "--steps",
                    str(args.steps),
                    "--batch-size",
                    str(args.batch_size),
                    "--max-length",
                    str(args.max_length),
                    "--lr",
                    str(args.lr),
                    "--threads",
                    str(args.threads),
                ] + (["--full"] if args.full else [])
                env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false"}
                proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=HERE)
                line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
                if proc.returncode or not line:
                    raise RuntimeError(f"{which} failed:\n{proc.stderr[-3000:]}")
                res = json.loads(line[0][7:])
                res["tokens_per_s"] = res["examples"] * per_example / res["seconds"]
                results[which].append(res)
    best = {k: max(v, key=lambda x: x["tokens_per_s"]) for k, v in results.items()}
    rss = {k: min(x["peak_rss_mb"] for x in v) for k, v in results.items()}
    return {"examples": n, "tokens_per_example": per_example, "best": best, "rss": rss}


def main() -> None:
    args = parser().parse_args()
    if args.which:
        return child(args)
    try:
        r = compare(**{k: v for k, v in vars(args).items() if v is not None})
    except RuntimeError as e:
        sys.exit(str(e))
    best, rss, n, per_example = r["best"], r["rss"], r["examples"], r["tokens_per_example"]
    print(
        f"model: init-model {args.size}; data: {n} shop IL examples, {per_example:.0f} tokens each on average; "
        f"{'full fine-tuning' if args.full else 'LoRA r16 all-linear'}; batch {args.batch_size}; "
        f"{args.steps} updates; fp32 CPU, {args.threads} threads; best of {args.repeats}"
    )
    print(f"{'':8}{'tokens/s':>12}{'train s':>10}{'peak RSS MB':>14}{'final loss':>12}")
    for k in ("eexp", "trl"):
        b = best[k]
        print(f"{k:8}{b['tokens_per_s']:12.0f}{b['seconds']:10.2f}{rss[k]:14.0f}{b['final_loss']:12.4f}")
    print(
        f"ratio eexp/TRL: tokens/s {best['eexp']['tokens_per_s'] / best['trl']['tokens_per_s']:.2f} "
        f"(target >= 1.0), peak RSS {rss['eexp'] / rss['trl']:.2f} (target <= 1.0)"
    )


if __name__ == "__main__":
    main()
