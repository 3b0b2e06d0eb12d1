"""How far a dream is from the world (docs/results/world-model.md, dreamed experience): the expert's trajectories
made in dream:WM@shop against the same trajectories made in shop (same tasks, same gold actions, same seed), page by
page, and the IWM and SR data each gave. Not part of eexp.

    python fidelity.py RUN_DIR [RUN_DIR ...]      # each a seed's folder of configs/dream.mk (out/dream/seedS)
"""

import json
import sys
from pathlib import Path

from eexp.stages.world_model_eval import token_f1


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.open()]


def fidelity(run: Path) -> dict:
    real, dream = lines(run / "expert.jsonl"), lines(run / "dream" / "expert.jsonl")
    assert [t["task"]["id"] for t in real] == [t["task"]["id"] for t in dream], run
    pages = exact = 0
    f1 = 0.0
    for r, d in zip(real, dream):
        assert [s["action"] for s in r["steps"]] == [s["action"] for s in d["steps"]], r["id"]
        ours = [s["observation"] for s in r["steps"]][1:] + [r["final_observation"]]
        theirs = [s["observation"] for s in d["steps"]][1:] + [d["final_observation"]]
        for a, b in zip(ours, theirs):  # every page after the first, which the dream takes from shop
            pages += 1
            exact += a == b
            f1 += token_f1(b, a)
    count = {
        name: sum(1 for _ in (run / name).open())
        for name in ("iwm.jsonl", "sr.jsonl", "dream/iwm.jsonl", "dream/sr.jsonl")
    }
    stats = {
        kind: json.loads((run / f"{prefix}rollout_iwm.stats.json").read_text())
        for kind, prefix in (("real", ""), ("dream", "dream/"))
    }
    return {
        "run": str(run),
        "expert_trajectories": len(real),
        "dreamed_pages": pages,
        "exact_pages": exact,
        "mean_page_f1": round(f1 / pages, 4),
        "dream_success": sum(bool(t["success"]) for t in dream),
        "real_success": sum(bool(t["success"]) for t in real),
        "examples": count,
        "rollout_iwm": {
            k: {
                "env_steps": v["env_steps"],
                "seconds": v["seconds"],
                "ms_per_step": round(1000 * v["seconds"] / v["env_steps"], 2),
            }
            for k, v in stats.items()
        },
    }


if __name__ == "__main__":
    print(json.dumps([fidelity(Path(p)) for p in sys.argv[1:]], indent=1))
