"""Teacher-forced world-model probe (not an eexp stage): for each IWM example of held-out outcome records (made by
`eexp world-model-data --history 0 --no-admissible`, the recipe's DATA_ARGS), the model's mean per-token NLL of the
recorded `Observation: ...` target, encoded as finetune encodes it (eexp.training.data.encode: the model's chat
template, the end-of-turn token in the target); and, per state, whether the model gives the recorded next observation
of each action a higher likelihood than the next observations the state's other actions led to (the ones that
differ from it): ranking accuracy over pairs, chance 0.5.

usage: python nll.py MODEL_DIR EXAMPLES.jsonl OUT.json
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from eexp.training.data import encode

torch.set_num_threads(1)


def nll(model, tok, messages, content_only: bool = False) -> tuple[float, int]:
    """Summed NLL of the target tokens and their count; content_only: from the first target token whose prefix
    decodes past the `Observation:` label (the label's cost left out, a model trained to write `Action:` there pays
    it whatever it knows of the page)."""
    enc = encode(tok, messages, 4096)
    ids = torch.tensor([enc.ids])
    with torch.no_grad():
        logits = model(ids).logits[0, :-1].float()
    targets = ids[0, 1:]
    w = torch.tensor(enc.weights[1:], dtype=torch.float32)
    if content_only:
        first = next(i for i, x in enumerate(enc.weights) if x)
        for t in range(first, len(enc.ids)):
            if ":" in tok.decode(enc.ids[first : t + 1]):
                w[first - 1 : t] = 0  # weights[1:] is shifted by one: position t-1 predicts token t
                break
    lp = torch.log_softmax(logits, -1).gather(1, targets[:, None])[:, 0]
    total = -(lp * w).sum().item()
    return total, int((w > 0).sum().item())


def main() -> None:
    model_dir, examples, out = sys.argv[1:4]
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
    rows = [json.loads(line) for line in open(examples)]
    by_state = defaultdict(list)
    for r in rows:
        by_state[r["source_id"]].append(r)
    per_example, content, pairs, right = [], [], 0, 0
    for sid, exs in by_state.items():
        targets = [e["messages"][-1]["content"] for e in exs]
        for i, e in enumerate(exs):
            prompt = e["messages"][:-1]
            total, n = nll(model, tok, e["messages"])
            per_example.append(total / n)
            c_total, c_n = nll(model, tok, e["messages"], content_only=True)
            content.append(c_total / c_n)
            own = -total  # log-likelihood of its own recorded next observation (summed over its tokens)
            for j, other in enumerate(targets):
                if j == i or other == targets[i]:
                    continue
                # compare summed log-likelihoods per token: targets differ in length
                o_total, o_n = nll(model, tok, prompt + [{"role": "assistant", "content": other}])
                pairs += 1
                right += (own / n) > (-o_total / o_n)
    result = {
        "model": model_dir,
        "examples": len(per_example),
        "states": len(by_state),
        "nll_mean": sum(per_example) / len(per_example),
        "nll_content_mean": sum(content) / len(content),
        "rank_pairs": pairs,
        "rank_accuracy": right / pairs if pairs else None,
    }
    json.dump(result, open(out, "w"), indent=1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
