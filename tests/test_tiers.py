"""The test tiers' plumbing (tests/conftest.py): `make test-all` runs the tests of a module that share a fixture built
once for the module in one pytest-xdist worker, or each worker builds it again (ALFWorld's generated games, a cold
TextWorld cache, SmolLM2's import: minutes each on 2 cores)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent

SHARED = """
import os
import pytest


@pytest.fixture(scope="module")
def built_once():
    return os.getpid()


@pytest.mark.parametrize("i", range(6))
def test_uses_it(built_once, i):
    with open(os.path.join(os.environ["WHERE"], f"shared-{i}"), "w") as f:
        f.write(os.environ["PYTEST_XDIST_WORKER"])
"""


def test_the_tests_of_a_module_s_shared_fixture_run_in_one_worker(tmp_path):
    """A session of `make test-all`'s options over a module of six tests sharing a module fixture, with this
    conftest as a plugin: the six run in one worker. They spread over both when the conftest's group marks come after
    pytest-xdist reads them (its hook ran first) or when xdist's group is lost (pytest 9.2 with xdist 3.8)."""
    (tmp_path / "test_shared.py").write_text(SHARED)
    where = tmp_path / "where"
    where.mkdir()
    env = {
        **os.environ,
        "WHERE": str(where),
        "PYTHONPATH": os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH")) if p),
    }
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "conftest", "-p", "no:cacheprovider", "-n", "2"]
        + ["--dist", "loadgroup", "--rootdir", str(tmp_path), str(tmp_path / "test_shared.py")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    workers = {p.name: p.read_text() for p in where.iterdir()}
    assert len(workers) == 6, workers
    assert len(set(workers.values())) == 1, workers
