"""The real-model results the README shows are recomputed from the committed episode files, so the table cannot
drift from its data: recipes/pooled.py pools docs/results/smollm2/seed*/ with eval --compare's code, and its table
must appear verbatim in the results page and in the README."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent
RESULTS = ROOT / "docs" / "results" / "smollm2"
sys.path.insert(0, str(ROOT / "recipes"))

import pooled  # noqa: E402


def test_the_smollm2_table_is_recomputed_from_the_committed_episodes():
    seeds = pooled.seeds(RESULTS)
    assert seeds, f"{RESULTS} holds no seed<s> folder"
    table = pooled.table(pooled.pooled(RESULTS))
    assert (RESULTS / "pooled.md").read_text() == table, "docs/results/smollm2/pooled.md is stale: make pooled"
    for page in (ROOT / "docs" / "results" / "smollm2.md", ROOT / "README.md"):
        assert table in page.read_text(), f"{page.name} does not show the pooled table as recomputed"


def test_every_committed_seed_has_the_main_runs_and_their_training_logs():
    # IL and IWM in every seed: every other run is tested against IL over the seeds it shares with it
    for seed in pooled.seeds(RESULTS):
        for run in ("IL", "IWM"):
            assert (seed / "eval" / f"{run}.jsonl.gz").exists(), f"{seed.name}: eval/{run}.jsonl.gz"
            assert (seed / "recovery" / f"{run}.jsonl.gz").exists(), f"{seed.name}: recovery/{run}.jsonl.gz"
            assert (seed / "train" / f"{run}.metrics.jsonl").exists(), f"{seed.name}: train/{run}.metrics.jsonl"
        for episodes in seed.glob("*/*.jsonl.gz"):     # every run kept has its training log
            run = episodes.name.removesuffix(".jsonl.gz").split("~")[0]
            assert run == "random" or (seed / "train" / f"{run}.metrics.jsonl").exists(), f"{seed.name}: {run}"
