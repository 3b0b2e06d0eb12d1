"""The pooled table of a recipe run with seeds, from its committed episode files (`make -C recipes pooled`).

Reads RESULTS/seed<s>/eval/<run>.jsonl.gz (episodes from reset, test and ood) and
RESULTS/seed<s>/recovery/<run>.jsonl.gz
(the recovery test: episodes that start off the expert's path, `eval --start off-path`) for every seed folder there
is, pools each run's seeds with `eexp eval --compare`'s own code (eexp.stages.evaluate.compare: success over tasks x
seeds, each run against IL first over seeds, seed s against seed s: the per-seed differences, how many are above IL,
a hierarchical bootstrap interval and the exact sign-flip test over seeds, which 3 seeds cannot bring below
p = 0.25; then over tasks by the exact sign-flip test on per-task successes summed over seeds, and the paired
bootstrap on score), and prints one markdown table (then, where the runs have them: each method against its
compute-matched control with the planned primary tests, a thought-first run over the seeds whose model wrote its
thoughts, how the thought-first runs thought, success@1..N of runs given several attempts, each seed's successes and
the critic's held-out accuracy), or with --write updates RESULTS/pooled.md, RESULTS/pooled.json (its files named
relative to RESULTS) and the plots RESULTS/pooled.png and validation.png. A folder with starts/ holds the
expert-step RL recipe's runs instead (expert_step_table).
With --costs it prints what each seed's fine-tunes and evaluations did instead (seed_costs: the figures of a page's
cost table). tests/test_results.py recomputes the table from the committed files and checks that the results
page and the README show it as it is, so the table cannot drift from its data.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from eexp.io import write_atomic
from eexp.records import expect
from eexp.stages.evaluate.compare import (
    MAX_LISTED_SEEDS,
    POWER_NOTE,
    TOO_FEW_SEEDS,
    compare_runs,
    floored,
    p_text,
    plot_comparison,
    power_text,
    read_inputs,
    read_runs,
    too_few_note,
)
from eexp.stages.evaluate.summary import success_at, summarize
from eexp.stats import bootstrap_min_pairs, holm

# SR~constrained: SR evaluated like IL, constrained to the actions without its thought (seed 0 only; SR is evaluated
# thought first since); SR~score: the same with IL's --act score (the Makefile's SCORE_ROWS). DPO .. IWM-curated:
# the signals recipe's rows (configs/signals.mk). A run a folder lacks is left out, so one list serves every recipe
# that publishes.
# IWM@IL, IL@SR, IL@IWM: the compute-matched rows (recipes/Makefile's MATCHED_ROWS), RUN@OTHER trained for OTHER's
# update count.
RUNS = (
    "IL",
    "IWM",
    "SR",
    "SR-grounded",
    "SR~constrained",
    "SR~score",
    "ActObs",
    "IWM@IL",
    "IL@SR",
    "IL@IWM",
    "DPO",
    "IL+critic",
    "IL+reflexion",
    "IL-curated",
    "IWM-curated",
    "random",
)
# Each method against its compute-matched control as well as against IL: (method, control), where both are kept.
MATCHED = (("SR", "IL@SR"), ("SR~score", "IL@SR"), ("SR-grounded", "IL@SR"), ("IWM", "IL@IWM"))
# The planned primary tests of a comparison with compute-matched controls (the demo's 20-seed plan, ALFWorld's 10-seed
# plan: docs/results/demo.md, alfworld.md): on test, each method against IL trained for its update count, judged as a
# family with Holm's correction over the pairs a folder holds.
PRIMARY = (("IWM", "IL@IWM"), ("SR", "IL@SR"), ("SR~score", "IL@SR"))
# A seed's model "wrote no thought" where more than this share of its thoughts were cut before `Action:` (the demo's
# seeds that did: 81-100%; the others: at most 5%)
WROTE_NO_THOUGHT = 0.5
KINDS = {"eval": ("test", "ood", "combo"), "recovery": ("test",)}  # folder: its splits
LABEL = {
    ("eval", "test"): "test",
    ("eval", "ood"): "ood",
    ("eval", "combo"): "combo",
    ("recovery", "test"): "recovery (test, off-path)",
}


def seeds(results: Path) -> list[Path]:
    return sorted((p for p in results.glob("seed*") if p.is_dir()), key=lambda p: int(p.name[4:]))


def pooled(results: Path, pairs: tuple[tuple[str, str], ...] | None = None, folders: list[Path] | None = None) -> dict:
    """{kind: eexp.stages.evaluate.compare result} for the runs found in the seed folders. Each run pools the seeds
    that hold it (seed 0 has `SR~constrained`, later seeds `SR` and `SR-grounded`), and is tested against IL over those
    same seeds, so every test pairs runs of one seed; IL's own row pools every seed.

    pairs: (run, reference) to test instead of every run against IL (the matched controls, MATCHED); each reference
    gets its own row, then the runs tested against it. folders: these seed folders of results only (all of them
    unless given)."""
    folders = seeds(results) if folders is None else folders
    if not folders:
        raise SystemExit(f"{results}: no seed<s> folders")
    out = {}
    for kind in KINDS:

        def files(run: str) -> list[Path]:
            return [f / kind / f"{run}.jsonl.gz" for f in folders if (f / kind / f"{run}.jsonl.gz").exists()]

        result = None
        for run, reference in pairs or [(run, RUNS[0]) for run in RUNS[1:]]:
            mine, theirs = files(run), files(reference)
            if not theirs or (pairs and not mine):
                continue
            if result is None or result["runs"][0] != reference:
                if result is not None:  # a new reference: the rows so far are done
                    out.setdefault(kind, []).append(result)
                env, runs = read_runs([f"{reference}={','.join(map(str, theirs))}"], cache=EPISODES)
                result = compare_runs(env, runs, seed=0)
                result["runs"] = [reference]
            if not mine:
                continue
            paired = [f.parent.parent / kind / f"{reference}.jsonl.gz" for f in mine]
            if pairs:  # a control trained for fewer seeds than its method: the method over the seeds it has
                mine, paired = [m for m, p in zip(mine, paired) if p.exists()], [p for p in paired if p.exists()]
                if not mine:
                    continue
            missing = [str(f) for f in paired if not f.exists()]
            if missing:
                raise SystemExit(
                    f"{run}: {kind} episodes without {reference}'s of the same seed ({', '.join(missing)})"
                )
            env, runs = read_runs(
                [f"{reference}={','.join(map(str, paired))}", f"{run}={','.join(map(str, mine))}"], cache=EPISODES
            )
            against = compare_runs(env, runs, seed=0)
            for split, rows in against["splits"].items():
                result["splits"].setdefault(split, []).extend(rows[1:])  # rows[0] is the reference over these seeds
        if result is not None:
            out.setdefault(kind, []).append(result)
    if pairs:
        return {kind: merge(results_) for kind, results_ in out.items()}
    return {kind: results_[0] for kind, results_ in out.items()}


def named_from(result, results: Path):
    """The result with every episode file named relative to the results folder, as compare.json names its files, so
    pooled.json reads the same whichever folder pooled.py ran from (`make pooled` runs in recipes/)."""
    if isinstance(result, list):
        return [named_from(item, results) for item in result]
    if isinstance(result, dict):
        return {
            key: os.path.relpath(value, results) if key == "file" else named_from(value, results)
            for key, value in result.items()
        }
    return result


def merge(results: list[dict]) -> dict:
    """Several compare results (one per reference) as one, their rows split by split in reference order."""
    merged = {**results[0], "splits": {}}
    for result in results:
        for split, rows in result["splits"].items():
            merged["splits"].setdefault(split, []).extend(rows)
    return merged


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def table(result: dict, reference: str = "IL") -> str:
    """The pooled table, the test over seeds leading (a claim about a method rests on its seeds), and under it, where
    a row has too few seeds for a seed-level claim, why. reference: what the rows are tested against, for the header
    (the matched table's rows follow their control's row)."""
    lines = [
        "| split | run | seeds | episodes | success (pooled) | seeds' min-max (one seed: 95% CI) | mean score | "
        f"vs {reference} over seeds: success per seed (seeds above); mean [95% CI], p | vs {reference} over "
        f"tasks: success (tasks better / worse, p) | vs {reference}: score (bootstrap p) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    few, seed_rows = [], 0
    for kind, splits in KINDS.items():
        for split in splits:
            for row in (result.get(kind) or {}).get("splits", {}).get(split, []):
                spread = (
                    f"{pct(row['seed_success']['min'])} - {pct(row['seed_success']['max'])}"
                    if row.get("seed_success")
                    else f"[{pct(row['ci_low'])}, {pct(row['ci_high'])}]"
                )
                vs = row.get("vs_first")
                by_seed = (vs or {}).get("seed_level")
                seeds_cell = "" if vs else "(reference)"
                if by_seed:
                    seed_rows += 1
                    seeds_cell = seed_cell(by_seed, result[kind]["resamples"])
                    if not by_seed["enough_seeds"]:
                        few.append(by_seed["seeds"])
                if not vs:
                    success = ""
                elif "tasks_better" in vs:  # seeds pooled: the exact sign-flip test over tasks
                    success = (
                        f"{100 * vs['success_diff']:+.1f} pts ({vs['tasks_better']} / {vs['tasks_worse']}, "
                        f"sign-flip p = {vs['success_p']:.3g})"
                    )
                else:  # one seed each: McNemar's exact test over the discordant tasks
                    success = (
                        f"{100 * vs['success_diff']:+.1f} pts ({vs['only_this']} / {vs['only_first']}, "
                        f"McNemar p = {vs['mcnemar_p']:.3g})"
                    )
                resamples = result[kind]["resamples"]
                score = f"{vs['score_diff']:+.3f} ({p_text(vs['bootstrap_p'], resamples)})" if vs else ""
                lines.append(
                    f"| {LABEL[kind, split]} | {row['run']} | {row.get('seeds', 1)} | {row['n']} | "
                    f"{pct(row['success_rate'])} | {spread} | {row['mean_score']:.3f} | {seeds_cell} | "
                    f"{success} | {score} |"
                )
    note = ""
    if few:
        alpha = next(iter(result.values()))["alpha"]
        note = f"\n{TOO_FEW_SEEDS[0].upper()}{TOO_FEW_SEEDS[1:]}: {too_few_note(alpha, few)}\n"
    if seed_rows:
        note += f"\nPower {POWER_NOTE}.\n"
    return "\n".join(lines) + "\n" + note


def seed_cell(s: dict, resamples: int) -> str:
    """A run against IL over seeds: each seed's difference in points (beyond eval --compare's MAX_LISTED_SEEDS, their
    sd), how many are above, the mean with its hierarchical bootstrap interval and p (with fewer seeds than a
    bootstrap claim needs, the mean alone), the exact sign-flip test over seeds with, when too few, that, and the
    power over these seeds: the smallest difference they can tell from zero and the seeds the observed mean would
    need (eval --compare's power_text)."""
    if s["seeds"] > MAX_LISTED_SEEDS:
        diffs = f"{s['seeds']} seed differences, sd {100 * s['sd']:.1f}"
    else:
        diffs = ", ".join(f"{100 * d:+.1f}" for d in s["diffs"])
    claim = f": {s['verdict']}" if not s["enough_seeds"] else f", {s['verdict']}"
    mean = f"{100 * s['mean_diff']:+.1f}"
    if s.get("bootstrap_enough", True):
        mean += (
            f" [{100 * s['ci_low']:+.1f}, {100 * s['ci_high']:+.1f}], bootstrap "
            f"{p_text(floored(s['bootstrap_p'], resamples), resamples)}"
        )
    else:
        mean += f" (no bootstrap claim under {bootstrap_min_pairs(s.get('alpha', 0.05))} seeds)"
    return (
        f"{diffs} pts ({s['above']}/{s['seeds']} above); {mean}; sign-flip p = {s['sign_flip_p']:.3g}{claim}"
        f"{power_text(s)}"
    )


def attempts_table(results: Path) -> str:
    """success@1..N of every run evaluated with several attempts per task (IL+reflexion), pooled over its seeds: a
    task solved at attempt j counts for every k >= j (eval's own success_at)."""
    rows = []
    for run in RUNS:
        files = [f / "eval" / f"{run}.jsonl.gz" for f in seeds(results) if (f / "eval" / f"{run}.jsonl.gz").exists()]
        for split in KINDS["eval"]:
            episodes = [e for path in files for e in read_episodes(path) if e["meta"]["split"] == split]
            if episodes and max(e["meta"].get("attempts_allowed", 1) for e in episodes) > 1:
                rows.append((split, run, len(files), len(episodes), success_at(episodes)))
    if not rows:
        return ""
    most = max(len(at) for *_, at in rows)
    header = ["split", "run", "seeds", "episodes", *(f"success@{k} (95% CI)" for k in range(1, most + 1))]
    lines = [
        f"| {split} | {run} | {n_seeds} | {n} | "
        + " | ".join(f"{pct(a['success_rate'])} [{pct(a['ci_low'])}, {pct(a['ci_high'])}]" for a in at)
        + " |" * (most - len(at) + 1)
        for split, run, n_seeds, n, at in rows
    ]
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *lines]) + "\n"


