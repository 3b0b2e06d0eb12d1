"""Throughput of world-model-data and mix, and the peak memory of the stages that stream records.

    .venv/bin/python bench/bench_data.py [--records 200000]

Each stage runs as a real `eexp` process (pinned to one core with taskset when available) on generated records;
the baseline beside it is the floor for any JSONL stage: a process that only parses and re-serializes every line
with orjson. world-model-data also has its own floor (WM_FLOOR): the same examples made with plain dict literals,
no validation. Peak RSS of `mix --shuffle-buffer 10000` is measured at 100k and 1M records, and that of
imitation-data, validate, reflect --reflector grounded and branch at N and N/10 records: it should stay flat.
"""

from __future__ import annotations

import argparse
import gc
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
    state = {
        "goal": f"i need a red cotton t-shirt in size m, under {20 + i % 50} dollars",
        "history": [{"observation": "[search page] type a query.", "action": "search[red cotton t-shirt]"}],
        "observation": OBS,
        "admissible": ["click[back to search]", "click[next >]", "click[red cotton t-shirt]"],
    }
    alts = [
        {
            "action": f"click[item {k}]",
            "source": "admissible",
            "next_observation": f"[item page] item {k} $9.00",
            "reward": 0.0,
            "done": False,
            "valid": True,
        }
        for k in range(3)
    ]
    return {
        "id": f"{traj}#{i % 4}",
        "source_id": traj,
        "trajectory_id": traj,
        "step": i % 4,
        "env": {"name": "shop", "version": "1", "kwargs": {}},
        "task": {"id": f"train-{i // 4}", "split": "train", "goal": state["goal"]},
        "prefix": ["search[red cotton t-shirt]"],
        "state": state,
        "expert": {
            "action": "click[red cotton t-shirt]",
            "next_observation": "[item page] red cotton t-shirt",
            "reward": 0.0,
            "done": False,
            "valid": True,
        },
        "alternatives": alts,
        "meta": {},
    }


def trajectory(i: int) -> dict:
    """A successful 4-step shop trajectory (the `trajectory` record of eexp/records.py), its goal varying with i."""
    goal = f"i need a red cotton t-shirt in size m, under {20 + i % 50} dollars"
    item = "[item page] red cotton t-shirt $24.00. soft cotton, crew neck. size: s | m | l"
    sizes = ["click[back to search]", "click[s]", "click[m]", "click[l]", "click[buy now]"]
    steps = [
        {
            "observation": "[search page] type a query to search the shop.",
            "action": "search[red cotton t-shirt]",
            "admissible": ["search[red cotton t-shirt]", "search[blue wool sweater]", "search[leather boots]"],
        },
        {
            "observation": OBS,
            "action": "click[red cotton t-shirt]",
            "admissible": [
                "click[back to search]",
                "click[next >]",
                "click[blue cotton t-shirt]",
                "click[red cotton t-shirt]",
                "click[red silk t-shirt]",
            ],
        },
        {"observation": item, "action": "click[m]", "admissible": sizes},
        {"observation": item.replace("| m |", "| [m] |"), "action": "click[buy now]", "admissible": sizes},
    ]
    return {
        "id": f"shop:train-{i:06d}",
        "env": {"name": "shop", "version": "1", "kwargs": {}},
        "task": {"id": f"train-{i:06d}", "split": "train", "goal": goal},
        "steps": steps,
        "final_observation": "[done] you bought red cotton t-shirt (size m) for $24.00.",
        "success": True,
        "score": 1.0,
        "meta": {},
    }


def example(i: int) -> dict:
    return {
        "id": f"ex{i}",
        "source_id": f"t{i // 4}",
        "messages": [
            {"role": "system", "content": "You are an agent in a text environment."},
            {"role": "user", "content": f"Task: find item {i}\n\nCurrent observation:\n{OBS}"},
            {"role": "assistant", "content": f"Action: click[item {i % 7}]"},
        ],
        "meta": {"stage": "imitation-data"},
    }


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


BASELINE = (
    "import sys, orjson\nw = sys.stdout.buffer\n"
    "for l in sys.stdin.buffer:\n    w.write(orjson.dumps(orjson.loads(l)) + b'\\n')\n"
)

