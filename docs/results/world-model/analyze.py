"""World-model accuracy of the demo's checkpoints against their task success (issue 53, item 2).

usage: python analyze.py WORK RECIPE_OUT COMMITTED_DEMO DEST.json

Reads WORK/runs/s<seed>_<run>_<set>.summary.json (eexp world-model-eval --summary) and .nll.json (nll.py), the held-out
outcomes WORK/heldout24.jsonl and WORK/train11_s0.jsonl (for the copy baseline), the recipe's eval files
(RECIPE_OUT/seed<s>/eval/<run>.jsonl, test split) and the committed demo's (COMMITTED_DEMO/seed<s>/eval/<run>.jsonl.gz);
writes DEST (docs/results/world-model/summary.json) and prints the tables of docs/results/world-model.md.
"""

from __future__ import annotations

import gzip
import json
import math
import random
import sys
from pathlib import Path

from eexp.prompts import clip, format_observation, read_observation
from eexp.stages.world_model_eval import token_f1
from eexp.stats import wilson
from eexp.text import normalize_space

W, RECIPE, COMMITTED = (Path(a) for a in sys.argv[1:4])
OUT = W / "runs"
RUNS = ["base", "WM", "IL", "IWM", "IWM@IL", "IL@IWM", "ActObs", "IL@SR", "SR"]


def success(path: Path, split: str = "test") -> tuple[int, int] | None:
    """(successes, episodes) of a split: from eval's --summary beside the episodes (RUN.test.summary.json), else
    from the episode records."""
    summary = path.with_name(path.name.split(".")[0] + f".{split}.summary.json")
    if summary.exists():
        s = json.loads(summary.read_text())
        return s["successes"], s["n"]
    if not path.exists():
        return None
    opener = gzip.open if path.suffix == ".gz" else open
    k = n = 0
    with opener(path, "rt") as f:
        for line in f:
            r = json.loads(line)
            if "success" in r and r["task"]["split"] == split:
                k += int(bool(r["success"]))
                n += 1
    return k, n


def lines(path: Path):
    gz = path.with_name(path.name + ".gz")
    return gzip.open(gz, "rt") if gz.exists() and not path.exists() else open(path)


def copy_baseline(outcomes: Path) -> dict:
    """The model that predicts no change: the current observation as the next one."""
    f1s, exact, changed = [], 0, 0
    for line in lines(outcomes):
        o = json.loads(line)
        current = o["state"]["observation"]
        for ex in [o["expert"], *o["alternatives"]]:
            if ex.get("next_observation") is None or ex.get("error"):
                continue
            target, _ = read_observation(format_observation(ex["next_observation"], 0))
            prediction = clip(current, 0)
            f1s.append(token_f1(prediction, target))
            exact += prediction == target
            changed += normalize_space(ex["next_observation"]) == normalize_space(current)  # predicted "unchanged"
    n = len(f1s)
    return {"n": n, "exact": exact / n, "f1": sum(f1s) / n, "changed": changed / n}


def pearson(x, y):
    mx, my = sum(x) / len(x), sum(y) / len(y)
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    sx = math.sqrt(sum((a - mx) ** 2 for a in x))
    sy = math.sqrt(sum((b - my) ** 2 for b in y))
    return sxy / (sx * sy) if sx and sy else float("nan")