def thoughts_table(results: Path) -> str:
    """How the runs evaluated thought first (`eval --act think`) thought, pooled over their seeds: the steps whose
    reply had a thought and those whose thought was cut before `Action:` (eval's own summary, its thought_share and
    thoughts_cut_share), the cut share's spread over the seeds (one seed's model may write thoughts and another's
    not), and why the cut thoughts ended where eval recorded it (thoughts_stopped: an action written where the thought
    goes, no thought, another early end; the rest may have run into the thought budget). Issue 40's bar: a thought in
    >= 95% of steps, <= 5% cut."""
    lines = []
    for kind, splits in KINDS.items():
        for run in RUNS:
            files = [f / kind / f"{run}.jsonl.gz" for f in seeds(results) if (f / kind / f"{run}.jsonl.gz").exists()]
            per_seed = [read_episodes(path) for path in files]
            for split in splits:
                mine = [[e for e in episodes if e["meta"]["split"] == split] for episodes in per_seed]
                everything = [e for episodes in mine for e in episodes]
                if not everything:
                    continue
                env = everything[0]["task"].get("env", "")
                summary = summarize(everything, env=env, policy=run)
                if "thoughts_cut" not in summary:  # not evaluated thought first
                    continue
                steps = sum(e["steps"] for e in everything if "thoughts_cut" in e["meta"])
                shares = [
                    summarize(episodes, env=env, policy=run)["thoughts_cut_share"] for episodes in mine if episodes
                ]
                spread = f"{pct(min(shares))} - {pct(max(shares))}" if len(shares) > 1 else ""
                stopped = summary.get("thoughts_stopped")
                why = (
                    f"{stopped['action']} / {stopped['empty']} / {stopped['other']} / "
                    f"{summary['thoughts_cut'] - sum(stopped.values())}"
                    if stopped
                    else "not recorded"
                )
                lines.append(
                    f"| {LABEL[kind, split]} | {run} | {len(files)} | {steps} | "
                    f"{summary['thought_steps']} ({pct(summary['thought_share'])}) | "
                    f"{summary['thoughts_cut']} ({pct(summary['thoughts_cut_share'])}) | {spread} | {why} |"
                )
    if not lines:
        return ""
    return (
        "\n".join(
            [
                "| split | run | seeds | steps | steps with a thought | thoughts cut before `Action:` | cut, seeds' "
                "min-max | the cut thoughts: an action where the thought goes / none / ended early otherwise / "
                "the rest (at the budget or near it) |",
                "|---|---|---|---|---|---|---|---|",
                *lines,
            ]
        )
        + "\n"
    )


