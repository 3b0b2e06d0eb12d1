"""`world-model-eval --compare`: models' prediction records side by side, and every model tested against the first
over the transitions both predicted, as `eval --compare` compares episode files (eexp.stages.evaluate.compare),
with exact match in the place of success and token F1 in the place of score.

The inputs are read as eval's are (compare_inputs: FILE, or NAME=FILE[,FILE...], one file per seed of one method,
pooled into one row; labelled: a file without a name is named by its file name), and tested by the same functions:
with one file a model, paired_test (exact McNemar on exact match, seeded paired bootstrap on F1); with several files
for a name, seeded_test (the exact sign-flip test on the per-transition exact matches summed over seeds, the paired
bootstrap on the per-transition mean F1) and, where both names have the same number of files, two or more, its
test over seeds (seed_level: file i against file i, on exact match). Those functions read a run as its `label`,
`path` and `episodes` (id -> `success`, `score`): a file's `Predictions` gives them its scored predictions so
(`success` = exact, `score` = F1), and the tests' fields are renamed for the JSON (TEST_FIELDS).

A prediction whose request failed (its `scores` null, as the summary leaves it out) is counted, not scored. Per
environment a table; pairs are the predictions of the same id (the same transition of the same outcome record), and
two of one id must have the same target, or they were scored against other outcomes (or another --max-chars).
"""

from __future__ import annotations

from dataclasses import dataclass

from eexp.errors import InputError
from eexp.records import expect, type_name
from eexp.stages.evaluate.compare import (
    TOO_FEW_SEEDS,
    labelled,
    p_text,
    paired_test,
    read_inputs,
    seed_text,
    seeded_test,
    too_few_note,
)
from eexp.stages.world_model_eval import SCORER_VERSION, STAGE, pct, rate, scores_of
from eexp.stats import seed_spread

UNITS = "transitions"  # what the tests pair: one prediction of each model per transition
# The fields of eval --compare's tests (paired_test, seeded_test) as this comparison names them; others keep theirs
TEST_FIELDS = {
    "success_diff": "exact_diff",
    "success_test": "exact_test",
    "success_p": "exact_p",
    "success_verdict": "exact_verdict",
    "tasks_better": "transitions_better",
    "tasks_worse": "transitions_worse",
    "score_diff": "f1_diff",
    "score_ci_low": "f1_ci_low",
    "score_ci_high": "f1_ci_high",
    "bootstrap_p": "f1_bootstrap_p",
    "score_verdict": "f1_verdict",
}


@dataclass
class Predictions:
    """The predictions of one file for one environment."""

    label: str
    path: str
    env: str
    model: str
    records: list[dict]  # every prediction, failed ones too, in file order
    episodes: dict[str, dict]  # id -> {"success": exact, "score": F1}: the scored ones, as compare.py reads a run


def read_predictions(inputs: list[str], on_error: str = "fail") -> list[Predictions]:
    """The prediction files of `world-model-eval --compare` (INPUTs as compare_inputs reads them), one Predictions
    per file and environment; a record that is not a prediction, or whose scores are not exact and f1, is FILE:LINE,
    fatal or skipped as `on_error` says."""
    check = expect("prediction")
    return load_predictions(
        read_inputs(
            inputs, lambda record: check(record) or scores_problem(record.get("scores")), "predictions", on_error
        )
    )


def scores_problem(scores) -> str | None:
    """What is wrong with a record's `scores` (None: a failed request's null, or a prediction's exact and f1)."""
    if scores is None:
        return None
    if not isinstance(scores, dict):
        return f"scores: expected an object or null, got {type_name(scores)}"
    if not isinstance(scores.get("exact"), bool):
        return f"scores.exact: expected a boolean, got {type_name(scores.get('exact'))}"
    f1 = scores.get("f1")
    if isinstance(f1, bool) or not isinstance(f1, (int, float)) or not 0 <= f1 <= 1:
        return f"scores.f1: expected a number from 0 to 1, got {f1 if isinstance(f1, (int, float)) else type_name(f1)}"
    return None


