"""Every benchmark in one run, one table: eexp's figure, a baseline measured in the same run, the ratio, the target.

    bench/run [--quick] [--json] [--only data,envs,...] [--list] [--sw-states N]   (make bench: no options)

Each section below calls the function of one bench/bench_*.py script that returns numbers (those scripts keep their
own command lines), in a child process of its own: a section that fails or runs past its time limit becomes rows
that say so, and the run goes on. The default size fits 15 minutes on 2 cores; --quick is for trying the suite out
(a few minutes; its figures are noisier and some rows are smaller than their target's conditions).

Every row carries the 1-minute load average at the start of its section: the machines this runs on are shared, and a
busy neighbour only ever slows a figure down. Status: met / missed (with the measured reason where there is one),
info (the issue sets no target for that row), skipped (with the reason), failed (with the error's last line).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
THREADS = int(os.environ.get("BENCH_THREADS") or 2)  # per model: llama.cpp n_threads, torch threads (--threads)
SW_STATES = int(os.environ.get("BENCH_SW_STATES") or 0)  # rollout's ScienceWorld -j row at about this many states


# ---- rows -----------------------------------------------------------------------------------------------------


def fmt(value: float, unit: str) -> str:
    if value >= 1000:
        text = f"{value:,.0f}"
    elif value >= 100:
        text = f"{value:.0f}"
    elif value >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.3g}"
    return f"{text} {unit}".strip()


def row(
    what: str,
    eexp: float,
    eexp_unit: str,
    baseline: float | None,
    baseline_label: str,
    ratio: float | None,
    target: str,
    ok: bool | None,
    reason: str = "",
    *,
    baseline_unit: str | None = None,
) -> dict:
    """One table row. ok None: the issue sets no target for it (info)."""
    return {
        "what": what,
        "eexp": eexp,
        "eexp_unit": eexp_unit,
        "eexp_text": fmt(eexp, eexp_unit),
        "baseline": baseline,
        "baseline_label": baseline_label,
        "baseline_text": "" if baseline is None else f"{fmt(baseline, baseline_unit or eexp_unit)} ({baseline_label})",
        "ratio": ratio,
        "target": target,
        "status": "info" if ok is None else ("met" if ok else "missed"),
        "reason": reason,
    }


def skipped(what: str, target: str, reason: str) -> dict:
    return {
        "what": what,
        "eexp": None,
        "eexp_text": "",
        "baseline": None,
        "baseline_text": "",
        "ratio": None,
        "target": target,
        "status": "skipped",
        "reason": reason,
    }


# ---- sections: each returns its rows -------------------------------------------------------------------------------


def not_installed(env: str) -> str | None:
    """Why ENV's section cannot run here (its package is missing), or None."""
    from eexp.envs.base import env_class
    from eexp.errors import EnvError

    try:
        env_class(env)
    except EnvError as e:
        return f"{env} is not installed: {e}"
    return None


