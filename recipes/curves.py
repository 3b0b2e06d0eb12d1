"""Draw the scaling recipe's two curves and write its table (run by `make -C recipes scaling`).

Reads what the recipe wrote under SCALE_OUT: frac<f>.json and k<K>.json (`eexp eval --compare` summaries, each
method's seeds pooled and tested against IL) and every run's metrics.jsonl. Writes scaling.png (test success
against the expert data and against K: each seed's rate as a dot, the seeds' mean as the line) and scaling.md
(a table per curve: success per seed, pooled, the paired test against IL, and the training-loss plateau).

The plateau is the training loss over the last tenth of a run's updates against the tenth before it: a run whose
loss still falls by more than a few percent there was cut short by the budget, and the curve compares a trained
method with a starved one at that point.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

METHODS = ("IL", "IWM", "SR")
COLORS = {"IL": "#1f77b4", "IWM": "#d62728", "SR": "#2ca02c", "random": "#7f7f7f"}


def rows(summary: dict, split: str) -> dict[str, dict]:
    return {row["run"]: row for row in summary["splits"].get(split, [])}


def plateau(run_dir: Path) -> float | None:
    """Relative fall of the training loss from the second-to-last tenth of the updates to the last tenth."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return None
    losses = [json.loads(line)["loss"] for line in path.read_text().splitlines()
              if '"loss"' in line and json.loads(line).get("phase", "train") == "train"]
    tenth = len(losses) // 10
    if tenth < 1:
        return None
    before = sum(losses[-2 * tenth:-tenth]) / tenth
    last = sum(losses[-tenth:]) / tenth
    return (before - last) / before if before else None


def plateaus(point_dir: Path, method: str) -> str:
    falls = [plateau(seed_dir / method) for seed_dir in sorted(point_dir.glob("seed*"))]
    falls = [f for f in falls if f is not None]
    return "/".join(f"{100 * f:.0f}%" for f in falls) if falls else "-"


def cell(row: dict | None) -> str:
    if row is None:
        return "-"
    per_seed = "/".join(f"{100 * s['success_rate']:.1f}" for s in row.get("per_seed", [row]))
    return f"{per_seed} ({100 * row['success_rate']:.1f})"


def test_cell(row: dict | None) -> str:
    versus = (row or {}).get("vs_first")
    if not versus:
        return ""
    return (f"{100 * versus['success_diff']:+.1f} pts, {versus['tasks_better']}/{versus['tasks_worse']} tasks, "
            f"p = {versus['success_p']:.2g}")


def table(title: str, label: str, points: list[tuple[str, Path, dict]], methods) -> list[str]:
    lines = [f"### {title}", "",
             f"| {label} | split | " + " | ".join(f"{m} % (pooled)" for m in methods)
             + " | " + " | ".join(f"{m} vs IL" for m in methods if m != "IL") + " | loss fall, last tenth |",
             "|" + "---|" * (3 + len(methods) + len([m for m in methods if m != "IL"]))]
    for name, point_dir, summary in points:
        for i, split in enumerate(summary["splits"]):
            r = rows(summary, split)
            # training is the same for every split: its plateau once, on the point's first row
            falls = "" if i else ", ".join(f"{m} {plateaus(point_dir, m)}" for m in METHODS
                                           if any(point_dir.glob(f"seed*/{m}/metrics.jsonl")))
            lines.append(f"| {name} | {split} | " + " | ".join(cell(r.get(m)) for m in methods) + " | "
                         + " | ".join(test_cell(r.get(m)) for m in methods if m != "IL") + f" | {falls} |")
    return lines + [""]


def draw(path: Path, curves: list[tuple[str, str, list[tuple[float, dict]], bool]]) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(5.5 * len(curves), 4.2))
    for ax, (title, xlabel, points, log2) in zip(axes if len(curves) > 1 else [axes], curves):
        for method in (*METHODS, "random"):
            xs, means = [], []
            for x, summary in points:
                row = rows(summary, "test").get(method)
                if row is None:
                    continue
                xs.append(x)
                means.append(100 * row["success_rate"])
                seeds = [100 * s["success_rate"] for s in row.get("per_seed", [])]
                ax.scatter([x] * len(seeds), seeds, color=COLORS[method], alpha=0.35, s=14)
            if xs:
                ax.plot(xs, means, marker="o", color=COLORS[method], label=method,
                        linestyle="--" if method == "random" else "-")
        if log2:
            ax.set_xscale("log", base=2)
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test success % (dots: seeds)")
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scale_out", type=Path)
    parser.add_argument("--fractions", required=True, help="denominators, e.g. 8,4,2,1")
    parser.add_argument("--ks", required=True, help="e.g. 1,2,4,8")
    parser.add_argument("--k-at", type=int, required=True)
    parser.add_argument("--full-n", type=int, required=True)
    parser.add_argument("--steps", type=int, required=True)
    args = parser.parse_args()
    out = args.scale_out
    fractions = [int(f) for f in args.fractions.split(",")]
    ks = [int(k) for k in args.ks.split(",")]

    frac_points = [(f"1/{f}" if f > 1 else "1", out / f"frac{f}", json.loads((out / f"frac{f}.json").read_text()))
                   for f in fractions]
    k_points = [(str(k), out / f"k{k}", json.loads((out / f"k{k}.json").read_text())) for k in ks]
    lines = [f"Equal budget: {args.steps} updates per run; full data = {args.full_n} expert trajectories; "
             f"K curve at 1/{args.k_at} of the data (its IL is that fraction's IL). Cells: success % per seed "
             f"(pooled); tests are the exact sign-flip test over tasks x seeds against IL.", ""]
    lines += table("Data efficiency (Fig. 4a)", "expert data", frac_points, METHODS)
    lines += table("Branching factor (Fig. 4b)", "K", k_points, METHODS)
    (out / "scaling.md").write_text("\n".join(lines))
    draw(out / "scaling.png", [
        ("Data efficiency (test)", f"expert trajectories (of {args.full_n})",
         [(args.full_n // f, s) for (_, _, s), f in zip(frac_points, fractions)], True),
        ("Branching factor (test)", f"K alternatives per state (1/{args.k_at} of the data)",
         [(k, s) for (_, _, s), k in zip(k_points, ks)], True),
    ])
    print("\n".join(lines))


if __name__ == "__main__":
    main()