def load_predictions(files: list[tuple]) -> list[Predictions]:
    """Predictions per file and environment from files given as (path, [(record, line)], label or None), labelled
    as eval --compare labels runs (eexp.stages.evaluate.compare.labelled). Refused, FILE:LINE: an id twice in one
    file, predictions scored by another scorer version than the first file's, and an id whose target differs from
    the same id's in an earlier file."""
    out: list[Predictions] = []
    scorer, scorer_from = None, None
    targets: dict[str, tuple[str, str]] = {}  # id -> (target, the file it was first seen in)
    for f, label in labelled(files):
        path, records = f[0], f[1]
        by_env: dict[str, Predictions] = {}
        seen: set[str] = set()
        for record, line in records:
            meta = record.get("meta") or {}
            version = meta.get("scorer", SCORER_VERSION)
            if scorer is None:
                scorer, scorer_from = version, path
            elif version != scorer:
                raise InputError(
                    f"a prediction scored by scorer version {version}, but {scorer_from} holds "
                    f"predictions scored by version {scorer}: score both with one eexp "
                    f"(world-model-eval again) to compare them",
                    path,
                    line,
                )
            pid = record["id"]
            if pid in seen:
                raise InputError(
                    f"prediction {pid!r} appears twice: one file holds one run's predictions (put "
                    f"runs of other seeds in separate files: NAME=A.jsonl,B.jsonl)",
                    path,
                    line,
                )
            seen.add(pid)
            target, target_from = targets.setdefault(pid, (record["target"], path))
            if record["target"] != target:
                raise InputError(
                    f"prediction {pid!r} has another target than in {target_from}: the two were "
                    f"scored against other outcome records or another --max-chars (compare "
                    f"predictions of the same outcomes)",
                    path,
                    line,
                )
            env = record["env"]["name"]
            run = by_env.get(env)
            if run is None:
                run = by_env[env] = Predictions(label, path, env, meta.get("model", ""), [], {})
            elif meta.get("model", "") not in run.model.split(" + "):
                run.model += f" + {meta.get('model', '')}"
            run.records.append(record)
            if record["scores"] is not None:
                run.episodes[pid] = {"success": record["scores"]["exact"], "score": record["scores"]["f1"]}
        for run in by_env.values():
            if not run.episodes:
                raise InputError(f"every {run.env} prediction failed (its request): nothing to compare", path)
        out.extend(by_env.values())
    return out


def compare_predictions(runs: list[Predictions], *, seed: int = 0, alpha: float = 0.05, resamples: int = 10000) -> dict:
    """Per environment: every model (a label, pooling its files) with its counts and intervals, and every model after
    the first tested against the first over the transitions every file of both predicted (the module says how).
    Two models that share no scored prediction id are refused; ids only one side has are left out and counted."""
    files_of: dict[str, list[str]] = {}  # label -> its files in the order given: a file's position is its seed
    envs: dict[str, dict[str, list[Predictions]]] = {}
    for run in runs:
        if run.path not in files_of.setdefault(run.label, []):
            files_of[run.label].append(run.path)
        envs.setdefault(run.env, {}).setdefault(run.label, []).append(run)
    seeded = any(len(paths) > 1 for paths in files_of.values())
    labels = list(files_of)
    for label in labels[1:]:  # a model compared with the first in no environment: they predicted other outcomes
        if not any(labels[0] in methods and label in methods for methods in envs.values()):
            raise InputError(no_shared_ids(labels[0], label, files_of))
    out: dict[str, list[dict]] = {}
    for env, methods in envs.items():
        rows = []
        first: list[Predictions] | None = None
        for label, group in methods.items():
            row = model_row(label, group, seed=seed, resamples=resamples)
            if first is None:
                first = group
            else:
                common = [i for i in first[0].episodes if all(i in r.episodes for r in first + group)]
                if not common:
                    raise InputError(no_shared_ids(first[0].label, label, files_of, env))
                if seeded:
                    test = seeded_test(first, group, seed=seed, alpha=alpha, resamples=resamples, files_of=files_of)
                else:
                    test = paired_test(first[0], group[0], seed=seed, alpha=alpha, resamples=resamples)
                row["vs_first"] = {TEST_FIELDS.get(k, k): v for k, v in test.items()}
                row["vs_first"]["left_out"] = {
                    "first": len(set().union(*(r.episodes for r in first)).difference(common)),
                    "this": len(set().union(*(r.episodes for r in group)).difference(common)),
                }
            rows.append(row)
        out[env] = rows
    return {
        "stage": STAGE,
        "compare": True,
        "scorer": SCORER_VERSION,
        "alpha": alpha,
        "resamples": resamples,
        "seed": seed,
        "seeded": seeded,
        "units": UNITS,
        "envs": out,
    }