def data(quick: bool) -> list[dict]:
    import bench_data

    n = 20_000 if quick else 200_000
    wm = bench_data.world_model_rate(n)
    startup = wm["startup_s"]
    steady = n / max(wm["seconds"] - startup, 1e-9)
    b = bench_data.world_model_breakdown(n // 10)
    rows = [
        row(
            f"world-model-data, input records/s ({n:,} outcomes, 1 core)",
            wm["eexp_rps"],
            "rec/s",
            wm["baseline_rps"],
            "orjson parse+dump",
            wm["eexp_rps"] / wm["baseline_rps"],
            ">= 50,000 rec/s",
            wm["eexp_rps"] >= 50_000,
            f"writes 4 examples (~{wm['out_bytes_per_in'] / 1000:.1f} kB) per input line vs 1 line for the "
            f"baseline; process start-up {startup:.2f} s of {wm['seconds']:.2f} s (without it {steady:,.0f} "
            f"rec/s); in-process (GC off), us per input: parse {b['parse']:.1f}, validate {b['validate']:.1f}, "
            f"make the 4 examples {b['stage']:.1f} (of which example_meta {b['meta']:.1f}), dump them "
            f"{b['dump']:.1f}; the baseline's dump of the line {b['baseline_dump']:.1f}: 50,000 rec/s leaves 20 "
            f"us for all of it",
        )
    ]
    # the fair floor: the same job (the same 4 examples, as many bytes) in plain Python, no validation or meta filling
    extra_us = 1e6 / wm["eexp_rps"] - 1e6 / wm["floor_rps"]
    with_validation = 1e6 / (1e6 / wm["floor_rps"] + b["validate"])  # the floor, validating every input as eexp must
    rows.append(
        row(
            "world-model-data vs the same examples from plain dict literals (its floor)",
            wm["eexp_rps"],
            "rec/s",
            wm["floor_rps"],
            "floor script",
            wm["eexp_rps"] / wm["floor_rps"],
            "(the bound)",
            None,
            f"the floor (bench_data.WM_FLOOR) parses each outcome and writes its 4 examples "
            f"(~{wm['floor_out_bytes_per_in'] / 1000:.1f} kB, as eexp's) from dict literals: state rendered "
            f"once, no clipping, no validation, no meta filling, one timestamp, buffered output; >= 50,000 "
            f"rec/s is {50_000 / wm['floor_rps']:.0%} of it. eexp pays {extra_us:.1f} us more per input "
            f"(validation, the reader's checks, meta filling, a flush per input, its start-up "
            f"{startup:.2f} s); the floor plus eexp's validation alone ({b['validate']:.1f} us): "
            f"{with_validation:,.0f} rec/s",
        )
    )
    small, big = (10_000, 100_000) if quick else (100_000, 1_000_000)
    rss_small, _ = bench_data.mix_peak_rss(small)
    rss_big, rate = bench_data.mix_peak_rss(big)
    rows.append(
        row(
            f"mix --shuffle-buffer 10000 peak RSS, {big:,} vs {small:,} records",
            rss_big,
            "MiB",
            rss_small,
            f"{small // 1000}k records",
            rss_big / rss_small,
            "flat (<= 1.1x)",
            rss_big / rss_small <= 1.1,
            f"{rate:,.0f} rec/s at {big:,}",
        )
    )
    wm_small = bench_data.world_model_rate(n // 10)
    rows.append(
        row(
            f"world-model-data peak RSS, {n:,} vs {n // 10:,} outcomes",
            wm["peak_rss_mb"],
            "MiB",
            wm_small["peak_rss_mb"],
            f"{n // 10:,} outcomes",
            wm["peak_rss_mb"] / wm_small["peak_rss_mb"],
            "flat (<= 1.1x)",
            wm["peak_rss_mb"] / wm_small["peak_rss_mb"] <= 1.1,
        )
    )
    # the other stages that stream records without a model (reflect and branch on a tenth as many)
    at_small, at_big = bench_data.streaming_peak_rss(n // 10), bench_data.streaming_peak_rss(n)
    for label, *_ in bench_data.STREAMING_STAGES:
        a, b = at_small[label], at_big[label]
        ratio = b["peak_rss_mb"] / a["peak_rss_mb"]
        per_record = (b["peak_rss_mb"] - a["peak_rss_mb"]) * 2**20 / (b["records"] - a["records"])
        rows.append(
            row(
                f"{label} peak RSS, {b['records']:,} vs {a['records']:,} {b['kind']}",
                b["peak_rss_mb"],
                "MiB",
                a["peak_rss_mb"],
                f"{a['records']:,} {a['kind']}",
                ratio,
                "flat (<= 1.1x)",
                ratio <= 1.1,
                f"{b['rps']:,.0f} rec/s at {b['records']:,}; {per_record:+.0f} bytes per extra record",
            )
        )
    return rows


def envs(quick: bool) -> list[dict]:
    import bench_envs

    rate, _ = bench_envs.steps_per_second("shop", 30 if quick else 150, with_admissible=True)
    return [
        row(
            "shop env steps/s, admissible() listed every step",
            rate,
            "steps/s",
            None,
            "",
            None,
            ">= 5,000 steps/s",
            rate >= 5000,
        )
    ]


def textworld(quick: bool) -> list[dict]:
    what = "TextWorld: reach the last expert step again"
    if reason := not_installed("textworld"):
        return [skipped(what, "restore < replay", reason)]
    import bench_envs_real

    f = bench_envs_real.textworld_figures(3 if quick else 10)
    reason = (
        ""
        if f["restore_ms"] < f["replay_ms"]
        else (
            f"restore() is jericho's reset + set_state and a copy of TextWorld's quest progression (snapshot() "
            f"{f['snapshot_ms']:.1f} ms; TextWorld's own copy(), which restore() used before, {f['copy_ms']:.0f} ms), "
            f"against {f['i']} replayed steps at {f['steps_per_s']:.0f} steps/s: a miss here is the machine's load"
        )
    )
    return [
        row(
            f"{what} (step {f['i']}), restore(snapshot)",
            f["restore_ms"],
            "ms",
            f["replay_ms"],
            "reset+replay",
            f["restore_ms"] / f["replay_ms"],
            "restore < replay (< 1.0x)",
            f["restore_ms"] < f["replay_ms"],
            reason,
        )
    ]


def alfworld(quick: bool) -> list[dict]:
    what = "ALFWorld episodes as eval plays them (admissible list each step), CPU-s"
    if reason := not_installed("alfworld"):
        return [skipped(what, "< 1.0x TextWorld's own", reason)]
    import bench_envs_real

    f = bench_envs_real.alfworld_figures(games=2 if quick else 6)
    ratio, warm = f["ours_s"] / f["textworld_s"], f["ours_warm_s"] / f["textworld_s"]
    return [
        row(
            f"{what}: {f['episodes']} episodes, {f['steps']} steps, the same observations and lists",
            f["ours_s"],
            "CPU-s",
            f["textworld_s"],
            "TextWorld's own code",
            ratio,
            "< 1.0x TextWorld's own",
            ratio < 1.0,
            "the games' PDDL translated (an empty EEXP_CACHE)",
        ),
        row(
            f"{what}, the games' translations read back from EEXP_CACHE (every later episode of a game)",
            f["ours_warm_s"],
            "CPU-s",
            f["textworld_s"],
            "TextWorld's own code",
            warm,
            "info",
            None,
        ),
    ]


def scienceworld(quick: bool) -> list[dict]:
    what = "ScienceWorld prefix replay, steps/s"
    if reason := not_installed("scienceworld"):
        return [skipped(what, ">= 200 steps/s", reason)]
    import bench_envs_real

    f = bench_envs_real.scienceworld_figures(1 if quick else 3)
    replay_no_reset = f["gold_steps"] / (f["gold_steps"] / f["replay_steps_per_s"] - f["reset_s"])
    reason = (
        ""
        if f["replay_steps_per_s"] >= 200
        else (
            f"each replay starts with a reset ({f['reset_s'] * 1000:.0f} ms); "
            f"without it {replay_no_reset:.0f} steps/s: "
            f"the bound is the simulator's own step, {1000 / replay_no_reset:.1f} ms each (200 steps/s needs 5 ms)"
        )
    )
    return [
        row(
            what + f" ({f['gold_steps']}-step boil task, reset included)",
            f["replay_steps_per_s"],
            "steps/s",
            f["package_steps_per_s"],
            "package env.step",
            f["replay_steps_per_s"] / f["package_steps_per_s"],
            ">= 200 steps/s",
            f["replay_steps_per_s"] >= 200,
            reason,
        )
    ]


def miniwob(quick: bool) -> list[dict]:
    what = "MiniWoB steps/s in a real headless Chromium"
    try:
        import miniwob  # noqa: F401

        from eexp.envs.browser import BrowserMissing, find_executables

        find_executables()
    except (ImportError, BrowserMissing) as e:
        return [skipped(what, "info", f"no browser for MiniWoB: {e}")]
    import bench_miniwob

    f = bench_miniwob.figures(1 if quick else 3)
    return [
        row(
            what + " (oracle episodes of 4 task types, resets not counted)",
            f["steps_per_s"],
            "steps/s",
            f["package_steps_per_s"],
            "miniwob's gymnasium env",
            f["steps_per_s"] / f["package_steps_per_s"],
            "info",
            None,
        ),
        row(
            f"MiniWoB reach step {f['prefix']} of {f['replay_task']} again: replay (fresh page + prefix)",
            f["replay_ms"],
            "ms",
            f["replay_reset_ms"],
            "the fresh page alone",
            f["replay_ms"] / f["replay_reset_ms"],
            "info",
            None,
            "no exact restore of a live page exists (can_snapshot False): "
            "replay is the only way, and a restore would have to beat the page load",
        ),
        row(
            "MiniWoB reset (a fresh page per episode)",
            f["reset_ms"],
            "ms",
            f["package_reset_ms"],
            "package, page reused",
            f["reset_ms"] / f["package_reset_ms"],
            "info",
            None,
            f"first reset of an instance (ChromeDriver + Chromium start): {f['browser_start_s']:.2f} s",
        ),
    ]


def rollout(quick: bool) -> list[dict]:
    import bench_rollout

    rows = []
    # environment steps of rollout: snapshot vs naive reset+replay, T=100 K=4, counted by the env
    k, t = 4, 100
    task = next(x for x in bench_rollout.LineEnv().tasks("train") if x["goal"] == f"walk {t} steps")
    steps = {}
    for cls in (bench_rollout.SnapLineEnv, bench_rollout.LineEnv):
        records = list(
            bench_rollout.Brancher("admissible", k, env_factory=bench_rollout.bench_env)(
                bench_rollout.trajectory(cls, task, f"t{t}")
            )
        )
        _, counts = bench_rollout.rollout_counts(records)
        steps[cls.can_snapshot] = counts["env_steps"]
    naive = bench_rollout.naive_steps(records, bench_rollout.LineEnv)
    bound = (k + 1) * t + t
    rows.append(
        row(
            f"rollout env steps, T={t} K={k}, with snapshots",
            steps[True],
            "steps",
            naive,
            "naive reset+replay",
            steps[True] / naive,
            f"<= (K+1)T+T = {bound}",
            steps[True] <= bound,
            f"without snapshots (shortest replays): {steps[False]} steps",
        )
    )

    sim = bench_rollout.jobs_speedup(bench_rollout.slow_records(3, 2 if quick else 4))
    reason = "" if sim["speedup"] >= 1.7 else "the steps sleep (no CPU): the workers' start-up and the other load"
    reason += "" if sim["identical"] else "; the outcomes of -j 1 and -j 2 DIFFER"
    rows.append(
        row(
            f"rollout -j 2 vs -j 1, simulated env (10 ms sleep per step), {sim['states']} states",
            sim["j2"]["states_per_s"],
            "states/s",
            sim["j1"]["states_per_s"],
            "-j 1",
            sim["speedup"],
            ">= 1.7x",
            sim["speedup"] >= 1.7 and sim["identical"],
            reason.lstrip("; "),
        )
    )
    what = "rollout -j 2 vs -j 1, ScienceWorld"
    if reason := not_installed("scienceworld"):
        rows.append(skipped(what, ">= 1.7x", reason))
        return rows
    n, first = (1, 3) if quick else (2, 6)
    if SW_STATES:  # bench/run --sw-states N: enough trajectories for about N states, where the start-up amortizes
        n, first = max(n, math.ceil(SW_STATES / 5.5)), 6  # (the first 6 steps of 2 dev trajectories gave 11 states)
    sw = bench_rollout.jobs_speedup(bench_rollout.scienceworld_records(3, n, first))
    start = bench_rollout.scienceworld_start_s()
    worker = bench_rollout.worker_start_s()
    need = bench_rollout.jobs_needed(sw["j1"]["seconds"], sw["j2"]["seconds"], sw["states"], start, worker)
    reach = (
        f"1.7x from about {need['states_measured']:.0f} states at this run's -j 2 cost per state"
        if need["states_measured"] is not None
        else f"at this run's -j 2 cost per state ({need['per_state_j2_s']:.2f} s) -j 2 tends to {need['limit']:.2f}x: "
        f"no size reaches 1.7x on this machine"
    )
    reason = (
        f"-j 1 {sw['j1']['seconds']:.1f} s, -j 2 {sw['j2']['seconds']:.1f} s for {sw['states']} states; one "
        f"ScienceWorld start (JVM + first reset) costs S = {start:.1f} s here and -j 2 pays it in each worker, "
        f"after the worker's own start-up (w = {worker:.2f} s); each worker's JVM also simulates in threads of "
        f"its own, which the {os.cpu_count()} cores share (README, Performance). Amdahl "
        f"with that start-up per worker (bench_rollout.jobs_needed), t = {need['per_state_j1_s']:.2f} s per "
        f"state at -j 1: were two states at a time free, 1.7x would need n >= (1.7 (w + S) - S) / "
        f"(0.15 t) = {need['states_ideal']:.0f} states; {reach}"
    )
    rows.append(
        row(
            f"{what} ({sw['states']} states, {n} dev trajectories, K=3, JVM start included)",
            sw["j2"]["states_per_s"],
            "states/s",
            sw["j1"]["states_per_s"],
            "-j 1",
            sw["speedup"],
            ">= 1.7x",
            sw["speedup"] >= 1.7,
            reason,
        )
    )
    return rows


def branch(quick: bool) -> list[dict]:
    import bench_rollout

    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return [skipped("branch --propose policy, K=8 vs K=1", "<= 2.5x", "llama-cpp-python is not installed")]
    r = bench_rollout.branch_k(4 if quick else 8, rounds=1 if quick else 2, threads=THREADS)
    wall, cpu = r["wall"][8] / r["wall"][1], r["cpu"][8] / r["cpu"][1]
    reason = (
        ""
        if wall <= 2.5
        else (
            f"CPU-time ratio {cpu:.2f}x; 7 extra proposals of up to 32 tokens each, every one sampled under the "
            f"grammar of the admissible replies, against one prompt of {r['prompt_tokens']:.0f} tokens evaluated once"
        )
    )
    return [
        row(
            f"branch --propose policy, K=8 vs K=1 per state (tiny GGUF, {r['states']} states)",
            r["wall"][8],
            "s/state",
            r["wall"][1],
            "K=1",
            wall,
            "<= 2.5x",
            wall <= 2.5,
            reason,
        )
    ]


def policies(quick: bool) -> list[dict]:
    import bench_policies

    r = bench_policies.measure(
        threads=THREADS, k=8, sample_tokens=16, tokens=32 if quick else 128, repeat=1 if quick else 2
    )
    rows = []
    lr = r["llama"]
    rows.append(
        row(
            f"llama.cpp K=8 samples on one {r['prompt_tokens']}-token state, prefix reuse",
            lr["reuse"]["wall"],
            "s",
            lr["reset"]["wall"],
            "context reset per sample",
            lr["reset"]["wall"] / lr["reuse"]["wall"],
            "(speed-up)",
            None,
        )
    )
    d = r["decode"]
    speed = d["transformers"]["wall"] / d["llama"]["wall"]
    rows.append(
        row(
            f"greedy decode, {r['tokens']} tokens: llama.cpp q8_0 (small model, {THREADS} threads)",
            r["tokens"] / d["llama"]["wall"],
            "tok/s",
            r["tokens"] / d["transformers"]["wall"],
            "transformers generate fp32",
            speed,
            ">= 3x",
            speed >= 3,
            "" if speed >= 3 else f"CPU-time ratio {d['transformers']['cpu'] / d['llama']['cpu']:.2f}x",
        )
    )
    return rows


def score_turns(quick: bool) -> list[dict]:
    import bench_policies

    t = bench_policies.measure_turns(actions=30, repeat=3 if quick else 5)
    return [
        row(
            f"--act score's {t['actions']} candidate turns on one {t['prompt_tokens']}-token state, tokenized "
            "(transformers, the tiny model's tokenizer)",
            t["split"] * 1000,
            "CPU-ms",
            t["whole"] * 1000,
            "each turn tokenized whole",
            t["split"] / t["whole"],
            "info",
            None,
            "the same ids both ways",
        )
    ]


def finetune(quick: bool) -> list[dict]:
    import bench_finetune

    r = bench_finetune.compare(
        size="tiny" if quick else "small",
        tasks=10 if quick else 20,
        steps=4 if quick else 8,
        batch_size=8,
        threads=THREADS,
    )
    e, t = r["best"]["eexp"], r["best"]["trl"]
    speed = e["tokens_per_s"] / t["tokens_per_s"]
    rss = r["rss"]["eexp"] / r["rss"]["trl"]
    size = "tiny" if quick else "small"
    return [
        row(
            f"finetune tokens/s, init-model {size}, LoRA, fp32, batch 8",
            e["tokens_per_s"],
            "tok/s",
            t["tokens_per_s"],
            "TRL SFTTrainer",
            speed,
            ">= 1.0x",
            speed >= 1.0,
        ),
        row(
            f"finetune peak RSS, init-model {size}, LoRA, fp32",
            r["rss"]["eexp"],
            "MB",
            r["rss"]["trl"],
            "TRL SFTTrainer",
            rss,
            "<= 1.0x",
            rss <= 1.0,
            ""
            if rss <= 1.0
            else f"{r['rss']['eexp'] - r['rss']['trl']:.0f} MB more (VmHWM of the trainer process, imports included)",
        ),
    ]


def encode(quick: bool) -> list[dict]:
    import bench_encode

    r = bench_encode.compare(tasks=200 if quick else 600, size="tiny", repeats=2 if quick else 3)
    a, b = r["one_by_one"], r["encode_items"]
    return [
        row(
            f"finetune's encoding of its data, examples/s ({r['examples']:,} shop IL examples, the tiny tokenizer)",
            r["examples"] / b["wall_s"],
            "ex/s",
            r["examples"] / a["wall_s"],
            "encode, one by one",
            a["wall_s"] / b["wall_s"],
            "info",
            None,
            f"the same examples both ways; CPU-s {b['cpu_s']:.2f} against {a['cpu_s']:.2f}",
        )
    ]


def finetune_real(quick: bool) -> list[dict]:
    import bench_finetune_real

    from eexp.cache import cache_root

    os.environ["EEXP_CACHE"] = str(cache_root())  # the GGUF import is made once per machine, then reused
    what = "SmolLM2-135M LoRA training tokens/s"
    try:
        m = bench_finetune_real.measure(
            only="eexp-lora-fp32,eexp-lora-bf16,trl-lora-fp32",
            tasks=1 if quick else 2,
            val_tasks=1,
            steps=1 if quick else 3,
            batch_size=2,
            threads=THREADS,
        )
    except LookupError as e:
        return [skipped(what, "", str(e))]
    res = m["results"]
    a, b, t = res["eexp-lora-fp32"], res["eexp-lora-bf16"], res["trl-lora-fp32"]
    speed = a["tokens_per_s"] / t["tokens_per_s"]
    bf = b["tokens_per_s"] / a["tokens_per_s"]
    return [
        row(
            f"{what}, fp32, batch 2",
            a["tokens_per_s"],
            "tok/s",
            t["tokens_per_s"],
            "TRL SFTTrainer fp32",
            speed,
            ">= 1.0x",
            speed >= 1.0,
            f"{m['examples']} examples of {m['tokens_per_example']:.0f} tokens; GGUF "
            f"import {m['import_s']:.0f} s (0: from the cache) not counted",
        ),
        row(
            f"{what}, bf16 autocast vs fp32",
            b["tokens_per_s"],
            "tok/s",
            a["tokens_per_s"],
            "eexp fp32",
            bf,
            "(none set)",
            None,
            f"CPU-time basis {b['tokens_per_cpu_s'] / a['tokens_per_cpu_s']:.2f}x; held-out loss "
            f"{b['val_loss'] - a['val_loss']:+.4f}; TRL {t['tokens_per_s']:.0f} tok/s",
        ),
        row(
            "SmolLM2-135M LoRA peak RSS, fp32",
            a["peak_rss_mb"],
            "MB",
            t["peak_rss_mb"],
            "TRL SFTTrainer fp32",
            a["peak_rss_mb"] / t["peak_rss_mb"],
            "<= 1.0x",
            a["peak_rss_mb"] <= t["peak_rss_mb"],
        ),
    ]


def export(quick: bool) -> list[dict]:
    import bench_export

    from eexp.cache import cache_root

    os.environ["EEXP_CACHE"] = str(cache_root())  # the GGUF import is made once per machine, then reused
    m = bench_export.measure(("f32", "q8_0"), repeat=1 if quick else 2, threads=THREADS)
    gap = m["logit_gap"]
    return [
        row(
            f"eexp export, {m['model']} {r['quant']} (llama.cpp's converter)",
            r["new_s"],
            "s",
            r["old_s"],
            f"hand-written exporter at {bench_export.BASELINE_COMMIT}",
            r["new_s"] / r["old_s"],
            "(none set)",
            None,
            f"{r['new_mb']:.0f} vs {r['old_mb']:.0f} MiB"
            + (
                f"; f32 logits vs transformers, max |diff| {gap['new']:.2g} vs {gap['old']:.2g}"
                if r["quant"] == "f32" and gap
                else ""
            ),
        )
        for r in m["rows"]
    ]


def llama_bufts(quick: bool) -> list[dict]:
    import bench_llama_bufts

    r = bench_llama_bufts.measure_all(threads=THREADS, repeat=1 if quick else 3)
    default_on = "on" in r["default"].split("(")[0]
    rows = []
    by = {(x["quant"], x["extra_bufts"]): x for x in r["rows"]}
    model = "SmolLM2-135M" if r["model"].startswith("SmolLM2") else "init-model small"
    for quant in bench_llama_bufts.QUANTS:
        on, off = by[(quant, "on")], by[(quant, "off")]
        what = f"llama.cpp decode, {model} {quant}, extra buffer types on (vs off)"
        if "decode_tps" not in on or "decode_tps" not in off:
            bad = on if "decode_tps" not in on else off
            rows.append(
                skipped(
                    what,
                    "",
                    f"extra bufts {bad['extra_bufts']}: "
                    f"{bad.get('crashed') and 'crashed ' + bad['crashed'] or bad.get('failed')}",
                )
            )
            continue
        rows.append(
            row(
                what,
                on["decode_tps"],
                "tok/s",
                off["decode_tps"],
                "extra bufts off",
                on["decode_tps"] / off["decode_tps"],
                "(none set)",
                None,
                f"prompt {on['prompt_tps']:.0f} vs {off['prompt_tps']:.0f} tok/s; eexp's default here: "
                f"{'on' if default_on else 'off'}",
            )
        )
    return rows


def evaluate(quick: bool) -> list[dict]:
    import bench_eval

    n = 4 if quick else 12
    r = bench_eval.episodes_per_min(n, threads=int(os.environ.get("BENCH_THREADS") or 0))
    g1, g2, r1 = r["gguf"][1]["episodes_per_min"], r["gguf"][2]["episodes_per_min"], r["random"][1]["episodes_per_min"]
    return [
        row(
            f"eval episodes/min, tiny GGUF, -j 1 ({n} shop episodes, process start included)",
            g1,
            "ep/min",
            r1,
            "random policy -j 1",
            g1 / r1,
            "(none set)",
            None,
        ),
        row(
            "eval episodes/min, tiny GGUF, -j 2 vs -j 1",
            g2,
            "ep/min",
            g1,
            "-j 1",
            g2 / g1,
            "(none set)",
            None,
            f"the random policy (no model) -j 2 / -j 1: {r['random'][2]['episodes_per_min'] / r1:.2f}x: with "
            f"{n} episodes the workers' start-up is not paid back",
        ),
    ]


def compare(quick: bool) -> list[dict]:
    import bench_compare

    r = bench_compare.bootstrap_seconds(tasks=300, resamples=2000 if quick else 10000)
    return [
        row(
            f"eval --compare's paired bootstrap, {r['tasks']} tasks x {r['resamples']:,} resamples",
            r["numpy_s"],
            "s",
            r["python_s"],
            "the Python loop it replaced, the same result",
            r["python_s"] / r["numpy_s"],
            "(none set)",
            None,
        )
    ]


def server(quick: bool) -> list[dict]:
    import bench_server

    rows = []
    stub = bench_server.stub_ceiling(n=64 if quick else 128)
    c1, c32 = stub[1], stub[32]
    ratio = c32["requests_per_s"] / c1["requests_per_s"]
    rows.append(
        row(
            f"eval requests/s against a stub server ({stub['latency'] * 1000:.0f} ms an answer), --concurrency 32",
            c32["requests_per_s"],
            "req/s",
            c1["requests_per_s"],
            "--concurrency 1",
            ratio,
            ">= 20x",
            ratio >= 20,
            f"eexp's own CPU: {c32['cpu_ms_per_request']:.1f} ms a request at 32, "
            f"{c1['cpu_ms_per_request']:.1f} at 1 (process start included)",
        )
    )
    real = bench_server.real_server(n=6 if quick else 12, threads=THREADS)
    if "skipped" in real:
        return rows + [
            skipped("eval episodes/min against llama-server (8 slots), --concurrency 8", ">= 4x", real["skipped"])
        ]
    one, base = real[1], real["in_process"]
    ratio = real[8]["episodes_per_min"] / base["episodes_per_min"]
    rows.append(
        row(
            f"eval episodes/min, {real['model']} on shop test: llama-server (--parallel {real['parallel']}, "
            f"--concurrency 8) vs in-process llama.cpp -j {base['jobs']} (the recipes' path before)",
            real[8]["episodes_per_min"],
            "ep/min",
            base["episodes_per_min"],
            f"in-process -j {base['jobs']}",
            ratio,
            ">= 3x",
            ratio >= 3,
            f"both constrained to the admissible actions, {real['episodes']} episodes, at most 6 steps",
        )
    )
    for c in (4, 8):
        r = real[c]
        ratio = r["episodes_per_min"] / one["episodes_per_min"]
        rows.append(
            row(
                f"eval episodes/min, {real['model']} in llama-server (--parallel {real['parallel']}, "
                f"-t {real['threads']}), --concurrency {c}",
                r["episodes_per_min"],
                "ep/min",
                one["episodes_per_min"],
                "--concurrency 1",
                ratio,
                ">= 4x" if c == 8 else "(none set)",
                (ratio >= 4) if c == 8 else None,
                f"eexp {r['cpu_ms_per_request']:.1f} CPU-ms a request ({one['cpu_ms_per_request']:.1f} at 1); "
                f"{r['differ']} of {real['episodes']} episodes took other actions than at 1 (the server "
                f"is not batch-invariant); {r['invalid']} invalid actions; guided {r['guided']}",
            )
        )
    return rows


def fleet(quick: bool) -> list[dict]:
    import bench_fleet

    what = "eval episodes/min, two llama-servers behind one --policy vs one server"
    r = bench_fleet.measure(n=4 if quick else 12, parallel=4)
    if "skipped" in r:
        return [skipped(what, ">= 1.7x", r["skipped"])]
    one, two = r["one"], r["two"]
    return [
        row(
            f"eval episodes/min, {r['model']} on shop test: two llama-servers (-t {r['threads']}, --parallel "
            f"{r['parallel']} each) behind one --policy, --concurrency {two['concurrency']}",
            two["episodes_per_min"],
            "ep/min",
            one["episodes_per_min"],
            f"one server, --concurrency {one['concurrency']}",
            r["ratio"],
            ">= 1.7x",
            r["ratio"] >= 1.7,
            f"{r['cores']} cores (two one-thread servers and eexp need 3 free); eexp "
            f"{two['cpu_ms_per_request']:.1f} CPU-ms a request (process start included); {r['differ']} of "
            f"{r['episodes']} episodes took other actions than against one server",
        )
    ]


def rl(quick: bool) -> list[dict]:
    import bench_rl
    import torch

    torch.set_num_threads(THREADS)
    r = bench_rl.measure(
        group_size=4 if quick else 8,
        tasks_per_step=2,
        steps=1 if quick else 2,
        episode_steps=10,
        repeat=1 if quick else 2,
        start_updates=20 if quick else 60,
    )
    n = r["episodes"]
    ev, ro, tr = (n / r[k][0] * 60 for k in ("eval", "rl", "train"))
    return [
        row(
            f"rl rollouts episodes/min, same {n} episodes as eval (tiny model, transformers)",
            ro,
            "ep/min",
            ev,
            "eval's loop",
            ro / ev,
            "(none set)",
            None,
            f"identical episodes ({r['rl'][1]} and {r['eval'][1]} env steps); RL's live policy scores a state "
            f"once per weights (a group's {4 if quick else 8} episodes of one task revisit states), eval's loop "
            f"scores every step; whole RL steps (rollouts + updates): {tr:.0f} ep/min",
        )
    ]


SECTIONS = {  # name: (function, time limit in seconds at full size, at --quick)
    "data": (data, 240, 120),
    "envs": (envs, 60, 30),
    "textworld": (textworld, 120, 60),
    "scienceworld": (scienceworld, 120, 60),
    "alfworld": (alfworld, 150, 90),
    "miniwob": (miniwob, 150, 90),
    "rollout": (rollout, 180, 120),
    "branch": (branch, 150, 90),
    "policies": (policies, 150, 90),
    "score_turns": (score_turns, 60, 30),
    "finetune": (finetune, 200, 120),
    "encode": (encode, 120, 60),
    "finetune_real": (
        finetune_real,
        600,
        300,
    ),  # a slower machine ran past 300 s: the real-model rows must not go missing
    "llama_bufts": (llama_bufts, 150, 120),
    "export": (export, 300, 240),
    "eval": (evaluate, 150, 120),
    "compare": (compare, 60, 30),
    "server": (server, 600, 300),
    "fleet": (fleet, 300, 150),
    "rl": (rl, 200, 150),
}


# ---- the machine ----------------------------------------------------------------------------------------------


def machine() -> dict:
    model, flags = platform.processor() or platform.machine(), []
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name") and model in ("", platform.machine(), platform.processor()):
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = line.split(":", 1)[1].split()
                break
    except OSError:
        pass
    shown = [
        f
        for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8")
        if f in flags
    ]
    mem = ""
    try:
        kb = next(int(x.split()[1]) for x in open("/proc/meminfo") if x.startswith("MemTotal"))
        mem = f"{kb / 2**20:.0f} GiB"
    except (OSError, StopIteration):
        pass
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
        ).stdout.strip()
    except OSError:
        commit = ""
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory": mem,
        "flags": shown,
        "amx": any(f.startswith("amx") for f in flags),
        "load_at_start": list(os.getloadavg()),
        "python": platform.python_version(),
        "commit": commit,
        "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


# ---- running --------------------------------------------------------------------------------------------------


def run_section(
    name: str, quick: bool, limit: int, threads: int | None, sw_states: int | None = None
) -> tuple[list[dict], float]:
    cmd = [sys.executable, __file__, "--section", name] + (["--quick"] if quick else [])
    env = {
        **os.environ,
        "TOKENIZERS_PARALLELISM": "false",
        "BENCH_THREADS": str(threads or ""),
        "BENCH_SW_STATES": str(sw_states or ""),
        "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
    }
    start = time.perf_counter()
    # a session of its own, so that a section past its limit is stopped with everything it started
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT, start_new_session=True
    )
    try:
        stdout, stderr = proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return [
            {
                "what": name,
                "status": "skipped",
                "target": "",
                "eexp_text": "",
                "baseline_text": "",
                "ratio": None,
                "reason": f"ran past its {limit} s limit",
            }
        ], time.perf_counter() - start
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # what the section left running (a JVM, a worker)
        except ProcessLookupError:
            pass
    seconds = time.perf_counter() - start
    line = [x for x in stdout.splitlines() if x.startswith("ROWS ")]
    if proc.returncode or not line:
        tail = [x for x in (stderr or stdout).strip().splitlines() if x.strip()]
        return [
            {
                "what": name,
                "status": "failed",
                "target": "",
                "eexp_text": "",
                "baseline_text": "",
                "ratio": None,
                "reason": tail[-1][:200] if tail else f"exit {proc.returncode}",
            }
        ], seconds
    return json.loads(line[-1][5:]), seconds


def table(info: dict, rows: list[dict], wall: float, quick: bool) -> str:
    load = info["load_at_start"]
    out = [
        f"eexp benchmarks ({'--quick' if quick else 'full size'}), {info['date_utc']}, commit {info['commit']}",
        f"machine: {info['cpu']}, {info['cores']} cores, {info['memory']}; CPU flags: {' '.join(info['flags'])}"
        f"{'' if info['amx'] else ' (no AMX)'}; {info['threads']} thread(s) per model",
        f"load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (1/5/15 min); measured under whatever "
        "else this machine runs: each row shows the 1-min load at its section's start",
        "",
    ]
    head = ["what", "eexp", "baseline (same run)", "ratio", "target", "status", "load", "s"]
    cells = [
        [
            r["what"],
            r.get("eexp_text", ""),
            r.get("baseline_text", ""),
            "" if r.get("ratio") is None else f"{r['ratio']:.2f}x",
            r.get("target", ""),
            r["status"],
            f"{r['load']:.1f}" if r.get("load") is not None else "",
            f"{r.get('section_s', 0):.0f}",
        ]
        for r in rows
    ]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(head)]
    line = lambda c: "  ".join(
        x.ljust(w) if i in (0, 1, 2, 4, 5) else x.rjust(w)  # noqa: E731
        for i, (x, w) in enumerate(zip(c, widths))
    )
    out += [line(head), line(["-" * w for w in widths])] + [line(c) for c in cells]
    notes = [(r["what"], r["status"], r["reason"]) for r in rows if r.get("reason")]
    if notes:
        out.append("\nreasons and notes:")
        out += [f"- {what} [{status}]: {reason}" for what, status, reason in notes]
    counts = {s: sum(r["status"] == s for r in rows) for s in ("met", "missed", "info", "skipped", "failed")}
    out.append(f"\n{', '.join(f'{v} {k}' for k, v in counts.items() if v)}; wall time {wall / 60:.1f} min")
    return "\n".join(out)


