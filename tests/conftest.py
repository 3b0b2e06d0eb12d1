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


# --- caches: every run starts from an empty EEXP_CACHE, as on a fresh machine -------------------------------------
# Set before any fixture runs (session- and module-scoped ones too), so TextWorld games and the like are made anew
# in a temporary directory each run; a warm ~/.cache/eexp once hid a generator failure from CI.

HOME_CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "eexp"


def _listing(root: Path) -> list[tuple[str, int]]:
    return sorted((str(p), p.stat().st_mtime_ns) for p in root.rglob("*")) if root.exists() else []


def pytest_configure(config):
    import tempfile
    # a user's default policy would change what the tests of "no --policy given" see
    os.environ.pop("EEXP_POLICY", None)
    # nothing reaches outside: a name that is not a local path is looked up in the Hugging Face cache alone
    os.environ["HF_HUB_OFFLINE"] = "1"
    config._eexp_cache = tempfile.mkdtemp(prefix="eexp-test-cache-")
    config._eexp_saved_cache = os.environ.get("EEXP_CACHE")
    config._eexp_home_cache = (HOME_CACHE.exists(), _listing(HOME_CACHE))
    os.environ["EEXP_CACHE"] = config._eexp_cache


def pytest_sessionfinish(session, exitstatus):
    """Fail the run if anything wrote to the user's cache: tests must never depend on (or fill) it."""
    config = session.config
    if not hasattr(config, "_eexp_home_cache"):
        return
    if (HOME_CACHE.exists(), _listing(HOME_CACHE)) != config._eexp_home_cache:
        print(f"\nERROR: the tests wrote to {HOME_CACHE}; they must use $EEXP_CACHE only", flush=True)
        session.exitstatus = 1


def pytest_unconfigure(config):
    import shutil
    if hasattr(config, "_eexp_cache"):
        shutil.rmtree(config._eexp_cache, ignore_errors=True)
        if config._eexp_saved_cache is None:
            os.environ.pop("EEXP_CACHE", None)
        else:
            os.environ["EEXP_CACHE"] = config._eexp_saved_cache


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread for a module of training tests: on a shared 2-core machine, two OpenMP threads of a
    0.1M-parameter model mostly wait on each other (measured: ~10x slower per step under load)."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _isolated_cache(request, monkeypatch):
    """Each test sees the run's empty-at-start cache, even if another test pointed EEXP_CACHE elsewhere."""
    monkeypatch.setenv("EEXP_CACHE", request.config._eexp_cache)


# --- models (issue 5): tiny checkpoints built once per test session with `eexp init-model` ---------------------

def _init_checkpoint(tmp_path_factory, name: str, arch: str):
    from eexp.cli import cli
    out = tmp_path_factory.mktemp("models") / name
    result = CliRunner().invoke(cli, ["init-model", str(out), "--arch", arch, "--size", "tiny", "--seed", "0"])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A tiny qwen2 transformers checkpoint (~0.1M parameters, ChatML template, eos <|im_end|>, no BOS)."""
    return _init_checkpoint(tmp_path_factory, "tiny-qwen2", "qwen2")


@pytest.fixture(scope="session")
def tiny_llama_checkpoint(tmp_path_factory) -> Path:
    """The same as `tiny_checkpoint` with the llama architecture (untied output embeddings)."""
    return _init_checkpoint(tmp_path_factory, "tiny-llama", "llama")


@pytest.fixture(scope="session")
def tiny_gguf(tiny_checkpoint, tmp_path_factory) -> Path:
    """`tiny_checkpoint` exported with `eexp export --quant q8_0` (a GGUF for llama-cpp-python policies)."""
    from eexp.cli import cli
    out = tmp_path_factory.mktemp("gguf") / "tiny-qwen2.q8_0.gguf"
    result = CliRunner().invoke(cli, ["export", str(tiny_checkpoint), "-o", str(out), "--quant", "q8_0"])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture
def stub():
    """stub(honours, **options) -> a StubServer (tests/openai_stub.py) on 127.0.0.1, closed after the test."""
    from openai_stub import StubServer
    servers = []

    def make(*args, **kwargs):
        servers.append(StubServer(*args, **kwargs))
        return servers[-1]
    yield make
    for server in servers:
        server.close()