def no_shared_ids(first: str, label: str, files_of: dict[str, list[str]], env: str | None = None) -> str:
    every = " in every file of each" if len(files_of[first]) > 1 or len(files_of[label]) > 1 else ""
    where = f" {env}" if env else ""
    return (
        f"{label} and {first} share no{where} prediction id{every}: they predicted other outcome records "
        f"(give every model the same outcomes)"
    )


def model_row(label: str, group: list[Predictions], *, seed: int, resamples: int) -> dict:
    """One model's row: its predictions, failed requests, and over the scored ones the exact-match rate (95% Wilson),
    the mean F1 (seeded bootstrap) and the share in the `Observation:` format, pooled over its files; with several
    files, each file's and their spread."""
    records = [r for run in group for r in run.records]
    models = list(dict.fromkeys(run.model for run in group))
    row = {
        "run": label,
        "files": [run.path for run in group],
        "model": models[0] if len(models) == 1 else f"{len(models)} models",
        "seeds": len(group),
        **counts(records, seed=seed, resamples=resamples),
    }
    if len(group) > 1:
        row["per_seed"] = [
            {"file": run.path, "model": run.model, **counts(run.records, seed=seed, resamples=resamples)}
            for run in group
        ]
        for name, values in (
            ("seed_exact", [p["exact_match"]["rate"] for p in row["per_seed"]]),
            ("seed_f1", [p["f1"]["mean"] for p in row["per_seed"]]),
        ):
            s = seed_spread(values)
            row[name] = {"mean": s.mean, "sd": s.sd, "min": s.low, "max": s.high}
    return row


def counts(records: list[dict], *, seed: int, resamples: int) -> dict:
    scored = [r for r in records if r["scores"] is not None]
    return {
        "predictions": len(records),
        "failed": len(records) - len(scored),
        **scores_of(scored, seed, resamples),
        "labelled": rate(sum(r["labelled"] for r in scored), len(scored)),
    }


# --- the table --------------------------------------------------------------------------------------------------


