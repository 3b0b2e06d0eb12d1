"""Draw the scaling recipe's two curves and write its table (run by `make -C recipes scaling`).

Reads what the recipe wrote under SCALE_OUT: frac<f>.json and k<K>.json (`eexp eval --compare` summaries, each
method's seeds pooled and tested against IL) and every run's metrics.jsonl. Writes scaling.png (test success
against the expert data and against K: each seed's rate as a dot, the seeds' mean as the line; and the runs'
validation losses against the update) and scaling.md (a table per curve: success per seed, pooled, the paired test
against IL, and the validation loss).

The validation loss is each run's loss on the IL examples of held-out train trajectories (the recipe's VAL_N), the
same examples for every run of a seed. Read with the budget, it says whether a run converged: one whose loss is
lowest at its last update was still learning when the budget ran out, and the curve there compares a trained method
with a starved one; one whose loss is lowest far earlier has overfitted its data.
"""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path

METHODS = ("IL", "IWM", "SR")
COLORS = {"IL": "#1f77b4", "IWM": "#d62728", "SR": "#2ca02c", "random": "#7f7f7f"}


def rows(summary: dict, split: str) -> dict[str, dict]:
    return {row["run"]: row for row in summary["splits"].get(split, [])}


def val_curve(run_dir: Path) -> dict[int, float]:
    """A run's validation losses by update (metrics.jsonl rows with `val_loss`); empty without validation."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return {}
    rows = (json.loads(line) for line in path.read_text().splitlines())
    return {row["step"]: row["val_loss"] for row in rows if "val_loss" in row}


@functools.cache  # the table, its header and the plot all ask for the same curves
def mean_val_curve(point_dir: Path, method: str) -> dict[int, float]:
    """The seeds' mean validation loss at every update that all of them logged."""
    curves = [val_curve(seed_dir / method) for seed_dir in sorted(point_dir.glob("seed*"))]
    curves = [c for c in curves if c]
    steps = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
    return {step: sum(c[step] for c in curves) / len(curves) for step in steps}


def val_cell(point_dir: Path, method: str) -> str:
    """`IL 0.412 (0.351 @ 900)`: the seeds' mean validation loss at the end, and its lowest value and update."""
    curve = mean_val_curve(point_dir, method)
    if not curve:
        return ""
    best = min(curve, key=curve.get)
    return f"{method} {curve[max(curve)]:.3f} ({curve[best]:.3f} @ {best})"


def cell(row: dict | None) -> str:
    if row is None:
        return "-"
    per_seed = "/".join(f"{100 * s['success_rate']:.1f}" for s in row.get("per_seed", [row]))
    return f"{per_seed} ({100 * row['success_rate']:.1f})"


def test_cell(row: dict | None) -> str:
    versus = (row or {}).get("vs_first")
    if not versus:
        return ""
    return (
        f"{100 * versus['success_diff']:+.1f} pts, {versus['tasks_better']}/{versus['tasks_worse']} tasks, "
        f"p = {versus['success_p']:.2g}"
    )


def table(title: str, label: str, points: list[tuple[str, Path, dict]], methods) -> list[str]:
    validated = any(val_cell(point_dir, m) for _, point_dir, _ in points for m in METHODS)
    lines = [
        f"### {title}",
        "",
        f"| {label} | split | "
        + " | ".join(f"{m} % (pooled)" for m in methods)
        + " | "
        + " | ".join(f"{m} vs IL" for m in methods if m != "IL")
        + (" | validation loss at the end (lowest @ update) |" if validated else " |"),
        "|" + "---|" * (2 + len(methods) + len([m for m in methods if m != "IL"]) + validated),
    ]
    for name, point_dir, summary in points:
        for i, split in enumerate(summary["splits"]):
            r = rows(summary, split)
            line = (
                f"| {name} | {split} | "
                + " | ".join(cell(r.get(m)) for m in methods)
                + " | "
                + " | ".join(test_cell(r.get(m)) for m in methods if m != "IL")
                + " |"
            )
            if validated:  # training is the same for every split: its losses once, on the point's first row
                line += " " + ("" if i else ", ".join(c for m in METHODS if (c := val_cell(point_dir, m)))) + " |"
            lines.append(line)
    return lines + [""]


def draw(
    path: Path, curves: list[tuple[str, str, list[tuple[float, dict]], bool]], losses: list[tuple[str, Path]]
) -> None:
    """The success curves, then (when the runs were validated) one panel of validation loss against the update for
    every point in `losses`: colour by point, line style by method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    validated = any(mean_val_curve(point_dir, m) for _, point_dir in losses for m in METHODS)
    fig, axes = plt.subplots(1, len(curves) + validated, figsize=(5.5 * (len(curves) + validated), 4.2))
    for ax, (title, xlabel, points, log2) in zip(axes, curves):
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
                ax.plot(
                    xs,
                    means,
                    marker="o",
                    color=COLORS[method],
                    label=method,
                    linestyle="--" if method == "random" else "-",
                )
        if log2:
            ax.set_xscale("log", base=2)
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test success % (dots: seeds)")
        ax.legend()
        ax.grid(alpha=0.3)
    if validated:
        ax = axes[-1]
        shades = plt.get_cmap("viridis")
        for i, (label, point_dir) in enumerate(losses):
            for method, style in zip(METHODS, ("-", "--", ":")):
                curve = mean_val_curve(point_dir, method)
                if curve:
                    ax.plot(
                        list(curve),
                        list(curve.values()),
                        linestyle=style,
                        color=shades(i / max(len(losses) - 1, 1)),
                        label=f"{method} {label}",
                    )
        ax.set_title("Validation loss (held-out IL examples, seed mean)")
        ax.set_xlabel("update")
        ax.set_yscale("log")  # the untrained start and IWM's warm-up sit an order of magnitude above the rest
        ax.set_ylabel("loss per target token (log)")
        ax.legend(fontsize=7, ncol=len(METHODS))
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

    frac_points = [
        (f"1/{f}" if f > 1 else "1", out / f"frac{f}", json.loads((out / f"frac{f}.json").read_text()))
        for f in fractions
    ]
    k_points = [(str(k), out / f"k{k}", json.loads((out / f"k{k}.json").read_text())) for k in ks]
    lines = [
        f"Equal budget: {args.steps} updates per run; full data = {args.full_n} expert trajectories; "
        f"K curve at 1/{args.k_at} of the data (its IL is that fraction's IL). Cells: success % per seed "
        f"(pooled); tests are the exact sign-flip test over tasks x seeds against IL.",
        "",
    ]
    lines += table("Data efficiency (Fig. 4a)", "expert data", frac_points, METHODS)
    lines += table("Branching factor (Fig. 4b)", "K", k_points, METHODS)
    (out / "scaling.md").write_text("\n".join(lines))
    draw(
        out / "scaling.png",
        [
            (
                "Data efficiency (test)",
                f"expert trajectories (of {args.full_n})",
                [(args.full_n // f, s) for (_, _, s), f in zip(frac_points, fractions)],
                True,
            ),
            (
                "Branching factor (test)",
                f"K alternatives per state (1/{args.k_at} of the data)",
                [(k, s) for (_, _, s), k in zip(k_points, ks)],
                True,
            ),
        ],
        [(f"{name} data", point_dir) for name, point_dir, _ in frac_points],
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
