"""Throughput of world-model-data and mix, and mix's peak memory with --shuffle-buffer.

    .venv/bin/python bench/bench_data.py [--records 200000]

Each stage runs as a real `eexp` process (pinned to one core with taskset when available) on generated records;
the baseline beside it is the floor for any JSONL stage: a process that only parses and re-serializes every line
with orjson. Peak RSS of `mix --shuffle-buffer 10000` is measured at 100k and 1M records: it should stay flat.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

from rss import run_measured  # bench/rss.py, beside this script

OBS = "[results page 1/3] 1. red cotton t-shirt $24.00 | 2. blue cotton t-shirt $12.00 | 3. red silk t-shirt $41.00"


def outcome(i: int) -> dict:
    traj = f"shop:train-{i // 4:06d}"
    state = {"goal": f"i need a red cotton t-shirt in size m, under {20 + i % 50} dollars",
             "history": [{"observation": "[search page] type a query.", "action": "search[red cotton t-shirt]"}],
             "observation": OBS, "admissible": ["click[back to search]", "click[next >]", "click[red cotton t-shirt]"]}
    alts = [{"action": f"click[item {k}]", "source": "admissible", "next_observation": f"[item page] item {k} $9.00",
             "reward": 0.0, "done": False, "valid": True} for k in range(3)]
    return {"id": f"{traj}#{i % 4}", "source_id": traj, "trajectory_id": traj, "step": i % 4,
            "env": {"name": "shop", "version": "1", "kwargs": {}}, "task": {"id": f"train-{i // 4}", "split": "train",
                                                                          "goal": state["goal"]},
            "prefix": ["search[red cotton t-shirt]"], "state": state,
            "expert": {"action": "click[red cotton t-shirt]", "next_observation": "[item page] red cotton t-shirt",
                       "reward": 0.0, "done": False, "valid": True},
            "alternatives": alts, "meta": {}}


def example(i: int) -> dict:
    return {"id": f"ex{i}", "source_id": f"t{i // 4}", "messages": [
        {"role": "system", "content": "You are an agent in a text environment."},
        {"role": "user", "content": f"Task: find item {i}\n\nCurrent observation:\n{OBS}"},
        {"role": "assistant", "content": f"Action: click[item {i % 7}]"}], "meta": {"stage": "imitation-data"}}


def generate(path: Path, make, n: int) -> None:
    with open(path, "wb") as f:
        for i in range(n):
            f.write(orjson.dumps(make(i)) + b"\n")


def one_core() -> list[str]:
    return ["taskset", "-c", "0"] if shutil.which("taskset") else []


def timed(cmd: list[str], stdin_path: Path | None = None) -> tuple[float, float]:
    """(seconds, peak RSS MiB of the command alone: bench/rss.py) for one command, output discarded."""
    seconds, rss, status = run_measured(cmd, stdin_path)
    if status != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}")
    return seconds, rss


BASELINE = ("import sys, orjson\nw = sys.stdout.buffer\n"
            "for l in sys.stdin.buffer:\n    w.write(orjson.dumps(orjson.loads(l)) + b'\\n')\n")


def world_model_rate(records: int) -> dict:
    """Input records/s of `eexp world-model-data` and of the orjson parse+dump baseline on the same outcomes."""
    eexp = [*one_core(), sys.executable, "-m", "eexp"]
    with tempfile.TemporaryDirectory() as tmp:
        outcomes = Path(tmp) / "outcomes.jsonl"
        generate(outcomes, outcome, records)
        base, _ = timed([*one_core(), sys.executable, "-c", BASELINE], outcomes)
        s, rss = timed([*eexp, "world-model-data", "-q", str(outcomes)])
        one = Path(tmp) / "one.jsonl"
        generate(one, outcome, 1)
        startup, _ = timed([*eexp, "world-model-data", "-q", str(one)])   # start-up and imports, one record
        in_bytes = outcomes.stat().st_size
        sample = Path(tmp) / "sample.jsonl"
        generate(sample, outcome, 100)
        out_bytes = len(subprocess.run([*eexp, "world-model-data", "-q", str(sample)], capture_output=True,
                                       check=True).stdout)
    # world-model-data writes 4 examples per outcome; records/s counts inputs
    return {"records": records, "eexp_rps": records / s, "baseline_rps": records / base, "seconds": s,
            "startup_s": startup, "peak_rss_mb": rss, "in_bytes_per_record": in_bytes / records,
            "out_bytes_per_in": out_bytes / 100}


def world_model_breakdown(records: int) -> dict:
    """Where world-model-data's time goes, in this process on the same generated outcomes: microseconds per input
    record to parse the line, validate it (what the command's runner does), make its examples (the stage; its
    example_meta call timed apart) and dump them; against one parse + one dump of the line (the baseline)."""
    from eexp.prompts import Serializer
    from eexp.records import example_meta, expect
    from eexp.stages.world_model import world_model_examples
    lines = [orjson.dumps(outcome(i)) for i in range(records)]
    serializer, check = Serializer(), expect("outcome")
    t = {}
    t0 = time.perf_counter()
    parsed = [orjson.loads(x) for x in lines]
    t["parse"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    for r in parsed:
        check(r)
    t["validate"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    made = [list(world_model_examples(r, serializer)) for r in parsed]
    t["stage"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    for r in parsed:
        example_meta(stage="world-model-data", kind="iwm", env=r["env"]["name"], env_version=r["env"]["version"],
                     task_id=r["task"]["id"], trajectory_id=r["trajectory_id"], step=r["step"],
                     serializer=serializer.json)
    t["meta"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    for examples in made:
        for e in examples:
            orjson.dumps(e)
    t["dump"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    for r in parsed:
        orjson.dumps(r)
    t["baseline_dump"] = time.perf_counter() - t0
    return {k: 1e6 * v / records for k, v in t.items()}


def mix_rates(records: int) -> dict:
    """Records/s of `mix a:3 b:1` with and without --shuffle-buffer 10000, and the parse+dump baseline."""
    eexp = [*one_core(), sys.executable, "-m", "eexp"]
    with tempfile.TemporaryDirectory() as tmp:
        examples = Path(tmp) / "examples.jsonl"
        generate(examples, example, records)
        base, _ = timed([*one_core(), sys.executable, "-c", BASELINE], examples)
        out = {"records": records, "baseline_rps": records / base}
        for key, extra in [("mix_rps", []), ("mix_shuffle_rps", ["--shuffle-buffer", "10000"])]:
            s, _ = timed([*eexp, "mix", f"{examples}:3", f"{examples}:1", *extra])
            out[key] = 2 * records / s
    return out


def mix_peak_rss(n: int) -> tuple[float, float]:
    """(peak RSS MiB, records/s) of `mix --shuffle-buffer 10000` over two files of n/2 records each."""
    eexp = [*one_core(), sys.executable, "-m", "eexp"]
    with tempfile.TemporaryDirectory() as tmp:
        big = Path(tmp) / f"big{n}.jsonl"
        generate(big, example, n // 2)
        s, rss = timed([*eexp, "mix", str(big), str(big), "--shuffle-buffer", "10000"])
    return rss, n / s


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=200_000)
    args = parser.parse_args()
    print(f"{args.records:,} records per input, one core; baseline = orjson parse + dump of every line\n")
    print(f"{'stage':<44} {'records/s':>12} {'baseline rec/s':>15}")
    wm = world_model_rate(args.records)
    label = "world-model-data (4 examples per outcome)"
    print(f"{label:<44} {wm['eexp_rps']:>12,.0f} {wm['baseline_rps']:>15,.0f}")
    mix = mix_rates(args.records)
    for label, key in [("mix a:3 b:1", "mix_rps"), ("mix a:3 b:1 --shuffle-buffer 10000", "mix_shuffle_rps")]:
        print(f"{label:<44} {mix[key]:>12,.0f} {mix['baseline_rps']:>15,.0f}")

    print("\npeak RSS of mix --shuffle-buffer 10000 (two files of N/2 records each)")
    for n in (100_000, 1_000_000):
        rss, rate = mix_peak_rss(n)
        print(f"  N = {n:>9,}: {rss:7.1f} MiB peak RSS, {rate:,.0f} records/s")


if __name__ == "__main__":
    main()
