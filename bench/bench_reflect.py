"""How fast `eexp reflect` writes reflections with a GGUF policy on CPU, and where the time goes.

Builds real outcome records (shop expert -> branch -k 3 -> rollout), a randomly initialized model (`eexp init-model`,
exported to GGUF), then times one reflection per state through the same code path as the command
(`reflect_examples` with the llama.cpp policy). The split between prompt evaluation and generation comes from
llama.cpp's own counters (`llama_perf_context`), cross-checked by timing prompt-only calls (max_tokens=1).
Baseline, side by side: the grounded reflector (no model) on the same states.

A random model rarely emits its end token, so nearly every reply runs to --max-tokens: the figures are for replies
of that length (a trained model's 200-400-word reflections are ~300-600 tokens).

    .venv/bin/python bench/bench_reflect.py                 # small model (~4M parameters), 12 states
    .venv/bin/python bench/bench_reflect.py --size tiny --states 24 --max-tokens 512 --threads 2   # on an idle machine
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson


def eexp(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "eexp", *args], check=True, stdout=subprocess.DEVNULL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=["tiny", "small"], default="small")
    parser.add_argument("--states", type=int, default=12, help="Outcome records to reflect on.")
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="llama.cpp threads (1: on a shared, busy CPU more threads only wait on each other).",
    )
    parser.add_argument("--model", help="An existing .gguf to use instead of a fresh random one.")
    opts = parser.parse_args()

    from eexp.policies import load_policy
    from eexp.prompts import Serializer
    from eexp.stages.reflect import (
        Reflector,
        Settings,
        Template,
        policy_writer,
        reflect_examples,
        reflection_prompt,
        shown_alternatives,
    )

    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        eexp("expert", "--env", "shop", "-n", str(max(2, opts.states // 3)), "--seed", "5", "-o", str(d / "e.jsonl"))
        eexp("branch", "-k", "3", str(d / "e.jsonl"), "-o", str(d / "b.jsonl"))
        eexp("rollout", str(d / "b.jsonl"), "-o", str(d / "o.jsonl"))
        outcomes = [orjson.loads(x) for x in open(d / "o.jsonl", "rb")][: opts.states]
        model = opts.model
        if not model:
            eexp("init-model", str(d / "ckpt"), "--size", opts.size, "--corpus", str(d / "e.jsonl"), "--seed", "0")
            model = str(d / "m.gguf")
            eexp("export", str(d / "ckpt"), "-o", model)

        serializer, template = Serializer(), Template.load()
        settings = Settings(max_tokens=opts.max_tokens)
        policy = load_policy(model, {"n_threads": str(opts.threads)}, max_tokens=opts.max_tokens)
        import llama_cpp

        ctx = policy.llm._ctx.ctx

        # Baseline: the grounded reflector, no model.
        t0 = time.perf_counter()
        for o in outcomes:
            list(
                reflect_examples(
                    o, reflector=Reflector("grounded"), template=template, serializer=serializer, settings=settings
                )
            )
        grounded_s = time.perf_counter() - t0

        # Full reflections through the command's code path.
        reflector = Reflector("self", policy_writer(policy, settings), policy.name, policy.sha256)
        llama_cpp.llama_perf_context_reset(ctx)
        counts: dict[str, int] = {}
        t0 = time.perf_counter()
        for o in outcomes:
            list(
                reflect_examples(
                    o,
                    reflector=reflector,
                    template=template,
                    serializer=serializer,
                    settings=settings,
                    count=lambda n, k=1: counts.__setitem__(n, counts.get(n, 0) + k),
                )
            )
        full_s = time.perf_counter() - t0
        perf = llama_cpp.llama_perf_context(ctx)

        # Cross-check: prompt-only calls (one token generated) on the same prompts.
        llama_cpp.llama_perf_context_reset(ctx)
        t0 = time.perf_counter()
        for i, o in enumerate(outcomes):
            prompt = reflection_prompt(
                o, shown_alternatives(o, settings.max_alternatives), template, serializer, settings
            )
            policy.llm.reset()  # no KV reuse from the previous call: measure a cold prompt
            policy.generate(prompt, seed=i + 1, temperature=0.7, max_tokens=1)
        prompt_only_s = time.perf_counter() - t0
        prompt_only_perf = llama_cpp.llama_perf_context(ctx)
        policy.close()

    n = len(outcomes)
    p_ms, g_ms = perf.t_p_eval_ms, perf.t_eval_ms
    other_ms = full_s * 1000 - p_ms - g_ms
    print(
        f"model: {opts.model or f'random {opts.size} (init-model, exported to GGUF f16)'}; {n} shop states, "
        f"K<=3 alternatives, --max-tokens {opts.max_tokens}, {opts.threads} threads"
    )
    print(f"{'':34s}{'reflections/min':>16s}{'s/reflection':>14s}")
    print(f"{'self reflector (llama.cpp)':34s}{n / full_s * 60:16.1f}{full_s / n:14.3f}")
    print(f"{'grounded reflector (baseline)':34s}{n / grounded_s * 60:16.0f}{grounded_s / n:14.5f}")
    print(
        f"prompt tokens {perf.n_p_eval} ({perf.n_p_eval / n:.0f}/reflection after KV-prefix reuse), "
        f"generated tokens {perf.n_eval} ({perf.n_eval / n:.0f}/reflection)"
    )
    print(
        f"wall time: prompt evaluation {p_ms / 1000:.2f} s ({100 * p_ms / (full_s * 1000):.1f}%), generation "
        f"{g_ms / 1000:.2f} s ({100 * g_ms / (full_s * 1000):.1f}%), other (sampling, templating, filters) "
        f"{other_ms / 1000:.2f} s ({100 * other_ms / (full_s * 1000):.1f}%)"
    )
    if perf.n_p_eval and perf.n_eval:
        print(
            f"speed: prompt {perf.n_p_eval / (p_ms / 1000):.0f} tok/s, generation {perf.n_eval / (g_ms / 1000):.0f} "
            f"tok/s"
        )
    print(
        f"cross-check, prompt-only calls (max_tokens=1, cold cache): {prompt_only_s:.2f} s = "
        f"{100 * prompt_only_s / full_s:.1f}% of the full run's wall time; llama.cpp counted "
        f"{prompt_only_perf.n_p_eval} prompt tokens in {prompt_only_perf.t_p_eval_ms / 1000:.2f} s"
    )
    print("filter counts:", {k: v for k, v in sorted(counts.items())})


if __name__ == "__main__":
    main()