def machine(folder: Path) -> str:
    """The CPU a seed was trained on (seed<s>/machine.txt's `cpu:` line, and its kernels' `env:` when set; without
    it, the machine a published run's card records), or `not recorded`: training diverges between CPUs, so a user
    checks a seed against a run on the same kind."""
    try:
        fields = dict(line.split(": ", 1) for line in (folder / "machine.txt").read_text().splitlines() if ": " in line)
    except OSError:
        cards = sorted((folder / "train").glob("*.card.yaml"))
        if not cards:
            return "not recorded"
        import yaml

        card = (yaml.safe_load(cards[0].read_text()) or {}).get("machine") or {}
        kernels = str(card.get("cpu_capability") or "").lower()
        cpuid = f" ({card['cpuid']})" if card.get("cpu") and card.get("cpuid") else ""
        return str(card.get("cpu") or "not recorded") + cpuid + (f", {kernels} kernels" if kernels else "")
    kernels = " ".join(
        part.split("=", 1)[1] for part in fields.get("env", "").split() if part.startswith("ATEN_CPU_CAPABILITY=")
    )
    return fields.get("cpu", "not recorded") + (f", {kernels} kernels" if kernels else "")


def seed_costs(folder: Path) -> dict:
    """What a seed's fine-tunes and evaluations did, from its committed cards, training logs and episodes (the
    results pages' cost tables): each run's updates; the tokens trained (each phase's tokens times its epochs);
    the CPU-minutes those tokens take at each run's 90th-percentile logged rate (a run's fastest stretches: beside
    other work the logged rate falls, so this is about what the run costs with a core to itself); and the steps of
    every evaluation episode. A run whose log has no rate counts in the tokens, not in the CPU-minutes."""
    import gzip

    import yaml

    updates, tokens, minutes, rates = {}, 0.0, 0.0, {}
    for card_path in sorted((folder / "train").glob("*.card.yaml")):
        run = card_path.name.removesuffix(".card.yaml")
        card = yaml.safe_load(card_path.read_text()) or {}
        run_tokens = sum(phase["tokens"] * phase["epochs"] for phase in card.get("phases") or [])
        log = folder / "train" / f"{run}.metrics.jsonl"
        logged = (
            sorted(r["tokens_per_s"] for r in map(json.loads, log.read_text().splitlines()) if "tokens_per_s" in r)
            if log.exists()
            else []
        )
        updates[run] = card.get("updates")
        tokens += run_tokens
        if logged:
            rates[run] = logged[int(0.9 * (len(logged) - 1))]
            minutes += run_tokens / rates[run] / 60
    steps = 0
    for episodes in (folder / "eval").glob("*.jsonl.gz"):
        with gzip.open(episodes) as f:
            steps += sum(record["steps"] for record in map(json.loads, f))
    return {"updates": updates, "tokens": tokens, "cpu_minutes": minutes, "rates": rates, "eval_steps": steps}


