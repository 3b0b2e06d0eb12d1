"""The shared language prior: `eexp corpus` (pages of random walks, evaluated tasks held out) and
`init-model --pretrain` (a language model pretrained on them)."""

from __future__ import annotations

import orjson
import pytest
import yaml
from by_hand import untimed
from click.testing import CliRunner

from eexp.cli import cli
from eexp.envs.base import make_env
from eexp.stages.corpus import walk_tasks


def _pages(path) -> list[dict]:
    return [orjson.loads(line) for line in path.read_text().splitlines()]


def test_corpus_pages_are_distinct_observations_of_every_split_without_goals_or_actions(tmp_path):
    out = tmp_path / "pages.jsonl"
    result = CliRunner().invoke(
        cli, ["corpus", "--env", "shop", "--walks", "40", "--holdout", "50", "-q", "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    pages = _pages(out)
    assert result.stderr.strip() == f"eexp: {len(pages)} distinct pages from 160 walks over train, test, ood, combo"
    texts = [p["observation"] for p in pages]
    assert len(set(texts)) == len(texts) > 160
    assert {p["meta"]["split"] for p in pages} == {"train", "test", "ood", "combo"}
    assert any("jacket" in t or "water bottle" in t for t in texts)  # the ood categories' words are in it
    # nothing but pages: no goal (no instruction wording anywhere) and no action
    assert all(set(p) == {"id", "env", "observation", "meta"} for p in pages)
    assert not any("dollars" in t or "click[" in t for t in texts)


def test_corpus_never_walks_the_tasks_eval_plays_and_is_the_same_for_a_seed(tmp_path):
    env = make_env("shop")
    tasks = list(walk_tasks(env, ["train", "test", "ood"], walks=300, holdout=200, seed=3))
    held = {f"{split}-{i:05d}" for split in ("test", "ood") for i in range(200)}
    assert len(tasks) == 900 and not held & {t["id"] for t in tasks}
    assert any(t["id"] < "train-00200" for t in tasks)  # train is never held out: it is the training data anyway
    assert [t["id"] for t in walk_tasks(env, ["ood"], 20, 200, 3)] == [t["id"] for t in tasks[600:620]]

    runs = []
    for name in ("a", "b"):
        path = tmp_path / f"{name}.jsonl"
        assert (
            CliRunner()
            .invoke(cli, ["corpus", "--env", "shop", "--walks", "15", "--seed", "3", "-q", "-o", str(path)])
            .exit_code
            == 0
        )
        runs.append(untimed(_pages(path)))
    assert runs[0] == runs[1]


def test_corpus_refuses_a_holdout_that_leaves_a_split_empty():
    result = CliRunner().invoke(cli, ["corpus", "--env", "shop", "--split", "ood", "--holdout", "1000", "-q"])
    assert result.exit_code == 1
    assert result.stderr.strip() == "Error: shop split 'ood' has no tasks after the first 1000 (--holdout)"
    # said before the first split is walked: train's pages were written first, then the run failed
    args = ["corpus", "--env", "shop", "--walks", "2", "--holdout", "100000000", "-q"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.strip() == "Error: shop split 'test' has no tasks after the first 100000000 (--holdout)"


@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "pages.jsonl"
    assert CliRunner().invoke(cli, ["corpus", "--env", "shop", "--walks", "60", "-q", "-o", str(path)]).exit_code == 0
    return path


def test_pretraining_lowers_the_held_out_loss_and_is_recorded(tmp_path, pages):
    out = tmp_path / "prior"
    result = CliRunner().invoke(
        cli,
        [
            "init-model",
            str(out),
            "--pretrain",
            str(pages),
            "--pretrain-steps",
            "40",
            "--pretrain-block",
            "64",
            "--pretrain-batch",
            "8",
            "-q",
        ],
    )
    assert result.exit_code == 0, result.output
    record = yaml.safe_load((out / "config.yaml").read_text())["pretrain"]
    assert record["corpus"] == [str(pages)] and record["steps"] == 40 and record["block"] == 64
    assert record["held_out_pages"] == -(-len(_pages(pages)) // 10)  # every tenth page
    # a random model is near uniform over the vocabulary (ln 1024 ~ 6.9); 40 updates already learn the pages
    assert record["held_out_loss_before"] > 6.0 and record["held_out_loss"] < record["held_out_loss_before"] - 2
    assert f"held-out loss {record['held_out_loss_before']} -> {record['held_out_loss']}" in result.stderr

    # the ood words are in the tokenizer's merges: a prior knows them before any fine-tune
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)
    assert len(tok.tokenize(" jacket")) <= 2


def test_pretraining_is_deterministic_for_a_seed(tmp_path, pages):
    from safetensors.numpy import load_file

    weights = []
    for name in ("a", "b"):
        out = tmp_path / name
        assert (
            CliRunner()
            .invoke(
                cli,
                [
                    "init-model",
                    str(out),
                    "--pretrain",
                    str(pages),
                    "--pretrain-steps",
                    "5",
                    "--pretrain-block",
                    "32",
                    "--pretrain-batch",
                    "2",
                    "-q",
                ],
            )
            .exit_code
            == 0
        )
        weights.append(load_file(out / "model.safetensors"))
    assert weights[0].keys() == weights[1].keys()
    assert all((weights[0][k] == weights[1][k]).all() for k in weights[0])


def test_pretraining_on_no_text_is_a_clear_error(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    result = CliRunner().invoke(cli, ["init-model", str(tmp_path / "m"), "--pretrain", str(empty), "-q"])
    assert result.exit_code == 1
    assert result.stderr.strip() == "Error: --pretrain: pretraining needs text"
    records = tmp_path / "empty.jsonl"  # read as every stage reads records
    records.write_text("")
    result = CliRunner().invoke(cli, ["init-model", str(tmp_path / "m"), "--pretrain", str(records), "-q"])
    assert result.exit_code == 1
    assert result.stderr.strip() == f"Error: {records}: empty file (no records)"
    assert not (tmp_path / "m").exists()
