"""eexp expert: --shard slices by trajectory id (as every stage after it does), and meta says the run's settings that
change its records (--step-timeout, --no-admissible) where they are not the defaults."""

from __future__ import annotations

import orjson
from by_hand import untimed

from eexp.cli import cli
from eexp.runner import in_shard


def records(text: str) -> list[dict]:
    return [orjson.loads(line) for line in text.splitlines() if line.strip()]


def expert(runner, *args):
    result = runner.invoke(cli, ["expert", *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return records(result.stdout)


def test_expert_shards_are_the_slices_imitation_data_keeps(runner, tmp_path):
    """`expert --shard I/N | imitation-data --shard I/N` keeps every trajectory: expert slices by the trajectory's id,
    as imitation-data slices its input. (Sliced by task id, imitation-data kept 9 of these 20 trajectories.)"""
    run = ["--env", "shop", "-n", "20", "--seed", "1", "-q"]
    whole = expert(runner, *run)
    path = tmp_path / "whole.jsonl"
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in whole))
    n = 3
    shards = [expert(runner, *run, "--shard", f"{i}/{n}") for i in range(1, n + 1)]
    assert all(shards)
    # the shards together are the whole run, each trajectory once
    assert sorted(map(orjson.dumps, untimed(sum(shards, [])))) == sorted(map(orjson.dumps, untimed(whole)))
    for i, shard in enumerate(shards, 1):
        # each shard is exactly what imitation-data --shard i/N keeps of the whole run's file
        result = runner.invoke(cli, ["imitation-data", str(path), "--shard", f"{i}/{n}", "-q"], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        kept = {r["meta"]["trajectory_id"] for r in records(result.stdout)}
        assert kept == {r["id"] for r in shard}
        assert all(in_shard(r["id"], (i, n)) for r in shard)


def test_expert_meta_says_step_timeout_and_no_admissible_only_when_not_the_default(runner):
    run = ["--env", "tools", "-n", "2", "-q"]
    default = expert(runner, *run)
    assert all("step_timeout" not in r["meta"] and "admissible" not in r["meta"] for r in default)
    assert all("step_timeout" not in r["meta"] for r in expert(runner, *run, "--step-timeout", "60"))
    for r in expert(runner, *run, "--step-timeout", "5"):
        assert r["meta"]["step_timeout"] == 5 and "admissible" not in r["meta"]
    assert all(r["meta"]["step_timeout"] == 0 for r in expert(runner, *run, "--step-timeout", "0"))  # no limit
    for r in expert(runner, *run, "--no-admissible", "-j", "2"):  # the workers' records say it too
        assert r["meta"]["admissible"] is False and "step_timeout" not in r["meta"]
        assert all("admissible" not in step for step in r["steps"])


def test_expert_resumed_with_another_step_timeout_or_admissible_is_refused(runner, tmp_path):
    """--resume does not mix two settings in one file (eexp.records.run_settings compares what meta records)."""
    run = ["--env", "tools", "-n", "2", "-q"]
    out = tmp_path / "e.jsonl"
    assert runner.invoke(cli, ["expert", *run, "--no-admissible", "-o", str(out)]).exit_code == 0
    result = runner.invoke(cli, ["expert", "--env", "tools", "-n", "4", "-q", "-o", str(out), "--resume"])
    assert result.exit_code != 0 and "admissible" in result.output, result.output
    out.unlink()
    assert runner.invoke(cli, ["expert", *run, "--step-timeout", "5", "-o", str(out)]).exit_code == 0
    result = runner.invoke(cli, ["expert", "--env", "tools", "-n", "4", "-q", "-o", str(out), "--resume"])
    assert result.exit_code != 0 and "step_timeout" in result.output, result.output