def costs_text(results: Path) -> str:
    """seed_costs of every seed, a line each (`pooled.py --costs`): the figures a page's cost table quotes."""
    lines = []
    for folder in seeds(results):
        c = seed_costs(folder)
        runs = ", ".join(f"{run} {n:,}" for run, n in c["updates"].items())
        rates = c["rates"].values()
        lines.append(
            f"{folder.name}: updates {runs}; {c['tokens'] / 1e6:,.0f} million tokens, about "
            f"{c['cpu_minutes']:,.0f} CPU-minutes at each run's 90th-percentile logged rate "
            f"({min(rates, default=0):,.0f}-{max(rates, default=0):,.0f} tokens a second); "
            f"{c['eval_steps']:,} evaluation steps"
        )
    return "\n".join(lines) + "\n"


def seed_table(results: Path) -> str:
    """Each seed's success per run and split (successes of episodes), and the machine that trained it: the figures
    a user checks their own seed against, beside the pooled rates and the differences."""
    folders = seeds(results)
    lines = []
    for kind, splits in KINDS.items():
        found = [run for run in RUNS if any((f / kind / f"{run}.jsonl.gz").exists() for f in folders)]
        if not found:
            continue
        for split in splits:
            rows = []
            for folder in folders:
                cells = []
                for run in found:
                    path = folder / kind / f"{run}.jsonl.gz"
                    mine = [e for e in read_episodes(path) if e["meta"]["split"] == split] if path.exists() else []
                    cells.append(f"{sum(bool(e['success']) for e in mine)}/{len(mine)}" if mine else "")
                if any(cells):
                    rows.append(
                        f"| {LABEL[kind, split]} | {folder.name[4:]} | {machine(folder)} | " + " | ".join(cells) + " |"
                    )
            if rows:
                lines += [
                    f"| split | seed | machine | {' | '.join(found)} |",
                    "|---|---|---|" + "---|" * len(found),
                    *rows,
                    "",
                ]
    return "\n".join(lines)


