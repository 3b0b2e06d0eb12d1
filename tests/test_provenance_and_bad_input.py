"""Records say the settings that shaped them, and bad input is named for what it is: world-model-data's --max-chars
and --summarizer in meta.extra (so --resume with others is refused), corpus's --env-arg values in meta, a damaged
outcome named by its missing field (not called a branch record), and a JSON document given for JSON Lines."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import orjson
import pytest
from by_hand import untimed

from eexp.cli import cli
from eexp.envs.base import Env
from eexp.stages.corpus import corpus_pages

OUTCOMES = Path(__file__).parent / "data" / "outcomes.jsonl"


def _records(text: str) -> list[dict]:
    return [orjson.loads(line) for line in text.splitlines()]


def _outcomes() -> list[dict]:
    return _records(OUTCOMES.read_text())


def _write(path: Path, records: list[dict]) -> str:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    return str(path)


# --- world-model-data: the settings that change the target are in meta.extra ------------------------------------


def test_max_chars_and_summarizer_are_in_the_examples_meta_and_the_default_run_is_unchanged(
    runner, tmp_path, monkeypatch
):
    (tmp_path / "summaries.py").write_text("def short(obs, state, action):\n    return obs[:5]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "summaries", raising=False)  # another test's summaries.py, imported before
    default = _records(runner.invoke(cli, ["world-model-data", str(OUTCOMES)]).stdout)
    assert default and {e["meta"]["extra"] for e in default} == {""}
    clipped = _records(runner.invoke(cli, ["world-model-data", str(OUTCOMES), "--max-chars", "20"]).stdout)
    assert {e["meta"]["extra"] for e in clipped} == {'{"max_chars":20}'}
    summarized = runner.invoke(
        cli, ["world-model-data", str(OUTCOMES), "--summarizer", "summaries:short", "--max-chars", "9"]
    )
    assert summarized.exit_code == 0, summarized.output
    assert {e["meta"]["extra"] for e in _records(summarized.stdout)} == {
        '{"max_chars":9,"summarizer":"summaries:short"}'
    }
    # `--summarizer MODULE` is MODULE:summarize: one function, one name in the records
    (tmp_path / "summ2.py").write_text("def summarize(obs, state, action):\n    return obs[:3]\n")
    bare = runner.invoke(cli, ["world-model-data", str(OUTCOMES), "--summarizer", "summ2"])
    assert {e["meta"]["extra"] for e in _records(bare.stdout)} == {'{"summarizer":"summ2:summarize"}'}
    # the ids are unchanged: they join examples to their outcomes and to world-model-eval's predictions
    assert [e["id"] for e in clipped] == [e["id"] for e in default]


def test_world_model_data_resumed_with_another_max_chars_is_refused_and_the_file_kept(runner, tmp_path):
    first, second = _outcomes()
    third = {**copy.deepcopy(second), "id": "shop:train-00001#2"}
    outcomes = _write(tmp_path / "outcomes.jsonl", [first, second, third])
    run = lambda *more: runner.invoke(cli, ["world-model-data", outcomes, "-q", "-o", str(out), *more])  # noqa: E731
    out = tmp_path / "iwm.jsonl"
    assert run("--max-chars", "20").exit_code == 0
    whole = out.read_bytes()
    # stopped in the second outcome: its records are redone on resume, the first one's 3 kept and compared with
    kept = b"".join(whole.splitlines(keepends=True)[:4])
    out.write_bytes(kept)
    result = run("--max-chars", "40", "--resume")
    assert result.exit_code == 2, result.output
    assert result.output.startswith(
        f'Error: --resume: {out} was begun with other settings (extra: "{{\\"max_chars\\":20}}" there, '
        '"{\\"max_chars\\":40}" here'
    ), result.output
    assert kept.startswith(out.read_bytes()) and out.read_bytes()  # nothing added
    # and with no --max-chars at all (a default run's extra is "")
    out.write_bytes(kept)
    result = run("--resume")
    assert result.exit_code == 2 and 'extra: "{\\"max_chars\\":20}" there, "" here' in result.output, result.output
    resumed = run("--max-chars", "20", "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert untimed(_records(out.read_text())) == untimed(_records(whole.decode()))


# --- corpus: the --env-arg values are in meta -------------------------------------------------------------------


class _Walls(Env):
    """Two pages and an option that changes them: what a corpus page must record to be reproduced."""

    name = "walls"
    splits = ("train",)
    options = {"color": "white"}

    def tasks(self, split):
        return [{"id": "train-0", "split": "train", "goal": ""}]

    def reset(self, task):
        self.at = 0
        return f"a {self.kwargs.get('color', 'white')} wall"

    def step(self, action):
        self.at += 1
        return f"{action} {self.at}", 0.0, self.at >= 2, {}

    def admissible(self):
        return ["left", "right"]


def test_corpus_pages_record_the_env_args_only_when_given():
    given = list(corpus_pages(_Walls(color="red"), ["train"], walks=2, holdout=0, max_steps=3, seed=0))
    assert given and all(p["meta"]["env_kwargs"] == {"color": "red"} for p in given)
    assert given[0]["observation"] == "a red wall"
    default = list(corpus_pages(_Walls(), ["train"], walks=2, holdout=0, max_steps=3, seed=0))
    assert default and not any("env_kwargs" in p["meta"] for p in default)
    # an option given at its default is no option (Env drops it): the same records as none given
    assert not any("env_kwargs" in p["meta"] for p in corpus_pages(_Walls(color="white"), ["train"], 1, 0, 3, 0))


# --- a damaged outcome is an outcome with a field missing -------------------------------------------------------


@pytest.mark.parametrize("command", ["world-model-data", "preference-data", "critic-data"])
def test_an_outcome_without_the_experts_next_observation_names_the_field(runner, tmp_path, command):
    damaged = copy.deepcopy(_outcomes()[1])
    del damaged["expert"]["next_observation"]
    path = _write(tmp_path / "badout.jsonl", [_outcomes()[0], damaged])
    result = runner.invoke(cli, [command, path])
    assert result.exit_code == 1
    assert result.stderr.splitlines()[-1] == f"Error: {path}:2: expert.next_observation: missing"


def test_an_alternative_neither_executed_nor_failed_is_named_and_errors_stay_valid(runner, tmp_path):
    outcomes = _outcomes()
    cut = copy.deepcopy(outcomes[0])
    del cut["alternatives"][1]["next_observation"]
    path = _write(tmp_path / "cut.jsonl", [cut])
    result = runner.invoke(cli, ["world-model-data", path])
    assert result.exit_code == 1
    assert result.stderr.splitlines()[-1] == f"Error: {path}:1: alternatives[1].next_observation: missing"
    # what rollout writes for failures is no damage: an expert action that failed, a state it could not reach
    failed = copy.deepcopy(outcomes[0])
    del failed["expert"]["next_observation"]
    failed["expert"]["error"] = "environment error: boom"
    unreachable = {**copy.deepcopy(cut), "error": "cannot reach the recorded state: observation differs"}
    path = _write(tmp_path / "failures.jsonl", [failed, unreachable])
    assert runner.invoke(cli, ["world-model-data", path, "-q"]).exit_code == 0


def test_a_branch_record_is_still_called_one(runner, tmp_path):
    branch = copy.deepcopy(_outcomes()[0])
    del branch["expert"]["next_observation"]
    branch["meta"] = {"stage": "branch"}
    path = _write(tmp_path / "branch.jsonl", [branch])
    result = runner.invoke(cli, ["world-model-data", path])
    assert result.exit_code == 1
    assert result.stderr.splitlines()[-1] == f"Error: {path}:1: expected an outcome record, got a branch record"


# --- one JSON document given for JSON Lines --------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, char, convert",
    [
        ('[\n  {"id": "a"},\n  {"id": "b"}\n]\n', 2, "jq -c '.[]'"),  # a pretty-printed array
        ('[{"id": "a"},\n{"id": "b"}]\n', 14, "jq -c '.[]'"),  # an array over lines
        ('{\n  "id": "a"\n}\n', 2, "jq -c ."),  # a pretty-printed object
    ],
)
def test_a_json_document_for_json_lines_says_how_to_convert_it(runner, tmp_path, text, char, convert):
    path = tmp_path / "expert.json"
    path.write_text(text)
    result = runner.invoke(cli, ["imitation-data", str(path)])
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        f"Error: {path}:1: not valid JSON: unexpected end of data: line 2 column 1 (char {char}); this looks like "
        f"one JSON document, not JSON Lines (one record per line): convert it with `{convert}`"
    )


def test_a_bad_line_that_is_no_document_gets_no_such_hint(runner, tmp_path):
    path = tmp_path / "expert.jsonl"
    path.write_text('{"id": "a"\n')  # a record cut short is not a document over many lines
    result = runner.invoke(cli, ["imitation-data", str(path)])
    assert result.exit_code == 1 and "JSON document" not in result.stderr
    assert result.stderr.startswith(f"Error: {path}:1: not valid JSON: ")


def test_an_array_of_records_on_one_line_says_how_to_convert_it(runner, tmp_path):
    path = tmp_path / "expert.json"
    path.write_text('[{"id": "a"}, {"id": "b"}]\n')
    result = runner.invoke(cli, ["imitation-data", str(path)])
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        f"Error: {path}:1: expected a JSON object, got a list; this looks like one JSON document, not JSON Lines: "
        "convert it with `jq -c '.[]'`"
    )
