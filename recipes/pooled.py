"""The pooled table of a recipe run with seeds, from its committed episode files (`make -C recipes pooled`).

Reads RESULTS/seed<s>/eval/<run>.jsonl.gz (episodes from reset, test and ood) and RESULTS/seed<s>/recovery/<run>.jsonl.gz
(the recovery test: episodes that start off the expert's path, `eval --start off-path`) for every seed folder there
is, pools each run's seeds with `eexp eval --compare`'s own code (eexp.compare: success over tasks x seeds, each run
against IL by the exact sign-flip test on per-task successes summed over seeds, and the paired bootstrap on score),
and prints one markdown table, or with --write updates RESULTS/pooled.md, RESULTS/pooled.json and the plot
RESULTS/pooled.png. tests/test_results.py recomputes the table from the committed files and checks that the results
page and the README show it as it is, so the table cannot drift from its data.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from eexp.compare import compare_runs, plot_comparison, read_runs

# SR~constrained: SR evaluated like IL, constrained to the actions without its thought (seed 0 only; SR is evaluated
# thought first since)
RUNS = ("IL", "IWM", "SR", "SR-grounded", "SR~constrained", "random")
KINDS = {"eval": ("test", "ood"), "recovery": ("test",)}   # folder: its splits
LABEL = {("eval", "test"): "test", ("eval", "ood"): "ood", ("recovery", "test"): "recovery (test, off-path)"}


def seeds(results: Path) -> list[Path]:
    return sorted((p for p in results.glob("seed*") if p.is_dir()), key=lambda p: int(p.name[4:]))


def pooled(results: Path) -> dict:
    """{kind: eexp.compare result} for the runs found in the seed folders. Each run pools the seeds that hold it
    (seed 0 has `SR~constrained`, later seeds `SR` and `SR-grounded`), and is tested against IL over those same
    seeds, so every test pairs runs of one seed; IL's own row pools every seed."""
    folders = seeds(results)
    if not folders:
        raise SystemExit(f"{results}: no seed<s> folders")
    out = {}
    for kind in KINDS:
        def files(run: str) -> list[Path]:
            return [f / kind / f"{run}.jsonl.gz" for f in folders if (f / kind / f"{run}.jsonl.gz").exists()]
        il = files(RUNS[0])
        if not il:
            continue
        env, runs = read_runs([f"{RUNS[0]}={','.join(map(str, il))}"])
        result = compare_runs(env, runs, seed=0)
        for run in RUNS[1:]:
            mine = files(run)
            if not mine:
                continue
            paired = [f.parent.parent / kind / f"{RUNS[0]}.jsonl.gz" for f in mine]
            missing = [str(f) for f in paired if not f.exists()]
            if missing:
                raise SystemExit(f"{run}: {kind} episodes without IL's of the same seed ({', '.join(missing)})")
            env, runs = read_runs([f"{RUNS[0]}={','.join(map(str, paired))}", f"{run}={','.join(map(str, mine))}"])
            against = compare_runs(env, runs, seed=0)
            for split, rows in against["splits"].items():
                result["splits"].setdefault(split, []).extend(rows[1:])   # rows[0] is IL over these seeds
        out[kind] = result
    return out


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def table(result: dict) -> str:
    lines = ["| split | run | seeds | episodes | success (pooled) | seeds' min-max (one seed: 95% CI) | mean score | "
             "vs IL: success "
             "(tasks better / worse, p) | vs IL: score (bootstrap p) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for kind, splits in KINDS.items():
        for split in splits:
            for row in (result.get(kind) or {}).get("splits", {}).get(split, []):
                spread = (f"{pct(row['seed_success']['min'])} - {pct(row['seed_success']['max'])}"
                          if row.get("seed_success") else f"[{pct(row['ci_low'])}, {pct(row['ci_high'])}]")
                vs = row.get("vs_first")
                if not vs:
                    success = "(reference)"
                elif "tasks_better" in vs:   # seeds pooled: the exact sign-flip test over tasks
                    success = (f"{100 * vs['success_diff']:+.1f} pts ({vs['tasks_better']} / {vs['tasks_worse']}, "
                               f"sign-flip p = {vs['success_p']:.3g})")
                else:                        # one seed each: McNemar's exact test over the discordant tasks
                    success = (f"{100 * vs['success_diff']:+.1f} pts ({vs['only_this']} / {vs['only_first']}, "
                               f"McNemar p = {vs['mcnemar_p']:.3g})")
                score = f"{vs['score_diff']:+.3f} (p = {vs['bootstrap_p']:.3g})" if vs else ""
                lines.append(f"| {LABEL[kind, split]} | {row['run']} | {row.get('seeds', 1)} | {row['n']} | "
                             f"{pct(row['success_rate'])} | {spread} | {row['mean_score']:.3f} | {success} | {score} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", type=Path, help="the folder holding seed<s>/eval and seed<s>/recovery")
    ap.add_argument("--write", action="store_true", help="write pooled.md, pooled.json and pooled.png there")
    args = ap.parse_args()
    result = pooled(args.results)
    text = table(result)
    print(text, end="")
    if args.write:
        (args.results / "pooled.md").write_text(text)
        (args.results / "pooled.json").write_text(json.dumps(result, indent=1) + "\n")
        merged = {**result["eval"], "splits": {**result["eval"]["splits"], **{
            "recovery": rows for rows in [result.get("recovery", {}).get("splits", {}).get("test")] if rows}}}
        plot_comparison(merged, str(args.results / "pooled.png"))


if __name__ == "__main__":
    main()
