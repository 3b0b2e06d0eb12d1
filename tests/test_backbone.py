"""The JSONL layer, records, the serializer and the three model-free stages (imitation-data, world-model-data, mix)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
from by_hand import untimed

from eexp.cli import cli
from eexp.errors import SerializerError
from eexp.io import prepare_resume
from eexp.prompts import Serializer, parse_reply
from eexp.records import EXAMPLE_META, kind_of, validate
from eexp.runner import in_shard

DATA = Path(__file__).parent / "data"
TRAJ = str(DATA / "trajectories.jsonl")
OUTCOMES = str(DATA / "outcomes.jsonl")
EEXP = [sys.executable, "-m", "eexp"]


def lines(text: str) -> list[dict]:
    return [orjson.loads(x) for x in text.splitlines() if x.strip()]


def write(path: Path, content: bytes | str) -> str:
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return str(path)


# --- imitation-data ---------------------------------------------------------------------------------------------


def test_imitation_data_one_example_per_expert_step(runner):
    result = runner.invoke(cli, ["imitation-data", TRAJ])
    assert result.exit_code == 0, result.output
    examples = lines(result.stdout)
    assert len(examples) == 8  # 4 + 4 steps; the unsuccessful third trajectory is not imitated
    first = examples[0]
    assert first["id"] == "il:shop:train-00001#0" and first["source_id"] == "shop:train-00001"
    assert [m["role"] for m in first["messages"]] == ["system", "user", "assistant"]
    assert first["messages"][-1]["content"] == "Action: search[red cotton t-shirt]"
    assert "Task: i need a red cotton t-shirt" in first["messages"][1]["content"]
    assert "search[blue wool sweater]" in first["messages"][1]["content"]  # admissible actions listed
    assert set(first["meta"]) == set(EXAMPLE_META) and first["meta"]["kind"] == "il"
    assert "1 unsuccessful trajectories not imitated" in result.stderr


def test_imitation_data_history_is_the_last_n_steps(runner):
    result = runner.invoke(cli, ["imitation-data", TRAJ, "--history", "1"])
    last = lines(result.stdout)[3]["messages"][1]["content"]
    assert "(2 earlier steps not shown)" in last
    assert "Action: click[m]" in last and "Action: search[red cotton t-shirt]" not in last


def test_imitation_data_include_failed(runner):
    result = runner.invoke(cli, ["imitation-data", TRAJ, "--include-failed"])
    assert len(lines(result.stdout)) == 11


def test_the_same_input_gives_the_same_records(runner):
    a = runner.invoke(cli, ["imitation-data", TRAJ]).stdout
    b = runner.invoke(cli, ["imitation-data", TRAJ]).stdout
    assert untimed(lines(a)) == untimed(lines(b))


# --- world-model-data --------------------------------------------------------------------------------------------


def test_world_model_data_keeps_expert_and_invalid_transitions(runner, tmp_path):
    stats = tmp_path / "stats.json"
    result = runner.invoke(cli, ["world-model-data", OUTCOMES, "--stats", str(stats)])
    assert result.exit_code == 0, result.output
    examples = lines(result.stdout)
    assert len(examples) == 6  # 1+2 and 1+2 (one alternative failed to execute)
    ids = [e["id"] for e in examples]
    assert ids[0] == "wm:shop:train-00001#0:expert" and "wm:shop:train-00001#1:2" not in ids
    invalid = next(e for e in examples if "green t-shirt" in e["meta"]["action"])
    assert invalid["messages"][-1]["content"].startswith("Observation: invalid action")
    assert invalid["messages"][0]["content"].startswith("Predict what the environment shows")
    assert invalid["messages"][1]["content"].endswith("Action: click[green t-shirt]")
    assert invalid["meta"]["seed"] == 99 and invalid["meta"]["action_source"] == "policy"
    counts = orjson.loads(stats.read_bytes())
    assert counts["records_in"] == 2 and counts["records_out"] == 6
    assert counts["not_executed"] == 1 and counts["invalid_actions"] == 1


def test_a_summarizer_that_fails_names_the_record_and_one_that_will_not_load_says_why(runner, tmp_path, monkeypatch):
    """--summarizer is the user's code: an error in it, or a reply that is not text, is the record's error
    (FILE:LINE, exit 1, --on-error skip counts it), and a module that does not import is a usage error, one line.
    Each was a traceback."""
    (tmp_path / "summaries.py").write_text(
        "def fails(obs, state, action):\n    raise ValueError('no page')\n\n"
        "def number(obs, state, action):\n    return 3\n\n"
        "def short(obs, state, action):\n    return obs[:5]\n"
    )
    (tmp_path / "broken.py").write_text("def f(obs, state, action)\n    return obs\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "summaries", raising=False)  # another test's summaries.py, imported before
    for name, why in (
        ("fails", "--summarizer failed on it: ValueError: no page"),
        ("number", "--summarizer returned int, not text"),
    ):
        result = runner.invoke(cli, ["world-model-data", OUTCOMES, "--summarizer", f"summaries:{name}"])
        assert result.exit_code == 1 and result.output.splitlines()[-1] == f"Error: {OUTCOMES}:1: {why}"
    stats = tmp_path / "stats.json"
    skipped = runner.invoke(
        cli,
        ["world-model-data", OUTCOMES, "--summarizer", "summaries:number", "--on-error", "skip", "--stats", str(stats)],
    )
    assert skipped.exit_code == 0 and lines(skipped.stdout) == []
    assert orjson.loads(stats.read_bytes())["skipped"] == 2
    result = runner.invoke(cli, ["world-model-data", OUTCOMES, "--summarizer", "summaries:short"])
    assert result.exit_code == 0 and all(
        len(e["messages"][-1]["content"]) <= len("Observation: ") + 5 for e in lines(result.stdout)
    )
    result = runner.invoke(cli, ["world-model-data", OUTCOMES, "--summarizer", "broken:f"])
    assert result.exit_code == 2 and result.output.splitlines()[-1] == (
        "Error: Invalid value for --summarizer: cannot load 'broken:f': SyntaxError: expected ':' (broken.py, line 1)"
    )


def test_world_model_data_passes_over_a_state_rollout_could_not_reach(runner, tmp_path):
    """rollout writes a record with `error` for a state it could not reach: nothing was observed there, so it gives
    no example and is counted, as reflect, preference-data and critic-data count it, and the run goes on."""
    import json

    outcomes = [json.loads(line) for line in Path(OUTCOMES).read_text().splitlines()]
    reachable = lines(
        runner.invoke(cli, ["world-model-data", write(tmp_path / "one.jsonl", json.dumps(outcomes[1]))]).stdout
    )
    outcomes[0]["error"] = "the replay diverged from the recorded observation at step 1"
    stats = tmp_path / "s.json"
    both = write(tmp_path / "o.jsonl", "".join(json.dumps(o) + "\n" for o in outcomes))
    result = runner.invoke(cli, ["world-model-data", both, "--stats", str(stats)])
    assert result.exit_code == 0, result.output
    assert untimed(lines(result.stdout)) == untimed(reachable)
    assert json.loads(stats.read_text())["unreachable"] == 1


def test_world_model_data_says_which_states_had_no_alternative_and_refuses_a_file_with_none(runner, tmp_path):
    import json

    outcomes = [json.loads(line) for line in Path(OUTCOMES).read_text().splitlines()]
    outcomes[0]["alternatives"] = []
    some = write(tmp_path / "some.jsonl", "".join(json.dumps(o) + "\n" for o in outcomes))
    result = runner.invoke(cli, ["world-model-data", some, "--stats", str(tmp_path / "s.json")])
    assert result.exit_code == 0, result.output
    assert (
        "eexp: 1 of 2 states have no alternative action (their example is the expert transition alone; "
        "no_alternatives in --stats)" in result.stderr
    )
    assert json.loads((tmp_path / "s.json").read_text())["no_alternatives"] == 1
    # BFCL with --propose admissible: no state lists admissible actions, so none has an alternative
    outcomes[1]["alternatives"] = []
    none = write(tmp_path / "none.jsonl", "".join(json.dumps(o) + "\n" for o in outcomes))
    result = runner.invoke(cli, ["world-model-data", none])
    assert result.exit_code == 1
    assert (
        "none of the 2 states has an alternative action, so these examples are the expert's transitions alone, "
        "not world-model data; branch proposes none where a state lists no admissible actions: propose with a "
        "model (branch --propose policy)" in result.stderr
    )


def test_world_model_data_max_chars(runner):
    result = runner.invoke(cli, ["world-model-data", OUTCOMES, "--max-chars", "20"])
    for example in lines(result.stdout):
        assert len(example["messages"][-1]["content"]) <= len("Observation: ") + 20


# --- mix ---------------------------------------------------------------------------------------------------------


def make_examples(path: Path, tag: str, n: int) -> str:
    records = [
        {
            "id": f"{tag}{i}",
            "source_id": f"{tag}",
            "messages": [
                {"role": "user", "content": f"{tag} question {i}"},
                {"role": "assistant", "content": f"Action: {tag}{i}"},
            ],
        }
        for i in range(n)
    ]
    return write(path, b"".join(orjson.dumps(r) + b"\n" for r in records))


def test_mix_uses_every_record_once_with_weights_as_ratios(runner, tmp_path):
    a = make_examples(tmp_path / "a.jsonl", "a", 300)
    b = make_examples(tmp_path / "b.jsonl", "b", 100)
    out = lines(runner.invoke(cli, ["mix", f"{a}:3", b, "--seed", "1"]).stdout)
    assert sorted(r["id"] for r in out) == sorted([f"a{i}" for i in range(300)] + [f"b{i}" for i in range(100)])
    first_half = [r["id"][0] for r in out[:200]]
    assert 120 < first_half.count("a") < 180  # 3:1 while both last
    again = lines(runner.invoke(cli, ["mix", f"{a}:3", b, "--seed", "1"]).stdout)
    assert [r["id"] for r in again] == [r["id"] for r in out]
    other = lines(runner.invoke(cli, ["mix", f"{a}:3", b, "--seed", "2"]).stdout)
    assert [r["id"] for r in other] != [r["id"] for r in out]


def test_mix_concat_shuffle_dedup_limit(runner, tmp_path):
    a = make_examples(tmp_path / "a.jsonl", "a", 50)
    b = make_examples(tmp_path / "b.jsonl", "b", 50)
    concat = lines(runner.invoke(cli, ["mix", "--concat", a, b]).stdout)
    assert [r["id"] for r in concat] == [f"a{i}" for i in range(50)] + [f"b{i}" for i in range(50)]
    shuffled = lines(runner.invoke(cli, ["mix", "--concat", a, b, "--shuffle-buffer", "10"]).stdout)
    assert sorted(r["id"] for r in shuffled) == sorted(r["id"] for r in concat)
    assert [r["id"] for r in shuffled] != [r["id"] for r in concat]
    deduped = runner.invoke(cli, ["mix", a, a, "--dedup", "--stats", str(tmp_path / "s.json")])
    assert len(lines(deduped.stdout)) == 50
    assert orjson.loads((tmp_path / "s.json").read_bytes())["duplicates"] == 50
    assert len(lines(runner.invoke(cli, ["mix", a, b, "--limit", "7"]).stdout)) == 7


def test_mix_weights_are_finite_numbers_above_0(runner, tmp_path):
    a = make_examples(tmp_path / "a.jsonl", "a", 5)
    for weight in ("0", "-1", "nan", "inf"):
        result = runner.invoke(cli, ["mix", f"{a}:{weight}"])
        assert result.exit_code == 2, weight
        assert f"{a}:{weight}: the weight must be a finite number above 0" in result.output
    result = runner.invoke(cli, ["mix", f"{a}:x"])  # was "a.jsonl:x: no such file", taken for a file's name
    assert result.exit_code == 2 and f"{a}:x: the weight 'x' is not a number" in result.output
    named = tmp_path / "b.jsonl:x"  # a file whose name has a colon is still read as one
    named.write_text(Path(a).read_text())
    assert runner.invoke(cli, ["mix", str(named)]).exit_code == 0


def test_mix_reads_stdin_with_a_weight(runner, tmp_path):
    a = make_examples(tmp_path / "a.jsonl", "a", 5)
    result = runner.invoke(cli, ["mix", "-:1"], input=Path(a).read_text())
    assert result.exit_code == 0 and len(lines(result.stdout)) == 5


def test_mix_output_loads_with_datasets(runner, tmp_path):
    """Mixed meta shapes (ours, a user's with other keys and types, none) must not break Arrow."""
    datasets = pytest.importorskip("datasets")
    il = runner.invoke(cli, ["imitation-data", TRAJ]).stdout
    wm = runner.invoke(cli, ["world-model-data", OUTCOMES]).stdout
    user = [
        {
            "id": "u1",
            "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": 1}],
            "meta": {"step": "three", "score": 0.5},
        },
        {"id": "u2", "messages": [{"role": "user", "content": "q2"}, {"role": "assistant", "content": "b"}]},
    ]
    files = [
        write(tmp_path / "il.jsonl", il),
        write(tmp_path / "wm.jsonl", wm),
        write(tmp_path / "user.jsonl", b"".join(orjson.dumps(r) + b"\n" for r in user)),
    ]
    mixed = runner.invoke(cli, ["mix", *files, "-o", str(tmp_path / "mix.jsonl")])
    assert mixed.exit_code == 0, mixed.output
    ds = datasets.load_dataset("json", data_files=str(tmp_path / "mix.jsonl"), split="train")
    assert ds.num_rows == 16
    row = next(r for r in ds if r["id"] == "u1")
    assert row["meta"]["step"] == 0 and '"step":"three"' in row["meta"]["extra"]