# The fair floor of world-model-data: the same job (each outcome -> its 4 examples, as many bytes), done with plain
# dict literals: the state rendered once with f-strings (no clipping), the messages and a meta dict of the same 17 keys
# built from the same fields, one timestamp for the whole run; no validation, no meta filling, no counting, output
# buffered. What any Python implementation of this job pays: parse, build, dump.
WM_FLOOR = r"""
import sys, time, orjson
w = sys.stdout.buffer
now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
system = "Predict what the environment shows after the action. Answer `Observation: <next observation>`."
serializer = ('{"history":3,"max_admissible":60,"max_history_chars":300,"max_observation_chars":1500,'
              '"show_admissible":true}')
for line in sys.stdin.buffer:
    o = orjson.loads(line)
    s, env, oid = o["state"], o["env"], o["id"]
    steps = "\n".join(f"Observation: {h['observation']}\nAction: {h['action']}" for h in s["history"][-3:])
    rendered = (f"Task: {s['goal']}\n\nRecent steps:\n{steps}\n\nCurrent observation:\n{s['observation']}\n\n"
                "Admissible actions:\n" + "\n".join(s["admissible"]))
    for tag, t in [("expert", o["expert"]), *enumerate(o["alternatives"])]:
        w.write(orjson.dumps({
            "id": f"wm:{oid}:{tag}", "source_id": oid,
            "messages": [{"role": "system", "content": system},
                         {"role": "user", "content": f"{rendered}\n\nAction: {t['action']}"},
                         {"role": "assistant", "content": "Observation: " + t["next_observation"]}],
            "meta": {"stage": "world-model-data", "kind": "iwm", "eexp_version": "0.1.0", "env": env["name"],
                     "env_version": env["version"], "task_id": o["task"]["id"], "trajectory_id": o["trajectory_id"],
                     "step": o["step"], "action": t["action"], "action_source": t.get("source", "expert"),
                     "model": "", "model_sha256": "", "reflector": "", "seed": t.get("seed") or 0,
                     "serializer": serializer, "extra": "", "created_utc": now}}) + b"\n")
"""


def world_model_rate(records: int) -> dict:
    """Input records/s of `eexp world-model-data` and of the orjson parse+dump baseline on the same outcomes."""
    eexp = [*one_core(), sys.executable, "-m", "eexp"]
    with tempfile.TemporaryDirectory() as tmp:
        outcomes = Path(tmp) / "outcomes.jsonl"
        generate(outcomes, outcome, records)
        base, _ = timed([*one_core(), sys.executable, "-c", BASELINE], outcomes)
        floor, _ = timed([*one_core(), sys.executable, "-c", WM_FLOOR], outcomes)
        s, rss = timed([*eexp, "world-model-data", "-q", str(outcomes)])
        one = Path(tmp) / "one.jsonl"
        generate(one, outcome, 1)
        startup, _ = timed([*eexp, "world-model-data", "-q", str(one)])  # start-up and imports, one record
        in_bytes = outcomes.stat().st_size
        sample = Path(tmp) / "sample.jsonl"
        generate(sample, outcome, 100)
        out_bytes = len(
            subprocess.run([*eexp, "world-model-data", "-q", str(sample)], capture_output=True, check=True).stdout
        )
        with open(sample, "rb") as f:
            floor_bytes = len(
                subprocess.run([sys.executable, "-c", WM_FLOOR], stdin=f, capture_output=True, check=True).stdout
            )
    # world-model-data writes 4 examples per outcome; records/s counts inputs
    return {
        "records": records,
        "eexp_rps": records / s,
        "baseline_rps": records / base,
        "seconds": s,
        "floor_rps": records / floor,
        "startup_s": startup,
        "peak_rss_mb": rss,
        "in_bytes_per_record": in_bytes / records,
        "out_bytes_per_in": out_bytes / 100,
        "floor_out_bytes_per_in": floor_bytes / 100,
    }


