"""The results the README shows are recomputed from the committed episode files, so no table can drift from its
data: recipes/pooled.py pools docs/results/<recipe>/seed*/ with eval --compare's code, and its report must appear
verbatim in the recipe's results page, and the README must link to that page."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
sys.path.insert(0, str(ROOT / "recipes"))

import pooled  # noqa: E402

# each folder of docs/results/ that keeps a recipe's seeds (shown by docs/results/<its first part>.md, or PAGE's), with
# the trained runs every seed must hold: every other run is tested against IL over the seeds it shares with it. The
# demo keeps every run of its seeds with the compute-matched controls (issue 50) and, under full-data/, the full-data
# SR re-run (issue 40: IL and SR on the same seeds); SmolLM2 keeps the seeds of the recipe issue 40 fixed and, under
# before/, the seeds measured before the fix; alfworld-tiny the seeds of ALFWorld's 10-seed comparison (issue 63) as
# they finish.
KEPT = {
    "smollm2": ("IL", "IWM", "SR"),
    "smollm2/before": ("IL", "IWM"),
    "signals": ("IL", "IWM"),
    "demo": ("IL", "IWM", "SR", "ActObs", "IL@SR", "IL@IWM", "IWM@IL"),
    "demo/full-data": ("IL", "SR"),
    "alfworld-tiny": ("IL", "IWM", "SR", "IWM@IL", "IL@SR", "IL@IWM"),
}
# the page a folder's report is shown on, where it is not the folder's first part
PAGE = {"alfworld-tiny": "alfworld"}


@pytest.mark.parametrize("name", KEPT)
def test_the_table_is_recomputed_from_the_committed_episodes(name):
    results = ROOT / "docs" / "results" / name
    page = PAGE.get(name.split("/")[0], name.split("/")[0])
    assert pooled.seeds(results), f"{results} holds no seed<s> folder"
    result = pooled.pooled(results)
    report = pooled.report(results, result)
    assert (results / "pooled.md").read_text() == report, f"docs/results/{name}/pooled.md is stale: make pooled"
    assert report in (ROOT / "docs" / "results" / f"{page}.md").read_text(), f"{page}.md does not show {name}'s report"
    assert f"(docs/results/{page}.md)" in (ROOT / "README.md").read_text(), f"the README has no row for {page}"


@pytest.mark.parametrize("name", KEPT)
def test_every_committed_seed_has_the_main_runs_and_their_training_logs(name):
    for seed in pooled.seeds(ROOT / "docs" / "results" / name):
        kinds = [k for k in pooled.KINDS if (seed / k).is_dir()]
        assert "eval" in kinds, f"{seed}: no eval folder"
        for run in KEPT[name]:
            for kind in kinds:
                assert (seed / kind / f"{run}.jsonl.gz").exists(), f"{seed.name}: {kind}/{run}.jsonl.gz"
            assert (seed / "train" / f"{run}.metrics.jsonl").exists(), f"{seed.name}: train/{run}.metrics.jsonl"
        # every run kept has its training log: a run evaluated another way (IL+critic, SR~constrained) its model's,
        # and a reranked run its critic's too
        for episodes in seed.glob("*/*.jsonl.gz"):
            run = episodes.name.removesuffix(".jsonl.gz")
            model = run.split("~")[0].split("+")[0]
            assert model == "random" or (seed / "train" / f"{model}.metrics.jsonl").exists(), f"{seed.name}: {run}"
            if run.endswith("+critic"):
                assert (seed / "train" / "critic.metrics.jsonl").exists(), f"{seed.name}: {run}'s critic"


def test_pooled_with_a_page_replaces_the_pages_copy_of_the_table(tmp_path, monkeypatch, capsys):
    """`pooled.py RESULTS --write --page PAGE` (`make pooled` with RESULTS_PAGE), as each finished seed is kept: the
    page's copy of the old table becomes the new one and the rest of the page stays as it was; a page that does not
    show the old table as it is (edited since) is refused before anything is written."""
    import shutil

    results = tmp_path / "alfworld-tiny"
    shutil.copytree(ROOT / "docs" / "results" / "alfworld-tiny" / "seed0", results / "seed0")
    (results / "pooled.md").write_text("| an older table |\n")
    page = tmp_path / "page.md"
    page.write_text("# a page\n\n| an older table |\n\nwhat it shows\n")
    monkeypatch.setattr(sys, "argv", ["pooled.py", str(results), "--write", "--page", str(page)])
    pooled.main()
    table = (results / "pooled.md").read_text()
    assert table == pooled.report(results, pooled.pooled(results))
    assert page.read_text() == f"# a page\n\n{table}\nwhat it shows\n"
    # pooled.json names its episode files relative to the results folder, not to where pooled.py ran
    assert set(files_named(json.loads((results / "pooled.json").read_text()))) == {
        f"seed0/eval/{run}.jsonl.gz" for run in (*KEPT["alfworld-tiny"], "SR~score", "random")
    }

    page.write_text("# a page\n\n| edited since |\n")
    with pytest.raises(SystemExit) as stop:
        pooled.main()
    assert str(stop.value) == f"{page}: does not show {results / 'pooled.md'} once, as it is: update the page by hand"
    assert (results / "pooled.md").read_text() == table and page.read_text() == "# a page\n\n| edited since |\n"


def files_named(result) -> list[str]:
    """Every "file" a pooled.json (or compare.json) names, at any depth."""
    if isinstance(result, list):
        return [name for item in result for name in files_named(item)]
    if isinstance(result, dict):
        return [name for key, value in result.items() for name in ([value] if key == "file" else files_named(value))]
    return []


@pytest.mark.parametrize("name", KEPT)
def test_a_pooled_json_names_files_that_are_kept_beside_it(name):
    folder = ROOT / "docs" / "results" / name
    for kept in [folder / "pooled.json", folder / "pooled-matched.json"]:
        if kept.exists():
            named = files_named(json.loads(kept.read_text()))
            assert named and all((folder / file).is_file() for file in named), kept


def test_the_expert_step_table_is_recomputed_from_the_committed_episodes():
    results = ROOT / "docs" / "results" / "expert-step"
    table = pooled.expert_step_table(results)
    assert (results / "pooled.md").read_text() == table, "docs/results/expert-step/pooled.md is stale"
    assert table in (ROOT / "docs" / "results" / "signals.md").read_text(), (
        "signals.md does not show the expert-step table as recomputed"
    )


def test_the_readme_stays_a_product_page():
    # the measured results live on their pages, one row each in the README's table (issue 39: ~220 lines at most)
    lines = (ROOT / "README.md").read_text().count("\n")
    assert lines <= 220, f"README.md has {lines} lines: move detail to docs/ and keep one row per experiment"


def test_the_next_state_rl_table_is_recomputed_from_the_committed_episodes():
    """docs/results/world-model.md's next-state RL table: every run's test success from its committed episodes, and
    the start's world-model F1 from its committed summary."""
    import gzip
    import json

    results = ROOT / "docs" / "results" / "world-model" / "next-state"
    page = (ROOT / "docs" / "results" / "world-model.md").read_text()

    def success(path: Path) -> float:
        episodes = [json.loads(line) for line in gzip.open(path, "rt")]
        assert len(episodes) == 200
        return 100 * sum(bool(e["success"]) for e in episodes) / len(episodes)

    for seed in (0, 1):
        folder = results / f"seed{seed}"
        f1 = json.loads((folder / "IWM.wm.json").read_text())["envs"]["shop"]["f1"]["mean"]
        cells = [f"{success(folder / 'IWM.eval.jsonl.gz'):.1f}%, {f1:.3f}"]
        for kind in ("RL", "NS", "NS_RL"):
            cells.append(" / ".join(f"{success(folder / f'{kind}-s{r}.eval.jsonl.gz'):.1f}" for r in (0, 1, 2)) + "%")
        assert f"| {seed} | " + " | ".join(cells) + " |" in page, (seed, cells)