def critic_table(results: Path) -> str:
    """The critic's accuracy on held-out states (critic_eval/<split>.json of every seed, `eexp critic-eval`): the
    seeds' mean, min and max of each measure."""
    lines = []
    for split in KINDS["eval"]:
        found = [
            json.loads(p.read_text())
            for f in seeds(results)
            for p in [f / "critic_eval" / f"{split}.json"]
            if p.exists()
        ]
        if not found:
            continue

        def cell(key: str) -> str:
            values = [r[key] for r in found]
            return (
                f"{pct(sum(values) / len(values))} ({pct(min(values))} - {pct(max(values))})"
                if len(values) > 1
                else pct(values[0])
            )

        lines.append(
            f"| {split} | {len(found)} | {sum(r['states'] for r in found)} | {cell('top1')} | "
            f"{cell('chance_top1')} | {cell('pair_accuracy')} | {cell('balanced_accuracy')} |"
        )
    if not lines:
        return ""
    return (
        "\n".join(
            [
                "| held-out split | seeds | states | top-1: expert's action scored first | chance top-1 | "
                "pairs ordered right | balanced accuracy |",
                "|---|---|---|---|---|---|---|",
                *lines,
            ]
        )
        + "\n"
    )


# every kept file's episodes by path, read once: the tables read each file about ten times (read_inputs' cache)
EPISODES: dict[str, list] = {}


