"""Shared fixtures. Tests build everything they need (no downloads, no committed weights)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

DATA = Path(__file__).parent / "data"


@pytest.fixture
def runner():
    return CliRunner()


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Keep caches (EEXP_CACHE) out of the user's home."""
    monkeypatch.setenv("EEXP_CACHE", str(tmp_path_factory.getbasetemp() / "eexp-cache"))
