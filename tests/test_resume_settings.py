"""`-o FILE --resume` continues a file only with the settings that began it (eexp.records.run_settings): a file never
holds the records of two runs (a `branch -k 2` file continued with `-k 5` held both, silently, before). The first
record the continuation would add is checked before it is written: a refused run adds nothing to the file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from by_hand import untimed

from eexp.cli import cli
from eexp.records import run_settings


@pytest.fixture
def expert(runner, tmp_path):
    path = tmp_path / "expert.jsonl"
    assert (
        runner.invoke(cli, ["expert", "--env", "shop", "-n", "4", "--seed", "0", "-q", "-o", str(path)]).exit_code == 0
    )
    return path


def _timeless(path) -> list[dict]:
    return [{**r, "meta": {**r["meta"], "created_utc": None}} for r in map(json.loads, path.read_text().splitlines())]


def _cut(path, keep: int) -> bytes:
    """The file cut to its first `keep` lines, as a run stopped part-way leaves it; those bytes, returned."""
    kept = b"".join(path.read_bytes().splitlines(keepends=True)[:keep])
    path.write_bytes(kept)
    return kept


@pytest.mark.parametrize(
    "command, begun, other, said",
    [
        (["branch"], ["-k", "2"], ["-k", "3"], "k: 2 there, 3 here"),
        (["branch", "-k", "2"], ["--seed", "0"], ["--seed", "1"], "seed: 0 there, 1 here"),
        (["imitation-data"], [], ["--observation-loss"], 'kind: "il" there, "il-obs" here; extra: "" there, '),
        (["imitation-data"], [], ["--history", "1"], 'serializer: "{\\"history\\":3,'),
    ],
)
def test_resume_with_other_settings_is_refused_and_the_file_kept(runner, expert, tmp_path, command, begun, other, said):
    out, whole = tmp_path / "out.jsonl", tmp_path / "whole.jsonl"
    assert runner.invoke(cli, [*command, *begun, str(expert), "-q", "-o", str(whole)]).exit_code == 0
    out.write_bytes(whole.read_bytes())
    kept = _cut(out, 12)  # past the first trajectory's records: the last input's are done again on resume
    result = runner.invoke(cli, [*command, *other, str(expert), "-q", "-o", str(out), "--resume"])
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"Error: --resume: {out} was begun with other settings ({said}")
    assert result.output.rstrip().endswith("): resume it with the settings it was begun with, or write to another file")
    assert out.read_bytes() == kept  # as it was: nothing added, and nothing cut (the last input's records, done
    # again on a resume, are cut only when the run writes its first line)
    # resumed with its own settings, it ends as the whole run
    assert runner.invoke(cli, [*command, *begun, str(expert), "-q", "-o", str(out), "--resume"]).exit_code == 0
    assert _timeless(out) == _timeless(whole)


def test_rollout_resumed_on_another_branch_runs_output_is_refused(runner, expert, tmp_path):
    """A rollout part's records carry the branch run they came from: continued on branches of another K (a recipe's
    K_IWM changed with the part left), it is refused, not finished with the other run's outcomes."""
    branches = {}
    for k in (2, 3):
        branches[k] = tmp_path / f"branches{k}.jsonl"
        args = ["branch", "-k", str(k), str(expert), "-q", "-o", str(branches[k])]
        assert runner.invoke(cli, args).exit_code == 0
    out, whole = tmp_path / "outcomes.jsonl", tmp_path / "whole.jsonl"
    assert runner.invoke(cli, ["rollout", str(branches[2]), "-q", "-o", str(whole)]).exit_code == 0
    out.write_bytes(whole.read_bytes())
    kept = _cut(out, 4)
    result = runner.invoke(cli, ["rollout", str(branches[3]), "-q", "-o", str(out), "--resume"])
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"Error: --resume: {out} was begun with other settings (branch.k: 2 there, 3 here)")
    assert out.read_bytes() == kept
    assert runner.invoke(cli, ["rollout", str(branches[2]), "-q", "-o", str(out), "--resume"]).exit_code == 0
    assert _timeless(out) == _timeless(whole)


def test_expert_resumed_with_another_seed_is_refused(runner, tmp_path):
    out = tmp_path / "expert.jsonl"
    assert (
        runner.invoke(cli, ["expert", "--env", "shop", "-n", "4", "--seed", "0", "-q", "-o", str(out)]).exit_code == 0
    )
    _cut(out, 2)
    result = runner.invoke(cli, ["expert", "--env", "shop", "-n", "4", "--seed", "1", "-q", "-o", str(out), "--resume"])
    assert result.exit_code == 2 and "(seed: 0 there, 1 here)" in result.output, result.output
    assert len(out.read_text().splitlines()) == 2


def test_what_varies_from_record_to_record_is_no_setting(expert, runner, tmp_path):
    """Two records of one run have the same run_settings: the task, the step, the action and the time are not
    settings."""
    il = tmp_path / "il.jsonl"
    assert runner.invoke(cli, ["imitation-data", str(expert), "-q", "-o", str(il)]).exit_code == 0
    records = [json.loads(line) for line in il.read_text().splitlines()]
    assert len({json.dumps(run_settings(r), sort_keys=True) for r in records}) == 1
    assert len({(r["meta"]["task_id"], r["meta"]["step"]) for r in records}) == len(records)