def read_episodes(path: Path) -> list[dict]:
    """The episode records of one kept file, read as eval --compare reads it (eexp.io: .jsonl.gz as it is)."""
    [(_, records, _)] = read_inputs([str(path)], expect("episode"), "episodes", cache=EPISODES)
    return [record for record, _ in records]


def expert_step_table(results: Path) -> str:
    """The expert-step RL recipe's table (`make -C recipes rl-expert-step`, kept as RESULTS/starts/<S>.jsonl.gz and
    RESULTS/<config>/eval/{RL,ES,ES+RL}/<S>-s<k>.jsonl.gz): each start, then outcome RL, expert-step RL and
    expert-step then outcome RL from it, their RL seeds pooled and each tested against its start over tasks x seeds
    (eval --compare's code). A run refused at outcome RL's 0% probe (RESULTS/<config>/refused/<row>-<S>-s<k>.txt) is
    its start evaluated again, and its cell says so."""
    lines = [
        "| expert-step | split | start (one run) | + outcome RL (3 RL seeds) | + expert-step RL (3) | "
        "+ expert-step, then outcome RL (3) |",
        "|---|---|---|---|---|---|",
    ]
    for config in sorted(p for p in results.iterdir() if (p / "eval").is_dir()):
        for start in sorted(f.name.removesuffix(".jsonl.gz") for f in (results / "starts").glob("*.jsonl.gz")):
            rows = {k: sorted((config / "eval" / k).glob(f"{start}-s*.jsonl.gz")) for k in ("RL", "ES", "ES+RL")}
            if not any(rows.values()):
                continue
            runs = [f"{start}={results / 'starts' / f'{start}.jsonl.gz'}"] + [
                f"{k}={','.join(map(str, files))}" for k, files in rows.items() if files
            ]
            env, loaded = read_runs(runs, cache=EPISODES)
            result = compare_runs(env, loaded, seed=0)
            for split, table_rows in result["splits"].items():
                first = table_rows[0]
                cells = []
                for k in ("RL", "ES", "ES+RL"):
                    row = next((r for r in table_rows[1:] if r["run"] == k), None)
                    if row is None:
                        cells.append("")
                        continue
                    vs = row["vs_first"]
                    refused = len(list((config / "refused").glob(f"{k}-{start}-s*.txt")))
                    cells.append(
                        f"{pct(row['success_rate'])}, score {row['mean_score']:.3f} "
                        f"({100 * vs['success_diff']:+.1f} pts, p = {vs['success_p']:.2g}; score "
                        f"{vs['score_diff']:+.3f}, {p_text(vs['bootstrap_p'], result['resamples'])})"
                        + (f"; {refused} of {len(rows[k])} refused at the probe" if refused else "")
                    )
                lines.append(
                    f"| {config.name} | {split} | {start}: {pct(first['success_rate'])}, score "
                    f"{first['mean_score']:.3f} | " + " | ".join(cells) + " |"
                )
    return "\n".join(lines) + "\n"


