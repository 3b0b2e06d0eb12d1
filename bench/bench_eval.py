"""Episodes per minute of `eexp eval` on shop with a tiny GGUF policy, at -j 1 and -j 2, with the random policy as
the baseline (the cost of the environment and of eval itself, no model).

Each figure is one whole `eexp eval` process, model loading and worker start-up included, since that is what a user
waits for. Run: .venv/bin/python bench/bench_eval.py [-n 16] [--gguf model.gguf]
Without --gguf a tiny model is built first (`eexp init-model --size tiny` + `eexp export`), in a temporary folder.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

EEXP = [sys.executable, "-m", "eexp"]


def run(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - start


def tiny_gguf(folder: str) -> str:
    ckpt, gguf = os.path.join(folder, "tiny"), os.path.join(folder, "tiny.gguf")
    subprocess.run(
        EEXP + ["init-model", ckpt, "--arch", "qwen2", "--size", "tiny", "--seed", "0"],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    subprocess.run(
        EEXP + ["export", ckpt, "-o", gguf], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    return gguf


def episodes_per_min(n: int, gguf: str | None = None, threads: int = 0, policies=("random", "gguf")) -> dict:
    """{"gguf_mb", policy: {jobs: {"seconds", "episodes_per_min"}}} for `eexp eval` on n shop test episodes at -j 1
    and -j 2, for the random policy and a GGUF (a tiny one built here when gguf is None)."""
    with tempfile.TemporaryDirectory() as folder:
        gguf = gguf or tiny_gguf(folder)
        out: dict = {"gguf_file": os.path.basename(gguf), "gguf_mb": os.path.getsize(gguf) / 1e6}
        specs = {"random": ("random", []), "gguf": (gguf, ["--policy-arg", f"n_threads={threads}"] if threads else [])}
        for label in policies:
            spec, extra = specs[label]
            for jobs in (1, 2):
                cmd = EEXP + ["eval", "--policy", spec, "--env", "shop", "-n", str(n), "-j", str(jobs), "-q"] + extra
                seconds = run(cmd)
                out.setdefault(label, {})[jobs] = {"seconds": seconds, "episodes_per_min": n / seconds * 60}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=16, help="episodes per measurement (shop test split, in order)")
    parser.add_argument("--gguf", help="the GGUF policy (default: a tiny model built here)")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="llama.cpp threads per worker (--policy-arg n_threads; 0: eval's default, which at -j 1 "
        "is llama.cpp's and at -j N splits the cores between the workers)",
    )
    args = parser.parse_args()
    r = episodes_per_min(args.n, args.gguf, args.threads)
    print(
        f"shop test, {args.n} episodes (max 15 steps), {os.cpu_count()} CPUs, policy {r['gguf_file']} "
        f"({r['gguf_mb']:.2f} MB), n_threads={args.threads}"
    )
    print(f"{'policy':<12} {'-j':>3} {'seconds':>8} {'episodes/min':>13} {'vs -j 1':>8}")
    for label, key in [("random", "random"), ("tiny gguf", "gguf")]:
        base = r[key][1]["episodes_per_min"]
        for jobs in (1, 2):
            x = r[key][jobs]
            print(
                f"{label:<12} {jobs:>3} {x['seconds']:8.2f} {x['episodes_per_min']:13.1f} "
                f"{x['episodes_per_min'] / base:7.2f}x",
                flush=True,
            )


if __name__ == "__main__":
    main()