# --- validate ----------------------------------------------------------------------------------------------------


def test_validate_names_kinds_and_problems(runner, tmp_path):
    ok = runner.invoke(cli, ["validate", TRAJ, OUTCOMES])
    assert ok.exit_code == 0
    assert f"{TRAJ}: 3 trajectory" in ok.stdout and f"{OUTCOMES}: 2 outcome" in ok.stdout
    record = orjson.loads(Path(TRAJ).read_text().splitlines()[0])
    record["steps"][1]["action"] = 7
    bad = write(tmp_path / "bad.jsonl", orjson.dumps(record) + b"\n")
    result = runner.invoke(cli, ["validate", bad])
    assert result.exit_code == 1
    assert f"{bad}:1: steps[1].action: expected a string, got a number" in result.stderr
    # a file that cannot be read is said, and the others are still checked (it stopped at the first)
    result = runner.invoke(cli, ["validate", str(tmp_path), TRAJ, str(tmp_path / "none.jsonl")])
    assert result.exit_code == 1 and f"{TRAJ}: 3 trajectory" in result.stdout
    assert result.stderr == (
        f"{tmp_path}: is a directory, not a JSONL file\n{tmp_path / 'none.jsonl'}: no such file\n"
        "Error: 2 file(s) that could not be read\n"
    )


