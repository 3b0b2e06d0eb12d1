"""The README's Quick start runs as written: its one shell block, executed by bash in an empty directory.

Only sizes are reduced, by the replacements below; each must match the README exactly once, so the test breaks
(instead of silently running something else) when the README changes."""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

import orjson
import pytest
from proctree import run_tree

README = Path(__file__).parent.parent / "README.md"

# README text -> the reduced size the test runs
REDUCTIONS = {
    "expert --env shop -n 200": "expert --env shop -n 12",
    "--max-steps 600 --lr 1e-3": "--max-steps 30 --lr 1e-3",
    "--warmup-steps 200": "--warmup-steps 10",
    "--split test -n 200": "--split test -n 4",
}


def quick_start_block() -> str:
    text = README.read_text()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, re.S)
    assert len(blocks) == 1, "the Quick start should hold exactly one sh block"
    return blocks[0]


def test_quick_start_names_only_real_commands():
    from eexp.cli import cli

    used = set(re.findall(r"(?:^|[|;]\s*|do\s+)eexp ([a-z-]+)", quick_start_block(), re.M))
    assert used and used <= set(cli.commands), used - set(cli.commands)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_quick_start_runs_as_written(tmp_path):
    script = quick_start_block()
    for before, after in REDUCTIONS.items():
        assert script.count(before) >= 1, f"the Quick start no longer contains {before!r}"
        script = script.replace(before, after)
    bin_dir = tmp_path / "bin"  # `eexp` on PATH is this interpreter's eexp, as after ./install.sh
    bin_dir.mkdir()
    (bin_dir / "eexp").write_text(f'#!/bin/sh\nexec {sys.executable} -m eexp "$@"\n')
    (bin_dir / "eexp").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}
    proc = run_tree(
        ["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1500
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]

    for run in ("IL", "IWM", "SR"):
        episodes = [orjson.loads(x) for x in (tmp_path / f"{run}.jsonl").read_text().splitlines()]
        assert len(episodes) == 4
    assert (tmp_path / "compare.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "iwm.gguf").stat().st_size > 0
    assert "all checks agree" in proc.stdout
    phases = [orjson.loads(x)["phase"] for x in (tmp_path / "IWM" / "metrics.jsonl").read_text().splitlines()]
    assert phases.count("warmup") == 10 and len(phases) == 30