def ranks(v):
    order = sorted(range(len(v)), key=lambda i: v[i])
    r = [0.0] * len(v)
    i = 0
    while i < len(v):
        j = i
        while j + 1 < len(v) and v[order[j + 1]] == v[order[i]]:
            j += 1
        for k in range(i, j + 1):
            r[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return r


def spearman(x, y):
    return pearson(ranks(x), ranks(y))


def correlate(points, key, resamples=10000, seed=0):
    x = [p[key] for p in points]
    y = [p["success"] for p in points]
    n = len(points)
    out = {"n": n, "pearson": pearson(x, y), "spearman": spearman(x, y)}
    rng = random.Random(seed)
    boots = {"pearson": [], "spearman": []}
    for _ in range(resamples):
        idx = [rng.randrange(n) for _ in range(n)]
        bx, by = [x[i] for i in idx], [y[i] for i in idx]
        for name, fn in (("pearson", pearson), ("spearman", spearman)):
            v = fn(bx, by)
            if not math.isnan(v):
                boots[name].append(v)
    for name, vs in boots.items():
        vs.sort()
        out[f"{name}_ci"] = [vs[int(0.025 * len(vs))], vs[int(0.975 * len(vs)) - 1]] if vs else None
        out[f"{name}_defined"] = len(vs)
    if math.isnan(out["pearson"]):
        out["pearson_perm_p"] = None
        out["undefined"] = "no variance in one of the two"
        return out
    # exact permutation p over the n! orderings is too many past 8 points: a seeded permutation test
    obs = abs(out["pearson"])
    hits = 0
    for _ in range(resamples):
        yy = y[:]
        rng.shuffle(yy)
        v = pearson(x, yy)
        hits += (not math.isnan(v)) and abs(v) >= obs - 1e-12
    out["pearson_perm_p"] = (hits + 1) / (resamples + 1)
    return out


def main() -> None:
    rows = []
    for summary in sorted(OUT.glob("s*_*.summary.json")):
        seed_part, rest = summary.name.split("_", 1)
        run, data = rest.removesuffix(".summary.json").rsplit("_", 1)
        seed = int(seed_part[1:])
        s = json.loads(summary.read_text())
        e = s["envs"]["shop"]
        row = {
            "seed": seed,
            "run": run,
            "data": data,
            "predictions": e["predictions"],
            "states": e["states"],
            "exact": e["exact_match"]["rate"],
            "exact_k": e["exact_match"]["k"],
            "exact_ci": [e["exact_match"]["ci_low"], e["exact_match"]["ci_high"]],
            "f1": e["f1"]["mean"],
            "f1_ci": [e["f1"]["ci_low"], e["f1"]["ci_high"]],
            "changed": e["changed"]["rate"],
            "recorded_changed": e["changed"]["recorded_changed"],
            "valid": e["valid"].get("rate"),
            "valid_n": e["valid"]["n"],
            "recorded_invalid": e["valid"].get("recorded_invalid"),
            "labelled": e["labelled"]["rate"],
            "cut": e["cut"],
            "f1_expert": e["by_action"]["expert"]["f1"]["mean"],
            "f1_alternatives": e["by_action"]["alternatives"]["f1"]["mean"],
            "exact_expert": e["by_action"]["expert"]["exact_match"]["rate"],
            "exact_alternatives": e["by_action"]["alternatives"]["exact_match"]["rate"],
        }
        mine = None if data != "test" else success(RECIPE / f"seed{seed}" / "eval" / f"{run}.jsonl")
        if mine:
            row["success_k"], row["success_n"] = mine
            row["success"] = mine[0] / mine[1]
            row["success_ci"] = list(wilson(*mine))
        probe = OUT / summary.name.replace(".summary.json", ".nll.json")
        if probe.exists():
            pr = json.loads(probe.read_text())
            row["nll"], row["rank_accuracy"], row["rank_pairs"] = pr["nll_mean"], pr["rank_accuracy"], pr["rank_pairs"]
            row["nll_content"] = pr.get("nll_content_mean")
        committed = None if data != "test" else success(COMMITTED / f"seed{seed}" / "eval" / f"{run}.jsonl.gz")
        if committed:
            row["committed_success_k"], row["committed_success_n"] = committed
        rows.append(row)
    rows.sort(key=lambda r: (r["data"], r["seed"], RUNS.index(r["run"]) if r["run"] in RUNS else 99))
    baselines = {"test": copy_baseline(W / "heldout24.jsonl")}
    if (W / "train11_s0.jsonl").exists() or (W / "train11_s0.jsonl.gz").exists():
        baselines["train_s0"] = copy_baseline(W / "train11_s0.jsonl")
    test = [r for r in rows if r["data"] == "test" and "success" in r]
    trained = [r for r in test if r["run"] not in ("base", "WM")]
    corr = {}
    for name, pts in (("trained_runs", trained), ("with_floors", test)):
        if len(pts) >= 3:
            corr[name] = {
                "points": [f"s{r['seed']}:{r['run']}" for r in pts],
                "f1": correlate(pts, "f1"),
                "exact": correlate(pts, "exact"),
            }
            if all("nll" in r for r in pts):
                corr[name]["nll"] = correlate(pts, "nll")
                corr[name]["rank_accuracy"] = correlate(pts, "rank_accuracy")
    result = {"rows": rows, "copy_baseline": baselines, "correlation": corr}
    dest = Path(sys.argv[4])
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(result, indent=1) + "\n")

    def pc(x):
        return "" if x is None else f"{100 * x:.1f}%"

    print(
        "| seed | run | held-out set | predictions | exact match [95% CI] | token F1 [95% CI] "
        "| F1 expert / alternatives | changed right | labelled | NLL a token (all / page) "
        "| ranks own page above another's | test success (this run) | committed run's test success |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        succ = f"{r['success_k']}/{r['success_n']} ({pc(r['success'])})" if "success" in r else "-"
        nll = (
            f"{r['nll']:.2f} / {r['nll_content']:.2f}"
            if r.get("nll_content") is not None
            else f"{r['nll']:.2f} / -"
            if "nll" in r
            else "-"
        )
        rank = f"{pc(r['rank_accuracy'])} of {r['rank_pairs']} pairs" if "nll" in r else "-"
        com = f"{r['committed_success_k']}/{r['committed_success_n']}" if "committed_success_k" in r else "-"
        print(
            f"| {r['seed']} | {r['run']} | {r['data']} | {r['predictions']} | "
            f"{pc(r['exact'])} [{pc(r['exact_ci'][0])}, "
            f"{pc(r['exact_ci'][1])}] | {r['f1']:.3f} [{r['f1_ci'][0]:.3f}, {r['f1_ci'][1]:.3f}] | "
            f"{r['f1_expert']:.3f} / {r['f1_alternatives']:.3f} | {pc(r['changed'])} | {pc(r['labelled'])} | "
            f"{nll} | {rank} | {succ} | {com} |"
        )
    print(json.dumps(baselines))
    for name, c in corr.items():
        for key in ("f1", "exact", "nll", "rank_accuracy"):
            if key not in c:
                continue
            v = c[key]
            if v.get("undefined"):
                print(f"{name} {key}: n={v['n']} undefined: {v['undefined']}")
                continue
            print(
                f"{name} {key}: n={v['n']} pearson {v['pearson']:.3f} {v['pearson_ci']} spearman {v['spearman']:.3f} "
                f"{v['spearman_ci']} perm p {v['pearson_perm_p']:.3f}"
            )


if __name__ == "__main__":
    main()
