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
    subprocess.run(EEXP + ["init-model", ckpt, "--arch", "qwen2", "--size", "tiny", "--seed", "0"], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    subprocess.run(EEXP + ["export", ckpt, "-o", gguf], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return gguf


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=16, help="episodes per measurement (shop test split, in order)")
    parser.add_argument("--gguf", help="the GGUF policy (default: a tiny model built here)")
    parser.add_argument("--threads", type=int, default=0,
                        help="llama.cpp threads per worker (--policy-arg n_threads; 0: eval's default, which at -j 1 "
                             "is llama.cpp's and at -j N splits the cores between the workers)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        gguf = args.gguf or tiny_gguf(folder)
        size = os.path.getsize(gguf)
        print(f"shop test, {args.n} episodes (max 15 steps), {os.cpu_count()} CPUs, policy {os.path.basename(gguf)} "
              f"({size / 1e6:.2f} MB), n_threads={args.threads}")
        print(f"{'policy':<12} {'-j':>3} {'seconds':>8} {'episodes/min':>13} {'vs -j 1':>8}")
        for label, spec, extra in [("random", "random", []),
                                   ("tiny gguf", gguf, ["--policy-arg", f"n_threads={args.threads}"]
                                    if args.threads else [])]:
            base = None
            for jobs in (1, 2):
                cmd = EEXP + ["eval", "--policy", spec, "--env", "shop", "-n", str(args.n), "-j", str(jobs),
                              "-q"] + extra
                seconds = run(cmd)
                rate = args.n / seconds * 60
                base = base or rate
                print(f"{label:<12} {jobs:>3} {seconds:8.2f} {rate:13.1f} {rate / base:7.2f}x", flush=True)


if __name__ == "__main__":
    main()