@pytest.mark.parametrize("name", ["alfworld-smollm2", "alfworld-tiny/calibration"])
def test_an_alfworld_calibration_summary_is_recomputed_from_its_episodes(name, monkeypatch):
    """compare.json, which alfworld.md quotes, is `eval --compare` of the committed episodes, named relative to its
    folder: recomputed, it is the same JSON."""
    from eexp.stages.evaluate.compare import compare_runs, read_runs

    folder = ROOT / "docs" / "results" / name
    kept = json.loads((folder / "compare.json").read_text())
    runs = {row["run"]: row["file"] for rows in kept["splits"].values() for row in rows}
    monkeypatch.chdir(folder)
    env, loaded = read_runs([f"{run}={file}" for run, file in runs.items()])
    assert json.loads(json.dumps(compare_runs(env, loaded, seed=kept["seed"]))) == kept


def test_alfworld_cost_table_quotes_each_seeds_committed_cards_logs_and_episodes():
    """alfworld.md's table of what a seed costs gives, for every published seed, the update counts, tokens and
    CPU-minutes of its six fine-tunes and the steps of its evaluations: `pooled.py --costs` (seed_costs) recomputes
    them from the seed's committed files, row by row."""
    results = ROOT / "docs" / "results" / "alfworld-tiny"
    page = (ROOT / "docs" / "results" / "alfworld.md").read_text()
    table = page[page.index("**What a seed costs, measured") :]
    table = table[table.index("| seed | machine |") :]
    table = table[: table.index("\n\n")]
    header, *rows = [
        [cell.strip() for cell in line.split("|")[1:-1]] for line in table.splitlines() if line.startswith("| ")
    ]
    finetunes = next(k for k, cell in enumerate(header) if cell.startswith("the six fine-tunes"))
    evaluations = next(k for k, cell in enumerate(header) if cell.startswith("the 8 evaluations"))
    folders = pooled.seeds(results)
    assert [row[0] for row in rows] == [folder.name.removeprefix("seed") for folder in folders], "a row a seed"
    for folder, row in zip(folders, rows):
        trained, evaluated = row[finetunes], row[evaluations]
        c = pooled.seed_costs(folder)
        u = c["updates"]
        assert u["SR"] == u["IL@SR"] and u["IWM"] == u["IL@IWM"] and u["IL"] == u["IWM@IL"]
        assert trained.startswith(
            f"IL {u['IL']:,} updates, IWM {u['IWM']:,}, IWM@IL {u['IWM@IL']:,}, IL@IWM {u['IL@IWM']:,}, SR and IL@SR "
            f"{u['SR']:,} each: {c['tokens'] / 1e6:,.0f} million tokens, about {c['cpu_minutes']:,.0f} CPU-minutes"
        ), folder.name
        assert f"{c['eval_steps']:,} steps" in evaluated, folder.name


