"""One style, checked with the fast tests: ruff's formatter and its lint rules (pyproject.toml's [tool.ruff]) pass on
the whole tree, so a change that breaks either fails here, not in a reviewer's eye."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def ruff() -> list[str]:
    """ruff from the environment running the tests (the dev extra installs it), else from PATH."""
    beside = Path(sys.executable).with_name("ruff")
    found = str(beside) if beside.exists() else shutil.which("ruff")
    assert found, "ruff is not installed: pip install -e '.[dev]' (or ./install.sh --dev)"
    return [found]


def test_the_tree_is_formatted():
    result = subprocess.run([*ruff(), "format", "--check", "."], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, f"run `ruff format .`:\n{result.stdout}{result.stderr}"


def test_the_tree_passes_the_lint_rules():
    result = subprocess.run(
        [*ruff(), "check", "--output-format", "concise", "."], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, f"ruff check:\n{result.stdout}{result.stderr}"