def format_predictions_comparison(result: dict) -> str:
    """The table world-model-eval --compare prints: per environment a row per model, as eval --compare prints runs
    (eexp.stages.evaluate.compare.format_comparison and format_seeded)."""
    out = []
    resamples, alpha = result["resamples"], result["alpha"]
    for env, rows in result["envs"].items():
        by_seed = [(r.get("vs_first") or {}).get("seed_level") for r in rows]
        seed_cells = (
            [
                seed_text(s, resamples) if s else "(reference)" if not r.get("vs_first") else "-"
                for r, s in zip(rows, by_seed)
            ]
            if any(by_seed)
            else None
        )
        if not result["seeded"]:
            out.append(
                f"{env}: exact match with 95% Wilson intervals, mean token F1 with 95% bootstrap intervals; "
                f"each model against the first over the {UNITS} both predicted (exact McNemar on exact match, "
                f"paired bootstrap on F1, alpha {alpha})"
            )
        else:
            out.append(
                f"{env}: exact match and mean token F1 pooled over seeds, with the seeds' range (a single run: "
                f"its 95% Wilson and bootstrap intervals); each model against the first "
                + (
                    f"over seeds, file i against file i (exact match: per-seed differences, hierarchical "
                    f"bootstrap over seeds then {UNITS}, exact sign-flip test over seeds), then "
                    if seed_cells
                    else ""
                )
                + f"over {UNITS} x seeds (exact sign-flip test on per-transition exact matches summed over "
                f"seeds, paired bootstrap over {UNITS} on F1), alpha {alpha}"
            )
        w_run = max(len("run"), *(len(r["run"]) for r in rows))
        w_model = max(len("model"), *(len(r["model"]) for r in rows))
        ci = "seeds min-max / 95% CI" if result["seeded"] else "95% CI"
        w_ci = max(len(ci), 16)
        seeds_col = f"{'seeds':>5}  " if result["seeded"] else ""
        head = "vs first over seeds"
        w_seed = max(len(head), *(len(c) for c in seed_cells)) if seed_cells else 0
        out.append(
            f"  {'run':<{w_run}}  {'model':<{w_model}}  {seeds_col}{'n':>5}  {'failed':>6}  {'exact':>6}  "
            f"{ci:<{w_ci}}  {'F1':>5}  {ci:<{w_ci}}  {'labelled':>8}  "
            + (f"{head:<{w_seed}}  vs first over {UNITS} x seeds" if seed_cells else "vs first")
        )
        notes = []
        for i, r in enumerate(rows):
            e, f = r["exact_match"], r["f1"]
            if r["seeds"] > 1:
                e_ci = f"{pct(r['seed_exact']['min'])} - {pct(r['seed_exact']['max'])}"
                f_ci = f"{r['seed_f1']['min']:.3f} - {r['seed_f1']['max']:.3f}"
            else:
                e_ci = f"[{pct(e['ci_low'])}, {pct(e['ci_high'])}]"
                f_ci = f"[{f['ci_low']:.3f}, {f['ci_high']:.3f}]"
            vs = "(reference)" if not seed_cells else ""
            t = r.get("vs_first")
            if t:
                vs = vs_text(t, resamples)
                left = t["left_out"]
                if left["first"] or left["this"]:
                    notes.append(
                        f"  {r['run']}: {left['first']} of {t['first']}'s scored predictions and "
                        f"{left['this']} of its own have no counterpart in every file of both; left out of "
                        f"its tests ({t['paired_n']} paired)"
                    )
            if seed_cells:
                vs = f"{seed_cells[i]:<{w_seed}}  {vs}"
            seeds = f"{r['seeds']:>5}  " if result["seeded"] else ""
            out.append(
                f"  {r['run']:<{w_run}}  {r['model']:<{w_model}}  {seeds}{f['n']:>5}  {r['failed']:>6}  "
                f"{pct(e['rate']):>6}  {e_ci:<{w_ci}}  {f['mean']:5.3f}  {f_ci:<{w_ci}}  "
                f"{pct(r['labelled']['rate']):>8}  {vs}".rstrip()
            )
        out += notes
        few = [s["seeds"] for s in by_seed if s and not s["enough_seeds"]]
        if few:
            out.append(f"  {TOO_FEW_SEEDS}: {too_few_note(alpha, few, units=UNITS)}")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def vs_text(t: dict, resamples: int) -> str:
    """One model against the first, over transitions (x seeds): exact match and F1, each with its test and verdict."""
    f1 = (
        f"F1 {t['f1_diff']:+.3f} [{t['f1_ci_low']:+.3f}, {t['f1_ci_high']:+.3f}] (bootstrap "
        f"{p_text(t['f1_bootstrap_p'], resamples)}, {t['f1_verdict']})"
    )
    if "exact_test" not in t:  # single runs: McNemar
        return (
            f"{t['paired_n']} paired: exact {100 * t['exact_diff']:+.1f} pts (McNemar p={t['mcnemar_p']:.3g}, "
            f"{t['exact_verdict']}); {f1}"
        )
    return (
        f"{t['paired_n']} {UNITS} x {t['seeds_first']}|{t['seeds_this']} seeds: exact "
        f"{100 * t['exact_diff']:+.1f} pts ({t['transitions_better']} better, {t['transitions_worse']} worse; "
        f"sign-flip p={t['exact_p']:.3g}, {t['exact_verdict']}); {f1}"
    )