def test_what_varies_within_one_branch_run_or_one_reflect_run_is_not_compared():
    """A branch file of a mixed input (a dreamed trajectory's world), of a fleet (the endpoints that answered) or
    of a llama.cpp policy on another CPU (its buffers) continues; a reflection's model settings are compared only
    between two model reflections (a grounded fallback's record has none); preference-data's --rejected is."""
    branch = {"stage": "branch", "k": 2, "seed": 0, "model": "m", "env": "shop", "created_utc": "t"}
    assert run_settings({"meta": branch}) == run_settings(
        {"meta": {**branch, "env": "tools", "dream": {"world": "w"}, "endpoint": "a,b", "extra_bufts": False}}
    )
    assert run_settings({"meta": branch}) != run_settings({"meta": {**branch, "k": 3}})
    model = {"stage": "reflect", "kind": "sr", "serializer": "{}", "reflector": "self", "model": "m"}
    model["extra"] = '{"template_sha256": "", "temperature": 0.7}'
    grounded = {**model, "reflector": "grounded", "model": "", "extra": '{"template_sha256": ""}'}
    first, fallback = run_settings({"meta": model}), run_settings({"meta": grounded})
    assert set(first) > set(fallback) and "model" not in fallback  # compared on the keys both have
    assert run_settings({"meta": {**model, "model": "other"}})["model"] == "other"
    pair = {"stage": "preference-data", "kind": "preference", "serializer": "{}", "extra": "", "rejected_filter": "all"}
    assert run_settings({"meta": pair}) != run_settings({"meta": {**pair, "rejected_filter": "invalid"}})


# --- --shard: a file is continued only with the slice that began it -------------------------------------------------


@pytest.fixture(scope="module")
def shop_pipeline(tmp_path_factory):
    """The shop's expert trajectories, branch records and outcomes: the inputs of every stage that shards."""
    from click.testing import CliRunner

    d, runner = tmp_path_factory.mktemp("shard"), CliRunner()
    paths = {name: d / f"{name}.jsonl" for name in ("expert", "branch", "outcome")}
    for args in (
        ["expert", "--env", "shop", "-n", "8", "--seed", "0", "-o", str(paths["expert"])],
        ["branch", str(paths["expert"]), "-k", "2", "-o", str(paths["branch"])],
        ["rollout", str(paths["branch"]), "-o", str(paths["outcome"])],
    ):
        assert runner.invoke(cli, [*args, "-q"]).exit_code == 0
    return paths


SHARDED = [  # each stage that slices its input, and what it reads
    (["branch", "-k", "2"], "expert"),
    (["rollout"], "branch"),
    (["imitation-data"], "expert"),
    (["world-model-data"], "outcome"),
    (["reflect", "--reflector", "grounded"], "outcome"),
    (["preference-data"], "outcome"),
    (["critic-data"], "outcome"),
    (["expert", "--env", "shop", "-n", "8", "--seed", "0"], None),
    (["eval", "--policy", "random", "--env", "shop", "-n", "8", "--seed", "0"], None),
]


def undated(path) -> list[dict]:
    """A file's records without the time each was written."""
    return untimed([json.loads(line) for line in path.read_bytes().splitlines()])


@pytest.mark.parametrize("command, reads", SHARDED, ids=[c[0] for c, _ in SHARDED])
def test_resume_with_another_shard_is_refused(runner, shop_pipeline, tmp_path, command, reads):
    """A slice's file resumed with another --shard (or a whole run's with one) would end holding two slices'
    records; it is refused before anything is written. Resumed with its own slice, a finished file is kept whole
    (a record's shard key is its input's: no false refusal)."""
    inputs = [str(shop_pipeline[reads])] if reads else []
    out, whole = tmp_path / "out.jsonl", tmp_path / "whole.jsonl"

    def run(path, *more):
        return runner.invoke(cli, [*command, *inputs, "-q", "-o", str(path), *more])

    assert run(whole).exit_code == 0
    assert run(out, "--shard", "1/2").exit_code == 0 and out.read_bytes()
    first = undated(out)
    result = run(out, "--shard", "1/2", "--resume")
    # the same records (a stage that redoes its last input's records on --resume writes them again, a second later)
    assert result.exit_code == 0 and undated(out) == first, result.output
    first = out.read_bytes()
    result = run(out, "--shard", "2/2", "--resume")
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"Error: --resume: {out} holds records of ")
    assert result.output.rstrip().endswith(
        ", which is not in --shard 2/2: resume it with the --shard it was begun with, or write to another file"
    )
    assert out.read_bytes() == first
    result = run(whole, "--shard", "2/2", "--resume")  # a whole run's file, continued as one slice
    assert result.exit_code == 2 and "which is not in --shard 2/2" in result.output, result.output