def test_alfworlds_claim_quotes_the_planned_primary_tests():
    """What alfworld.md says in words of the plan's three primary tests (each method against IL trained for its
    updates, on valid_seen, Holm over the three), in its summary, in its claim and in the results index, is what the
    committed episodes give: each test's seeds above, mean difference, sign-flip p and Holm's p, and, for a test that
    finds no difference, the smallest difference its seeds could tell."""
    results = ROOT / "docs" / "results" / "alfworld-tiny"
    pairs, found, holm = pooled.primary_levels(pooled.pooled(results, pooled.MATCHED))
    assert pairs == list(pooled.PRIMARY)
    adjusted = dict(zip(pairs, holm))
    page = (ROOT / "docs" / "results" / "alfworld.md").read_text()
    summary = page[: page.index("\n| |")]
    claim = page[page.index("**The plan's claim, at") : page.index("What the claim covers")]
    index = next(
        line
        for line in (ROOT / "docs" / "results" / "README.md").read_text().splitlines()
        if "made from scratch" in line and "(alfworld.md)" in line
    )
    for pair in pooled.PRIMARY:
        level = found[pair]
        quoted = (
            f"{level['above']} of {level['seeds']} seeds above, {100 * level['mean_diff']:+.1f} points, "
            f"p = {level['sign_flip_p']:#.2g}, Holm {adjusted[pair]:#.2g}"
        )
        for name, text in (("summary", summary), ("claim", claim), ("index", index)):
            text = " ".join(text.split())
            assert quoted in text, f"{name}: {pair}: {quoted}"
            if level["verdict"] == "no significant difference":
                assert f"under {100 * level['detectable_diff']:.1f} points" in text, f"{name}: {pair}"