def markdown(info: dict, rows: list[dict], wall: float) -> str:
    load = info["load_at_start"]
    out = [
        f"{info['cpu']}, {info['cores']} cores, CPU flags {' '.join(info['flags'])}"
        f"{'' if info['amx'] else ' (no AMX)'}; {info['threads']} thread(s) per model; load average at start "
        f"{load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}; wall time {wall / 60:.1f} min.",
        "",
        "| what | eexp | baseline (same run) | ratio | target | status | load |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = "" if r.get("ratio") is None else f"{r['ratio']:.2f}x"
        load_s = f"{r['load']:.1f}" if r.get("load") is not None else ""
        out.append(
            f"| {r['what']} | {r.get('eexp_text', '')} | {r.get('baseline_text', '')} | {ratio} | "
            f"{r.get('target', '')} | {r['status']} | {load_s} |"
        )
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes, a few minutes (noisier)")
    ap.add_argument("--json", action="store_true", help="one JSON object (machine, rows, wall time) on stdout")
    ap.add_argument("--markdown", action="store_true", help="the table as Markdown (for the README)")
    ap.add_argument(
        "--threads",
        type=int,
        help="threads per model (llama.cpp, torch; default 2; eval: its own "
        "default, which splits the cores between -j workers)",
    )
    ap.add_argument(
        "--budget",
        type=float,
        default=15,
        help="minutes for the whole run (default 15; 0: none): "
        "a section gets at most what is left, and sections after it are skipped",
    )
    ap.add_argument("--only", help="comma-separated sections: " + ", ".join(SECTIONS))
    ap.add_argument(
        "--sw-states",
        type=int,
        metavar="N",
        help="rollout: measure the ScienceWorld -j 2 vs -j 1 row "
        "on about N states (default 11; 3 with --quick) so that the JVM start-up amortizes; the "
        "section's time limit grows by 4 s per state (e.g. bench/run --only rollout --sw-states 60)",
    )
    ap.add_argument("--save", metavar="FILE", help="also write the JSON object to FILE")
    ap.add_argument("--load", metavar="FILE", help="print the table (or --markdown) of a saved run, running nothing")
    ap.add_argument("--list", action="store_true", help="list the sections and their time limits")
    ap.add_argument("--section", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.section:  # the child: one section's rows as one JSON line
        print("ROWS " + json.dumps(SECTIONS[args.section][0](args.quick)), flush=True)
        return
    if args.list:
        for name, (fn, full, quick) in SECTIONS.items():
            print(f"{name:14} limit {full:4d} s ({quick} s with --quick)")
        return
    if args.load:
        saved = json.load(open(args.load))
        info, rows, wall = saved["machine"], saved["rows"], saved["wall_s"]
        print(markdown(info, rows, wall) if args.markdown else table(info, rows, wall, saved["quick"]))
        return
    names = args.only.split(",") if args.only else list(SECTIONS)
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        ap.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    info = machine()
    start = time.perf_counter()
    rows = []
    info["threads"] = args.threads or THREADS
    for i, name in enumerate(names, 1):
        fn, full, quick = SECTIONS[name]
        load = os.getloadavg()[0]
        limit = quick if args.quick else full
        if name == "rollout" and args.sw_states:
            limit += 4 * args.sw_states  # ~1 s per state at -j 1, less at -j 2, the expert trajectories
        left = args.budget * 60 - (time.perf_counter() - start) if args.budget else limit
        if left < 10:
            rows.append(
                {
                    "what": name,
                    "status": "skipped",
                    "target": "",
                    "eexp_text": "",
                    "baseline_text": "",
                    "ratio": None,
                    "section": name,
                    "load": load,
                    "section_s": 0,
                    "reason": f"the {args.budget:g}-minute budget was spent before it started",
                }
            )
            continue
        print(f"[{i}/{len(names)}] {name} (load {load:.2f}) ...", end=" ", file=sys.stderr, flush=True)
        got, seconds = run_section(name, args.quick, int(min(limit, left)), args.threads, args.sw_states)
        for r in got:
            r.update(section=name, load=load, section_s=seconds)
        rows += got
        print(f"{seconds:.0f} s, {', '.join(r['status'] for r in got)}", file=sys.stderr, flush=True)
    wall = time.perf_counter() - start
    result = {"machine": info, "quick": args.quick, "wall_s": wall, "rows": rows}
    if args.save:
        with open(args.save, "w") as f:
            json.dump(result, f, indent=1)
    if args.json:
        print(json.dumps(result, indent=1))
    elif args.markdown:
        print(markdown(info, rows, wall))
    else:
        print(table(info, rows, wall, args.quick))


if __name__ == "__main__":
    main()