def test_critic_data_resumed_without_its_balance_is_refused(runner, shop_pipeline, tmp_path):
    """--balance changes the expert example's weight only where a state has several alternatives: the run's
    setting is in every record's meta.extra, so a file is not continued with the other."""
    out = tmp_path / "critic.jsonl"
    run = ["critic-data", str(shop_pipeline["outcome"]), "-q", "-o", str(out)]
    assert runner.invoke(cli, run).exit_code == 0
    assert {json.loads(json.loads(line)["meta"]["extra"])["balance"] for line in out.read_text().splitlines()} == {True}
    kept = _cut(out, 6)
    result = runner.invoke(cli, [*run, "--resume", "--no-balance"])
    assert result.exit_code == 2 and "(balance: true there, false here)" in result.output, result.output
    assert out.read_bytes() == kept
    # a file from before `balance` was recorded has none to compare: continued, not refused as "null there"
    older = []
    for line in kept.decode().splitlines():
        record = json.loads(line)
        extra = json.loads(record["meta"]["extra"])
        del extra["balance"]
        record["meta"]["extra"] = json.dumps(extra, separators=(",", ":"))
        older.append(json.dumps(record))
    out.write_text("\n".join(older) + "\n")
    result = runner.invoke(cli, [*run, "--resume"])
    assert result.exit_code == 0, result.output


def _branches(runner, expert, path):
    assert runner.invoke(cli, ["branch", "-k", "2", str(expert), "-q", "-o", str(path)]).exit_code == 0
    return path


def _other_tasks(runner, expert, ours, tmp_path) -> tuple[Path, str]:
    """Branches of another expert file (other tasks), made with the same settings."""
    other_expert = tmp_path / "expert1.jsonl"
    args = ["expert", "--env", "shop", "-n", "4", "--seed", "1", "-q", "-o", str(other_expert)]
    assert runner.invoke(cli, args).exit_code == 0
    # the first trajectory's 6 outcomes are kept; this input begins with none of them
    return _branches(
        runner, other_expert, tmp_path / "b1.jsonl"
    ), "6 of its 6 records are of inputs that this input does not begin with"


def _another_state(runner, expert, ours, tmp_path) -> tuple[Path, str]:
    """The same branch records but one state changed, under its id (an expert file made again from changed games)."""
    records = [json.loads(line) for line in ours.read_text().splitlines()]
    records[1]["state"]["observation"] += " (changed)"
    changed = tmp_path / "changed.jsonl"
    changed.write_text("".join(json.dumps(r) + "\n" for r in records))
    return changed, f"its record of {records[1]['id']} was made from another input record than this one"


@pytest.mark.parametrize("other_input", [_other_tasks, _another_state], ids=["other tasks", "another state"])
def test_rollout_resumed_from_another_expert_files_branches_is_refused(runner, expert, tmp_path, other_input):
    """The branch settings alike, the expert file not: a rollout part begun from one is not continued from the
    other's branches, which would leave one file holding the outcomes of both. Refused before it writes: the
    outcomes kept are checked against the inputs skipped, and before the first write every kept one must have
    been matched."""
    ours = _branches(runner, expert, tmp_path / "b0.jsonl")
    theirs, said = other_input(runner, expert, ours, tmp_path)
    out = tmp_path / "outcomes.jsonl"
    assert runner.invoke(cli, ["rollout", str(ours), "-q", "-o", str(out)]).exit_code == 0
    kept = _cut(out, 8)  # the first trajectory's 6 outcomes kept, the second's cut short (done again on resume)
    result = runner.invoke(cli, ["rollout", str(theirs), "-q", "-o", str(out), "--resume"])
    assert result.exit_code == 2, result.output
    assert result.output == (
        f"Error: --resume: {out} was begun from another input ({said}): resume it with the input it was begun from, "
        "or write to another file\n"
    )
    assert out.read_bytes() == kept
    # its own input continues it
    assert runner.invoke(cli, ["rollout", str(ours), "-q", "-o", str(out), "--resume"]).exit_code == 0
    assert len(out.read_text().splitlines()) == len(ours.read_text().splitlines())


def test_rollout_resumed_from_an_input_shorter_than_its_part_is_refused(runner, expert, tmp_path):
    """An input that ends before the part does (its first trajectory's branches, the part holding two trajectories'
    outcomes): the run would add nothing and leave the part holding outcomes this input never had. Refused too."""
    ours = _branches(runner, expert, tmp_path / "b0.jsonl")
    lines = ours.read_text().splitlines(keepends=True)
    first = [line for line in lines if json.loads(line)["trajectory_id"] == json.loads(lines[0])["trajectory_id"]]
    shorter = tmp_path / "first.jsonl"
    shorter.write_text("".join(first))
    out = tmp_path / "outcomes.jsonl"
    assert runner.invoke(cli, ["rollout", str(ours), "-q", "-o", str(out)]).exit_code == 0
    kept = _cut(out, 13)  # two trajectories' outcomes (6 and 5), the third's cut short
    result = runner.invoke(cli, ["rollout", str(shorter), "-q", "-o", str(out), "--resume"])
    assert result.exit_code == 2, result.output
    assert "(5 of its 11 records are of inputs that this input does not begin with)" in result.output
    assert out.read_bytes() == kept