def test_validate_kinds():
    record = orjson.loads(Path(OUTCOMES).read_text().splitlines()[0])
    assert kind_of(record) == "outcome" and validate(record, "outcome") is None
    del record["expert"]["next_observation"]
    # an expert action that failed in rollout: its error, no next observation, and still an outcome
    assert kind_of({**record, "expert": {**record["expert"], "error": "environment timed out"}}) == "outcome"
    # rollout's meta says it is an outcome: a damaged one, named by the field it lacks
    assert kind_of(record) == "outcome" and validate(record, "outcome") == "expert.next_observation: missing"
    assert kind_of({**record, "meta": {"stage": "branch"}}) == "branch"
    record.pop("meta")
    assert kind_of(record) == "branch"  # no meta: the keys say
    del record["state"]["goal"]
    assert validate(record, "branch") == "state.goal: missing"


# --- bad input ---------------------------------------------------------------------------------------------------

GOOD = orjson.loads(Path(TRAJ).read_text().splitlines()[0])


@pytest.mark.parametrize(
    "content, message",
    [
        (orjson.dumps(GOOD)[:-40] + b"\n", ":1: not valid JSON"),
        (b"[1, 2]\n", ":1: expected a JSON object, got a list"),
        (orjson.dumps({k: v for k, v in GOOD.items() if k != "task"}) + b"\n", ":1: task: missing"),
        (orjson.dumps({**GOOD, "success": "yes"}) + b"\n", ":1: success: expected a boolean, got a string"),
        (b"", ": empty file (no records)"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\n", ":1: binary data, not JSON Lines"),
        (
            b'{"id": "x", "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}\n',
            ":1: expected a trajectory, got a training example",
        ),
    ],
)
def test_bad_input_names_file_and_line(runner, tmp_path, content, message):
    path = write(tmp_path / "in.jsonl", content)
    result = runner.invoke(cli, ["imitation-data", path])
    assert result.exit_code == 1
    assert f"Error: {path}{message}" in result.stderr


def test_truncated_last_line_says_so(runner, tmp_path):
    path = write(tmp_path / "in.jsonl", orjson.dumps(GOOD) + b"\n" + orjson.dumps(GOOD)[:50])
    result = runner.invoke(cli, ["imitation-data", path])
    assert result.exit_code == 1
    assert f"{path}:2: not valid JSON" in result.stderr and "(the line is cut off: a truncated file?)" in result.stderr
    assert len(lines(result.stdout)) == 4  # the good record before it was written


def test_trajectories_fed_to_mix(runner):
    result = runner.invoke(cli, ["mix", TRAJ])
    assert result.exit_code == 1
    assert f"Error: {TRAJ}:1: expected a training example, got a trajectory" in result.stderr


def test_a_record_missing_a_field_of_its_kind_names_the_field(runner, tmp_path):
    """A trajectory without final_observation looks like no kind at all: the error names what it lacks."""
    record = orjson.loads(Path(TRAJ).read_text().splitlines()[0])
    del record["final_observation"]
    path = write(tmp_path / "t.jsonl", orjson.dumps(record) + b"\n")
    result = runner.invoke(cli, ["imitation-data", path])
    assert result.exit_code == 1 and result.stderr == (
        f"Error: {path}:1: expected a trajectory, got a record of no known kind (final_observation: missing)\n"
    )


def test_missing_file(runner):
    result = runner.invoke(cli, ["imitation-data", "nope.jsonl"])
    assert result.exit_code == 1 and "Error: nope.jsonl: no such file" in result.stderr


def test_bad_shard_is_a_usage_error(runner):
    result = runner.invoke(cli, ["imitation-data", TRAJ, "--shard", "3/2"])
    assert result.exit_code == 2
    assert "--shard 3/2: I must be between 1 and N (here 1 to 2)" in result.stderr


def test_unwritable_output(runner, tmp_path):
    result = runner.invoke(cli, ["imitation-data", TRAJ, "-o", str(tmp_path / "no" / "dir" / "out.jsonl")])
    assert result.exit_code == 1 and "out.jsonl: cannot write (No such file or directory)" in result.stderr


def test_on_error_skip_counts(runner, tmp_path):
    good = Path(TRAJ).read_text().splitlines()[0]
    path = write(tmp_path / "in.jsonl", f"{good}\nnot json\n[]\n{good}\n")
    stats = tmp_path / "stats.json"
    result = runner.invoke(cli, ["imitation-data", path, "--on-error", "skip", "--stats", str(stats)])
    assert result.exit_code == 0
    assert len(lines(result.stdout)) == 8
    assert "eexp: skipped 2 bad record(s)" in result.stderr
    assert orjson.loads(stats.read_bytes())["skipped"] == 2


def test_resume_without_output_is_a_usage_error(runner):
    assert runner.invoke(cli, ["imitation-data", TRAJ, "--resume"]).exit_code == 2


# --- shards and resume -------------------------------------------------------------------------------------------


def test_shards_partition_and_keep_trajectories_whole(runner, tmp_path):
    full = lines(runner.invoke(cli, ["world-model-data", OUTCOMES, OUTCOMES]).stdout)
    parts = [
        lines(runner.invoke(cli, ["world-model-data", OUTCOMES, OUTCOMES, "--shard", f"{i}/3"]).stdout)
        for i in (1, 2, 3)
    ]
    assert sorted(r["id"] for p in parts for r in p) == sorted(r["id"] for r in full)
    assert sum(1 for p in parts if p) == 1  # one trajectory: one shard has all of it
    keys = [f"traj-{i}" for i in range(1000)]
    sizes = [sum(in_shard(k, (i, 4)) for k in keys) for i in range(1, 5)]
    assert sum(sizes) == 1000 and min(sizes) > 200


def test_resume_repairs_a_torn_line_and_redoes_the_last_input(runner, tmp_path):
    out = tmp_path / "il.jsonl"
    complete = runner.invoke(cli, ["imitation-data", TRAJ, "-o", str(out)])
    assert complete.exit_code == 0
    whole = out.read_bytes()
    # killed during the second trajectory: 5 whole lines and half of the sixth
    torn = b"".join(whole.splitlines(keepends=True)[:5]) + whole.splitlines(keepends=True)[5][:30]
    out.write_bytes(torn)
    stats = tmp_path / "s.json"
    result = runner.invoke(cli, ["imitation-data", TRAJ, "-o", str(out), "--resume", "--stats", str(stats)])
    assert result.exit_code == 0, result.output
    assert untimed(lines(out.read_text())) == untimed(lines(whole.decode()))
    assert orjson.loads(stats.read_bytes())["resumed"] == 1  # the first trajectory was not redone


def test_prepare_resume_on_a_missing_file(tmp_path):
    assert prepare_resume(str(tmp_path / "none.jsonl")) == set()


# --- serializer and action format ----------------------------------------------------------------------------------


def test_serializer_clips_and_lists_admissible():
    s = Serializer(history=2, max_observation_chars=10, max_admissible=2)
    text = s.render_state({"goal": "g", "history": [], "observation": "x" * 50, "admissible": ["a", "b", "c"]})
    assert "x" * 9 + "…" in text and "a\nb\n(and 1 more)" in text
    assert Serializer.from_dict(s.to_dict()) == s


def test_serializer_from_dict_is_strict():
    """An unknown setting or a value of the wrong type is an error naming it, never silently dropped (as the model
    card parses the same settings); missing settings take their defaults."""
    assert Serializer.from_dict({"history": 1}) == Serializer(history=1)
    assert Serializer.from_dict(None) == Serializer()
    with pytest.raises(SerializerError) as unknown:
        Serializer.from_dict({"history": 1, "max_obs_chars": 10}, "m.gguf: serializer settings")
    assert str(unknown.value) == (
        "m.gguf: serializer settings: unknown setting 'max_obs_chars' (settings: history, "
        "max_observation_chars, max_history_chars, show_admissible, max_admissible)"
    )
    assert unknown.value.exit_code == 1
    with pytest.raises(SerializerError, match=r"^serializer settings: show_admissible must be true or false, not 1$"):
        Serializer.from_dict({"show_admissible": 1})
    with pytest.raises(SerializerError, match=r"^serializer settings: history must be an integer, not True$"):
        Serializer.from_dict({"history": True})
    with pytest.raises(SerializerError, match="must be a mapping of settings, not list"):
        Serializer.from_dict([("history", 1)])


@pytest.mark.parametrize(
    "reply, action, thought",
    [
        ("Action: click[buy now]", "click[buy now]", None),
        ("Thought: the price fits.\n\nAction: click[buy now]", "click[buy now]", "the price fits."),
        ("thought: maybe\naction:  search[x] ", "search[x]", "maybe"),
        ("I would buy it.", None, None),
        ("Action: a\nAction: b", "b", None),
    ],
)
def test_parse_reply(reply, action, thought):
    assert parse_reply(reply) == (action, thought)


# --- process behaviour: pipes and signals ---------------------------------------------------------------------------


def test_broken_pipe_exits_quietly(tmp_path):
    a = make_examples(tmp_path / "a.jsonl", "a", 20000)
    proc = subprocess.run(
        ["bash", "-o", "pipefail", "-c", f"{sys.executable} -m eexp mix {a} | head -n 1"], capture_output=True
    )
    assert proc.returncode == 0 and proc.stderr == b"" and proc.stdout.count(b"\n") == 1


def test_ctrl_c_exits_130_with_whole_lines(tmp_path):
    """Interrupt a stage reading from a slow pipe: exit 130 and every written line is whole JSON."""
    out = tmp_path / "out.jsonl"
    # SIGINT at its default in the child: a suite started from a background shell has it ignored, and Python keeps
    # an ignored SIGINT ignored
    proc = subprocess.Popen(
        [*EEXP, "imitation-data", "-o", str(out)],
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    proc.stdin.write(Path(TRAJ).read_bytes().splitlines(keepends=True)[0])
    proc.stdin.flush()
    for _ in range(100):  # wait for the first trajectory's examples
        if out.exists() and out.read_bytes().count(b"\n") >= 4:
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 130, err
    assert b"Traceback" not in err
    assert len([orjson.loads(x) for x in out.read_bytes().splitlines()]) == 4


def test_python_dash_m_and_version():
    proc = subprocess.run([*EEXP, "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and "eexp, version" in proc.stdout


def test_a_gzip_file_is_read_as_jsonl_and_a_bad_one_is_a_clear_error(tmp_path):
    import gzip

    from eexp.errors import InputError
    from eexp.io import Reader

    good = tmp_path / "episodes.jsonl.gz"
    with gzip.open(good, "wb") as f:
        f.write(b'{"id": "a"}\n\n{"id": "b"}\n{"id": \n')
    reader = Reader([str(good)])
    lines = []
    with pytest.raises(InputError) as err:
        for line in reader:
            lines.append((line.record["id"], line.line))
    assert lines == [("a", 1), ("b", 3)]
    assert str(err.value).startswith(f"{good}:4: not valid JSON")  # FILE:LINE counts the uncompressed lines
    bad = tmp_path / "plain.jsonl.gz"
    bad.write_bytes(b'{"id": "a"}\n')
    with pytest.raises(InputError, match=r"plain.jsonl.gz: not a readable gzip file"):
        list(Reader([str(bad)]))
