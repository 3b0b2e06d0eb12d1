"""The guides of docs/guide run as written: each plugin page's files (the blocks after `<!-- file: NAME -->`) are
installed as a package of their own and its "Try it" block runs in bash; the record formats page's examples are what
eexp writes for the commands it shows, and its field tables name the fields eexp/records.py checks."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from by_hand import install_apart
from netguard import pythonpath
from proctree import run_tree

from eexp.records import SHAPES, kind_of, validate

GUIDE = Path(__file__).parent.parent / "docs" / "guide"
KIND_OF_HEADING = {
    "trajectory": "trajectory",
    "branch": "branch",
    "outcome": "outcome",
    "training": "example",
    "preference": "preference",
    "episode": "episode",
    "summary": "summary",
    "prediction": "prediction",
}


def guide_files(page: str) -> dict[str, str]:
    return dict(re.findall(r"<!-- file: (\S+) -->\n```\w*\n(.*?)```", (GUIDE / page).read_text(), re.S))


def sh_block(page: str, marker: str) -> str:
    """The one sh block right after `marker` (a heading line or an HTML comment) in a guide page."""
    found = re.findall(re.escape(marker) + r"\n\n?```sh\n(.*?)```", (GUIDE / page).read_text(), re.S)
    assert len(found) == 1, f"{page}: no single sh block after {marker!r}"
    return found[0]


def install(page: str, tmp: Path) -> Path:
    """The package a guide page writes, installed into a folder of its own (not into this environment)."""
    src, site = tmp / "src", tmp / "site"
    src.mkdir(parents=True)
    files = guide_files(page)
    assert "pyproject.toml" in files and len(files) == 2, sorted(files)
    for name, text in files.items():
        (src / name).write_text(text)
    install_apart(src, site)
    return site


def bash(script: str, cwd: Path, site: Path) -> subprocess.CompletedProcess:
    """Run a guide's block as a user would, `eexp` on PATH being this interpreter's eexp."""
    bin_dir = cwd / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "eexp").write_text(f'#!/bin/sh\nexec {sys.executable} -m eexp "$@"\n')
    (bin_dir / "eexp").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": pythonpath(site)}
    return run_tree(
        ["bash", "-euo", "pipefail", "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def lines(path: Path) -> list[dict]:
    return [orjson.loads(x) for x in path.read_bytes().splitlines()]


@pytest.fixture(scope="module")
def lock_site(tmp_path_factory) -> Path:
    return install("environment-plugin.md", tmp_path_factory.mktemp("lock"))


@pytest.mark.slow  # ~10 s: the contract check, 20 trajectories, their rollouts and 10 episodes of the example
@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_environment_plugin_guide_runs_as_written(lock_site, tmp_path):
    proc = bash(sh_block("environment-plugin.md", "## Try it"), tmp_path, lock_site)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "lock (version 1.0)" in proc.stdout
    assert re.search(r"^lock: \d+ ok, 0 failed, 0 skipped$", proc.stdout, re.M), proc.stdout
    trajectories = lines(tmp_path / "expert.jsonl")
    assert len(trajectories) == 20 and all(t["success"] and t["env"]["name"] == "lock" for t in trajectories)
    outcomes = lines(tmp_path / "outcomes.jsonl")
    assert len(outcomes) == sum(len(t["steps"]) for t in trajectories)
    assert all("error" not in o and len(o["alternatives"]) == 3 for o in outcomes)
    assert lines(tmp_path / "iwm.jsonl")
    summary = orjson.loads((tmp_path / "summary.json").read_bytes())
    assert summary["n"] == 10 and summary["split"] == "ood" and set(summary["by_category"]) == {"high digits"}


@pytest.mark.slow  # ~10 s: 40 shop episodes and a branch of 3 trajectories with the example backend
@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_policy_plugin_guide_runs_as_written(tmp_path):
    site = install("policy-plugin.md", tmp_path / "pkg")
    proc = bash(sh_block("policy-plugin.md", "## Try it"), tmp_path, site)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    episodes = lines(tmp_path / "keyword.jsonl")
    assert len(episodes) == 20 and {e["policy"] for e in episodes} == {"keyword-buy-click"}
    assert all(e["meta"]["policy_spec"] == "keyword:buy,click" for e in episodes)
    assert "keyword" in proc.stdout and "random" in proc.stdout  # the comparison table
    branches = lines(tmp_path / "branches.jsonl")
    sampled = [a for b in branches for a in b["alternatives"] if a["source"] == "policy"]
    assert sampled and all(a["seed"] >= 1 for a in sampled)


def example_blocks() -> list[tuple[str, dict]]:
    text = (GUIDE / "records.md").read_text()
    return [
        (kind, json.loads(body)) for kind, body in re.findall(r"<!-- kind: (\w+) -->\n```json\n(.*?)```", text, re.S)
    ]


def field_tables() -> dict[str, set[str]]:
    """kind -> the fields its section's table names (`?` kept)."""
    text = (GUIDE / "records.md").read_text()
    tables = {}
    for heading, body in re.findall(r"^## (\w+)[^\n]*\n(.*?)(?=^## |\Z)", text, re.S | re.M):
        if heading in KIND_OF_HEADING:
            first_column = re.findall(r"^\| ([^|]+) \|", body, re.M)
            tables[KIND_OF_HEADING[heading]] = {
                name for cell in first_column for name in re.findall(r"`([\w?]+)`", cell)
            }
    return tables


def test_records_guide_names_the_fields_eexp_checks():
    tables = field_tables()
    assert set(tables) == set(SHAPES)
    for kind, named in tables.items():
        # the guide marks optional fields with `?` as SHAPES does, except meta (optional on input, always written)
        expected = {key.rstrip("?") if key == "meta?" else key for key in SHAPES[kind]}
        assert named == expected, (kind, sorted(named ^ expected))


def test_records_guide_examples_are_valid_records():
    examples = example_blocks()
    assert {kind for kind, _ in examples} == set(SHAPES)
    for kind, record in examples:
        assert validate(record, kind) is None, (kind, validate(record, kind))
        assert kind_of(record) == kind


@pytest.mark.slow  # ~40 s: the page's ten commands on the example environment (a tiny model among them)
@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_records_guide_examples_are_what_eexp_writes(lock_site, tmp_path):
    proc = bash(sh_block("records.md", "<!-- commands: the examples below -->"), tmp_path, lock_site)
    assert proc.returncode == 0, proc.stderr[-3000:]
    written = {}  # (kind, id): a branch record and its outcome share an id
    for path in tmp_path.glob("*.jsonl"):
        for record in lines(path):
            written[kind_of(record), record["id"]] = record
    summary = orjson.loads((tmp_path / "summary.json").read_bytes())
    for kind, example in example_blocks():
        made = summary if kind == "summary" else written.get((kind, example["id"]))
        assert made is not None, f"no record {example['id']} was written"
        assert example["meta"]["stage"] == made["meta"]["stage"]
        strip = lambda r: {k: v for k, v in r.items() if k != "meta"}  # noqa: E731
        assert strip(example) == strip(made), kind