def primary_levels(matched: dict) -> tuple[list[tuple[str, str]], dict, list[float]]:
    """The planned primary tests (PRIMARY) present in the matched table's test rows: the pairs in PRIMARY's order,
    each pair's seed-level test, and the Holm-adjusted sign-flip p over those pairs."""
    found, reference = {}, None
    for row in matched.get("eval", {}).get("splits", {}).get("test", []):
        if not row.get("vs_first"):
            reference = row["run"]
        elif (row["run"], reference) in PRIMARY and row["vs_first"].get("seed_level"):
            found[row["run"], reference] = row["vs_first"]["seed_level"]
    pairs = [pair for pair in PRIMARY if pair in found]
    return pairs, found, holm([found[pair]["sign_flip_p"] for pair in pairs])


def primary_tests(matched: dict) -> str:
    """The planned primary tests (PRIMARY) from the matched table's test rows: each pair's seeds above its control,
    the sign-flip p over seeds and its Holm-adjusted p over the pairs present; empty with fewer than two pairs."""
    pairs, found, adjusted = primary_levels(matched)
    if len(pairs) < 2:
        return ""
    tests = "; ".join(
        f"{run} against {control}: {found[run, control]['above']}/{found[run, control]['seeds']} seeds above, "
        f"{100 * found[run, control]['mean_diff']:+.1f} pts, p = {found[run, control]['sign_flip_p']:.3g}, Holm "
        f"{adjusted[i]:.3g}"
        for i, (run, control) in enumerate(pairs)
    )
    return (
        f"\nThe planned primary tests (test; the exact sign-flip test over seeds, with Holm's correction over these "
        f"{len(pairs)}): {tests}.\n"
    )


def thinking_seeds(results: Path) -> str:
    """Each run evaluated thought first whose model, on some seeds, wrote no thought (after the prefilled `Thought:`
    it writes its action and ends the turn, as IL's examples taught it: more than WROTE_NO_THOUGHT of its thoughts
    cut), against its control and IL over the other seeds only, where its thought-first row measures thinking first.
    Not a planned test: the planned ones keep every seed. Empty where every seed wrote its thoughts."""
    lines = []
    for run, control in MATCHED:
        shares = {}
        for folder in seeds(results):
            path = folder / "eval" / f"{run}.jsonl.gz"
            if path.exists():
                summary = summarize(read_episodes(path), env="", policy=run)
                if "thoughts_cut_share" in summary:
                    shares[folder] = summary["thoughts_cut_share"]
        thinking = [folder for folder, share in shares.items() if share <= WROTE_NO_THOUGHT]
        if len(thinking) == len(shares) or len(thinking) < 2:
            continue
        tests = []
        for reference in (control, "IL"):
            result = pooled(results, ((run, reference),), folders=thinking).get("eval", {})
            for split, rows in result.get("splits", {}).items():
                level = next((r["vs_first"]["seed_level"] for r in rows if r["run"] == run and r.get("vs_first")), None)
                if level:
                    tests.append(
                        f"against {reference} on {split}, {level['above']}/{level['seeds']} seeds above, "
                        f"{100 * level['mean_diff']:+.1f} pts, sign-flip p = {level['sign_flip_p']:.3g}"
                        f"{power_text(level)}"
                    )
        left_out = ", ".join(folder.name.removeprefix("seed") for folder in shares if folder not in thinking)
        lines.append(
            f"\n{run} thought first over the {len(thinking)} of its {len(shares)} seeds whose model wrote its thoughts "
            f"(at most half of them cut; left out: seed {left_out}; not a planned test): {'; '.join(tests)}.\n"
        )
    return "".join(lines)