def world_model_breakdown(records: int) -> dict:
    """Where world-model-data's time goes, in this process on the same generated outcomes: microseconds per input
    record to parse the line, validate it (what the command's runner does), make its examples (the stage; its
    example_meta call timed apart) and dump them; against one parse + one dump of the line (the baseline).

    The cyclic GC is off while it runs: holding every parsed record and example at once (unlike the streaming stage,
    which lets each go) makes its collections walk them all, and more than doubled the parse and stage figures."""
    from eexp.prompts import Serializer
    from eexp.records import example_meta, expect
    from eexp.stages.world_model import world_model_examples

    lines = [orjson.dumps(outcome(i)) for i in range(records)]
    serializer, check = Serializer(), expect("outcome")
    t = {}
    was_enabled = gc.isenabled()
    gc.disable()
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
        example_meta(
            stage="world-model-data",
            kind="iwm",
            env=r["env"]["name"],
            env_version=r["env"]["version"],
            task_id=r["task"]["id"],
            trajectory_id=r["trajectory_id"],
            step=r["step"],
            serializer=serializer.json,
        )
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
    if was_enabled:
        gc.enable()
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


# The other stages that stream records without a model: (label, eexp arguments, record maker, divisor of N). Their
# peak RSS should not grow with the input. reflect's grounded writer and filters take ~0.6 ms per outcome and branch
# ~0.2 ms per trajectory (4 states), so they run on N/10 records to keep the section short. branch opens the shop
# environment once, to canonicalize actions; it takes no step. validate reads the same trajectories as
# imitation-data. (mix --dedup is left out: it keeps a digest per distinct example by design.)
STREAMING_STAGES = [
    ("imitation-data", ["imitation-data"], trajectory, 1),
    ("validate", ["validate"], trajectory, 1),
    ("reflect --reflector grounded", ["reflect", "--reflector", "grounded"], outcome, 10),
    ("branch -k 2 (shop env, no step)", ["branch", "-k", "2"], trajectory, 10),
]
PLURAL = {trajectory: "trajectories", outcome: "outcomes"}


def streaming_peak_rss(n: int) -> dict[str, dict]:
    """label -> {records, kind, peak_rss_mb, rps (input records/s)} of each STREAMING_STAGES stage over n // divisor
    generated records, output discarded; one core."""
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        files: dict[tuple, Path] = {}
        for label, args, make, divisor in STREAMING_STAGES:
            count = n // divisor
            path = files.get((make, count))
            if path is None:
                path = files[(make, count)] = Path(tmp) / f"{make.__name__}{count}.jsonl"
                generate(path, make, count)
            s, rss = timed([*one_core(), sys.executable, "-m", "eexp", *args, "-q", str(path)])
            out[label] = {"records": count, "kind": PLURAL[make], "peak_rss_mb": rss, "rps": count / s}
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=200_000)
    args = parser.parse_args()
    print(f"{args.records:,} records per input, one core; baseline = orjson parse + dump of every line\n")
    print(f"{'stage':<44} {'records/s':>12} {'baseline rec/s':>15}")
    wm = world_model_rate(args.records)
    label = "world-model-data (4 examples per outcome)"
    print(f"{label:<44} {wm['eexp_rps']:>12,.0f} {wm['baseline_rps']:>15,.0f}")
    label = "  its floor: the same examples, plain dicts"
    print(f"{label:<44} {wm['floor_rps']:>12,.0f}")
    mix = mix_rates(args.records)
    for label, key in [("mix a:3 b:1", "mix_rps"), ("mix a:3 b:1 --shuffle-buffer 10000", "mix_shuffle_rps")]:
        print(f"{label:<44} {mix[key]:>12,.0f} {mix['baseline_rps']:>15,.0f}")

    print("\npeak RSS of mix --shuffle-buffer 10000 (two files of N/2 records each)")
    for n in (100_000, 1_000_000):
        rss, rate = mix_peak_rss(n)
        print(f"  N = {n:>9,}: {rss:7.1f} MiB peak RSS, {rate:,.0f} records/s")

    small, big = args.records // 10, args.records
    print(f"\npeak RSS of the other streaming stages, {big:,} vs {small:,} records (reflect and branch: a tenth)")
    at = {n: streaming_peak_rss(n) for n in (small, big)}
    for label, *_ in STREAMING_STAGES:
        a, b = at[small][label], at[big][label]
        print(
            f"  {label:<34} {b['peak_rss_mb']:7.1f} MiB at {b['records']:>9,} vs {a['peak_rss_mb']:7.1f} MiB at "
            f"{a['records']:>8,} ({b['peak_rss_mb'] / a['peak_rss_mb']:.2f}x), {b['rps']:,.0f} records/s"
        )


if __name__ == "__main__":
    main()
