"""Policy speed on CPU: prefix reuse for K samples per state, and llama.cpp against transformers generate.

    .venv/bin/python bench/bench_policies.py [--model DIR] [--threads 2] [--k 8] [--tokens 128]

1. Prefix reuse (llama.cpp, q8_0): K samples on one ~300-token state issued back to back on one context, as
   `Policy.sample` does (the shared prompt is evaluated once), against K samples with the context reset before
   each (the prompt evaluated K times). The same for transformers (the prompt's KV cache copied for each sample
   vs none).
2. Decode speed on the same `small` model: llama.cpp q8_0 against transformers `generate` (fp32, CPU), greedy,
   tokens/s over --tokens new tokens with end of sequence suppressed so both decode the same length.

Without --model a `small` qwen2 model is made with `eexp init-model` in a temporary directory.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from eexp.prompts import Serializer

ROOT = Path(__file__).resolve().parent.parent


def state_messages(policy, target: int = 300) -> list[dict]:
    """A shop-like state whose prompt is about `target` tokens."""
    history = [
        {
            "observation": f"[results page {i}] 1. red cotton t-shirt $24.00 | 2. blue cotton t-shirt $12.00",
            "action": f"click[next >] {i}",
        }
        for i in range(40)
    ]
    state = {
        "goal": "i need a red cotton t-shirt in size m, under 30 dollars",
        "history": [],
        "observation": "[item page] red cotton t-shirt, $24.00. options: size s | m | l; color red | blue",
        "admissible": ["click[buy now]", "click[back to search]", "click[size m]", "click[color red]"],
    }
    for n in range(len(history) + 1):
        messages = Serializer(history=n).policy_messages({**state, "history": history[:n]})
        if len(policy.encode_chat(messages)) >= target:
            return messages
    return messages


def timed(fn, repeat: int = 3) -> tuple[float, float]:
    """Median wall seconds and median CPU seconds of this process (all its threads): on a shared machine the CPU
    time is the steadier figure."""
    walls, cpus = [], []
    for _ in range(repeat):
        start, cpu = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus)


def measure(
    model: str | None = None, threads: int = 2, k: int = 8, sample_tokens: int = 16, tokens: int = 128, repeat: int = 3
) -> dict:
    """Prefix reuse (K samples on one state, reuse vs a context reset / no KV cache per sample) for llama.cpp q8_0
    and transformers, and greedy decode of `tokens` tokens, llama.cpp q8_0 vs transformers generate fp32.
    Seconds are medians of `repeat` runs: {"wall": s, "cpu": s} under "reuse"/"reset" per backend and under
    "decode" per backend."""
    import torch

    torch.set_num_threads(threads)
    from eexp.models.export import export_gguf
    from eexp.models.init import init_model
    from eexp.policies import derive_seed, load_policy

    tmp = Path(tempfile.mkdtemp(prefix="bench-policies-"))
    ckpt = Path(model) if model else init_model(tmp / "small", arch="qwen2", size="small", seed=0)
    gguf = export_gguf(ckpt, tmp / "small.q8_0.gguf", quant="q8_0")
    opts = {"n_threads": str(threads)}
    llama = load_policy(str(gguf), opts, max_tokens=sample_tokens)
    hf = load_policy(str(ckpt), opts, max_tokens=sample_tokens)
    params = sum(p.numel() for p in hf.model.parameters())
    messages = state_messages(hf)
    n_prompt = len(hf.encode_chat(messages))
    seeds = [derive_seed(0, "bench#0", i) for i in range(k)]
    out = {
        "model": str(ckpt),
        "parameters": params,
        "threads": threads,
        "prompt_tokens": n_prompt,
        "k": k,
        "sample_tokens": sample_tokens,
        "tokens": tokens,
    }

    # 1. prefix reuse ---------------------------------------------------------------------------------------------
    def llama_reuse():
        llama.llm.reset()  # the first call evaluates the prompt; the next K-1 reuse it
        llama.sample(messages, admissible=None, seeds=seeds, temperature=1.0)

    def llama_reset():
        for s in seeds:
            llama.llm.reset()  # what a policy without prefix reuse pays: the whole prompt every call
            llama.sample(messages, admissible=None, seeds=[s], temperature=1.0)

    def hf_reuse():
        hf._cache_key = None
        hf.sample(messages, admissible=None, seeds=seeds, temperature=1.0)

    def hf_reset():
        for s in seeds:
            hf._cache_key = None
            hf.sample(messages, admissible=None, seeds=[s], temperature=1.0)

    for name, reuse, reset in (("llama", llama_reuse, llama_reset), ("transformers", hf_reuse, hf_reset)):
        (a, ac), (b, bc) = timed(reuse, repeat), timed(reset, repeat)
        out[name] = {"reuse": {"wall": a, "cpu": ac}, "reset": {"wall": b, "cpu": bc}}

    # 2. decode speed ---------------------------------------------------------------------------------------------
    prompt_ids = hf.encode_chat(messages)
    eos = llama.llm.token_eos()

    def llama_decode():
        llama.llm.reset()
        res = llama.llm.create_completion(
            prompt=prompt_ids, max_tokens=tokens, temperature=0.0, top_k=0, min_p=0.0, logit_bias={eos: -1e9}, seed=1
        )
        assert res["usage"]["completion_tokens"] == tokens, res["usage"]

    def hf_decode():
        with torch.no_grad():
            res = hf.model.generate(
                input_ids=torch.tensor([prompt_ids]),
                max_new_tokens=tokens,
                min_new_tokens=tokens,
                do_sample=False,
                pad_token_id=hf.pad_id,
            )
        assert res.shape[1] - len(prompt_ids) == tokens

    llama_decode(), hf_decode()  # warm up
    (t_llama, c_llama), (t_hf, c_hf) = timed(llama_decode, repeat), timed(hf_decode, repeat)
    out["decode"] = {"llama": {"wall": t_llama, "cpu": c_llama}, "transformers": {"wall": t_hf, "cpu": c_hf}}
    llama.close()
    return out


def measure_turns(model: str | None = None, actions: int = 30, repeat: int = 5) -> dict:
    """--act score's candidate turns on one ~300-token state with `actions` admissible actions, as
    TransformersPolicy.encode_turns tokenizes them (the prompt once, each turn's rest after its last added token)
    against each turn tokenized whole (the same policy with the split turned off), the same ids asserted. Median CPU
    seconds a state of `repeat` runs: {"split": s, "whole": s, "prompt_tokens", "actions"}."""
    from eexp.models.init import init_model
    from eexp.policies import load_policy
    from eexp.prompts import format_action

    tmp = Path(tempfile.mkdtemp(prefix="bench-turns-"))
    ckpt = Path(model) if model else init_model(tmp / "tiny", arch="qwen2", size="tiny", seed=0)
    hf = load_policy(str(ckpt), {"n_threads": "1"})
    messages = state_messages(hf)
    replies = [format_action(f"take item {i} from shelf {i % 7}") for i in range(actions)]
    split_tokens = hf._split_tokens
    split = hf.candidate_ids(messages, replies)
    hf._split_tokens = ()
    assert hf.candidate_ids(messages, replies) == split, "encode_turns changed the candidates' ids"
    _, whole = timed(lambda: hf.candidate_ids(messages, replies), repeat)
    hf._split_tokens = split_tokens
    _, fast = timed(lambda: hf.candidate_ids(messages, replies), repeat)
    assert hf._split_tokens, "the split was turned off by its check"
    return {"split": fast, "whole": whole, "prompt_tokens": len(hf.encode_chat(messages)), "actions": actions}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="A transformers checkpoint (default: a fresh `small` qwen2 model)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--sample-tokens", type=int, default=16, help="tokens per sample in the prefix-reuse test")
    ap.add_argument("--tokens", type=int, default=128, help="tokens decoded in the speed test")
    args = ap.parse_args()
    r = measure(args.model, args.threads, args.k, args.sample_tokens, args.tokens)
    print(
        f"model: {r['model']} ({r['parameters'] / 1e6:.1f}M parameters), {args.threads} threads, prompt "
        f"{r['prompt_tokens']} tokens, K={args.k}, {args.sample_tokens} tokens per sample"
    )
    print("\n1. K samples on one state (median of 3 runs)")
    print(f"{'backend':<14}{'reuse wall/cpu (s)':>20}{'reset wall/cpu (s)':>20}{'speed-up wall/cpu':>19}")
    for name, key in (("llama.cpp q8", "llama"), ("transformers", "transformers")):
        a, ac = r[key]["reuse"]["wall"], r[key]["reuse"]["cpu"]
        b, bc = r[key]["reset"]["wall"], r[key]["reset"]["cpu"]
        print(f"{name:<14}{a:>10.3f}/{ac:<9.3f}{b:>10.3f}/{bc:<9.3f}{b / a:>9.2f}x/{bc / ac:.2f}x")
    d = r["decode"]
    t_hf, c_hf, t_llama, c_llama = (
        d["transformers"]["wall"],
        d["transformers"]["cpu"],
        d["llama"]["wall"],
        d["llama"]["cpu"],
    )
    print(f"\n2. greedy decode of {args.tokens} tokens after the {r['prompt_tokens']}-token prompt (median of 3)")
    print(f"{'backend':<22}{'wall s':>8}{'tokens/s':>10}{'cpu s':>8}{'tokens/cpu-s':>14}")
    print(f"{'transformers fp32':<22}{t_hf:>8.3f}{args.tokens / t_hf:>10.1f}{c_hf:>8.3f}{args.tokens / c_hf:>14.1f}")
    print(
        f"{'llama.cpp q8_0':<22}{t_llama:>8.3f}{args.tokens / t_llama:>10.1f}{c_llama:>8.3f}"
        f"{args.tokens / c_llama:>14.1f}"
    )
    print(f"llama.cpp / transformers: {t_hf / t_llama:.2f}x wall, {c_hf / c_llama:.2f}x cpu (target >= 3x)")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