def report(results: Path, result: dict) -> str:
    """pooled.md: the pooled table (`result`, from pooled()), then the tables of the runs that have them (attempts,
    the critic)."""
    parts = [table(result)]
    matched = pooled(results, MATCHED)
    if matched:
        parts.append(
            "\nAgainst the compute-matched control (each method's row follows its control's: IL trained for "
            "the method's update count):\n\n" + table(matched, "the control") + primary_tests(matched)
        )
        parts.append(thinking_seeds(results))
    for title, text in (
        (
            "Thought first (`--act think`): steps with a thought and thoughts cut, pooled over seeds, and why the "
            "cut ones ended",
            thoughts_table(results),
        ),
        ("Within N attempts (pooled over seeds)", attempts_table(results)),
        ("Each seed: successes of episodes per run, and the machine that trained it", seed_table(results)),
        ("The critic on held-out states (mean over seeds, min - max)", critic_table(results)),
    ):
        if text:
            parts.append(f"\n{title}:\n\n{text}")
    return "".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", type=Path, help="the folder holding seed<s>/eval and seed<s>/recovery")
    ap.add_argument("--write", action="store_true", help="write pooled.md, pooled.json and pooled.png there")
    ap.add_argument(
        "--page",
        type=Path,
        help="with --write: the results page that shows pooled.md; its copy of the old pooled.md becomes the new one",
    )
    ap.add_argument("--costs", action="store_true", help="print what each seed's fine-tunes and evaluations did")
    args = ap.parse_args()
    if args.costs:
        print(costs_text(args.results), end="")
        return
    if args.page and not args.write:
        ap.error("--page goes with --write")
    # the page's copy of the table, checked before anything is written: a page that does not show the old table
    # (edited by hand since) is for its author to update
    shown = args.results / "pooled.md"
    if args.page and not args.page.is_file():
        raise SystemExit(f"{args.page}: no such file")
    page = args.page.read_text() if args.page else None
    old = shown.read_text() if shown.exists() else None
    if page is not None and (old is None or page.count(old) != 1):
        raise SystemExit(f"{args.page}: does not show {shown} once, as it is: update the page by hand")
    expert_step = (args.results / "starts").is_dir()  # the expert-step RL recipe's results: one table
    if expert_step:
        text = expert_step_table(args.results)
    else:
        result = pooled(args.results)
        text = report(args.results, result)
    print(text, end="")
    if not args.write:
        return
    if page is not None:
        write_atomic(str(args.page), page.replace(old, text).encode())
    shown.write_text(text)
    if not expert_step:
        (args.results / "pooled.json").write_text(json.dumps(named_from(result, args.results), indent=1) + "\n")
        merged = {
            **result["eval"],
            "splits": {
                **result["eval"]["splits"],
                **{"recovery": rows for rows in [result.get("recovery", {}).get("splits", {}).get("test")] if rows},
            },
        }
        plot_comparison(merged, str(args.results / "pooled.png"))
        matched = pooled(args.results, MATCHED)
        if matched:
            (args.results / "pooled-matched.json").write_text(
                json.dumps(named_from(matched, args.results), indent=1) + "\n"
            )
        validation_plot(args.results, args.results / "validation.png")


def validation_curves(results: Path) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """{run: {seed: [(update, validation loss)]}} from the training logs kept (seed<s>/train/<run>.metrics.jsonl),
    for the runs that logged one."""
    curves: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for folder in seeds(results):
        for log in sorted((folder / "train").glob("*.metrics.jsonl")):
            points = [
                (row["step"], row["val_loss"])
                for row in map(json.loads, log.read_text().splitlines())
                if "val_loss" in row
            ]
            if points:
                curves.setdefault(log.name.removesuffix(".metrics.jsonl"), {})[folder.name] = points
    return curves


def validation_plot(results: Path, path: Path) -> None:
    """One panel per run, a line per seed: the loss on held-out expert examples against updates, so a reader sees
    whether each budget stopped before, at or past the validation minimum. Nothing is drawn without such logs."""
    curves = validation_curves(results)
    if not curves:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = [r for r in RUNS if r in curves] + sorted(r for r in curves if r not in RUNS)
    cols = min(4, len(order))
    rows = -(-len(order) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), sharey=True, squeeze=False)
    for ax, run in zip(axes.flat, order):
        for seed, points in curves[run].items():
            ax.plot(*zip(*points), label=seed, linewidth=1)
        ax.set_title(run)
        ax.set_xlabel("update")
        ax.set_yscale("log")  # the first updates fall by 20x; the floor and any rise past it are what matter
    for ax in axes[:, 0]:
        ax.set_ylabel("validation loss")
    for ax in list(axes.flat)[len(order) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    main()
