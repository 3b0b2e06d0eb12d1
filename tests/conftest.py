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
# in a temporary directory each run; a warm ~/.cache/eexp once hid a generator failure from CI. Every process a test
# starts inherits it, and each test sees it again (_isolated_cache), so the tests neither read nor fill the user's
# cache. The run does not compare ~/.cache/eexp before and after: it cannot tell its own writes from those of the
# other processes that use eexp on the machine meanwhile (a training run), and failed the suite on theirs.


def pytest_configure(config):
    import tempfile

    # a user's default policy would change what the tests of "no --policy given" see
    os.environ.pop("EEXP_POLICY", None)
    # nothing reaches outside: a name that is not a local path is looked up in the Hugging Face cache alone, and a
    # connection or a name lookup beyond this machine fails the test that makes it (tests/netguard.py)
    os.environ["HF_HUB_OFFLINE"] = "1"
    from netguard import LOG_VARIABLE, child_folder, install

    install()
    # this process is no child even where it imported the guard's sitecustomize (a pytest-xdist worker, started by a
    # controller that set PYTHONPATH below): its refusals fail the test where they happen, and are not logged
    import sys

    sys._eexp_netguard_child = False
    # ... and in every Python process a test starts (its refusals logged, read by _no_child_reached_outside)
    config._eexp_netguard_dir = child_folder()
    os.environ["EEXP_NETGUARD_DIR"] = config._eexp_netguard_dir
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (config._eexp_netguard_dir, os.environ.get("PYTHONPATH")) if p
    )
    os.environ[LOG_VARIABLE] = os.path.join(config._eexp_netguard_dir, "refused.log")
    # a worker of `make test-all` (pytest-xdist, one per core) runs one OpenMP thread, and so does every process it
    # starts: with the other workers busy, threads of one torch or llama.cpp process mostly wait on each other
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ.setdefault("OMP_NUM_THREADS", "1")
    config._eexp_cache = tempfile.mkdtemp(prefix="eexp-test-cache-")
    config._eexp_saved_cache = os.environ.get("EEXP_CACHE")
    os.environ["EEXP_CACHE"] = config._eexp_cache


def pytest_unconfigure(config):
    import shutil

    if hasattr(config, "_eexp_netguard_dir"):
        shutil.rmtree(config._eexp_netguard_dir, ignore_errors=True)
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
def _no_child_reached_outside():
    """A test fails if a process it started tried to reach outside this machine (tests/netguard.py's log)."""
    from netguard import LOG_VARIABLE

    log = os.environ.get(LOG_VARIABLE, "")
    before = os.path.getsize(log) if os.path.exists(log) else 0
    yield
    if os.path.exists(log) and os.path.getsize(log) > before:
        with open(log) as f:
            f.seek(before)
            pytest.fail("a process this test started tried to reach outside this machine:\n" + f.read(), pytrace=False)


@pytest.fixture(autouse=True)
def _isolated_cache(request, monkeypatch):
    """Each test sees the run's empty-at-start cache, even if another test pointed EEXP_CACHE elsewhere."""
    monkeypatch.setenv("EEXP_CACHE", request.config._eexp_cache)


@pytest.fixture(autouse=True)
def _a_clock_that_never_repeats(monkeypatch):
    """In this process every record is written a second after the one before (`meta.created_utc`). Two runs of a
    stage compared whole then always differ, not only when they straddle a second (stop 74's CI failed on one): a
    test comparing runs leaves the time out (by_hand.untimed). Processes a test starts keep the real clock."""
    import itertools
    import time

    seconds = itertools.count(1_800_000_000)  # 2027-01-15: not now, so no test can lean on the real time either

    def utc_now() -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(next(seconds)))

    monkeypatch.setattr("eexp.records.utc_now", utc_now)
    monkeypatch.setattr("eexp.stages.evaluate.stage.utc_now", utc_now)


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


# --- test tiers: `make test` is the fast tier (-m "not slow"), `make test-all` (and CI) everything -----------------
# What is slow is decided here, from what a test uses and where it lives, not by a decorator remembered on each test:
# a module whose every test starts a heavy process, a fixture that builds or starts something expensive, and the
# few remaining tests measured over ~10 s on 2 cores (`pytest --durations=0`). A test that is not marked and takes
# over UNMARKED_LIMIT seconds is listed at the end of the run, so the fast tier stays fast.

SLOW_MODULES = {
    "test_recipes": "runs recipes end to end",
    "test_real_model": "SmolLM2-135M (93 MB GGUF): import, fine-tune, export",
    "test_llama_server": "starts llama.cpp's llama-server",
    "test_multiprocess": "accelerate launches two training processes",
    "test_envs_real": "TextWorld generation and Inform 7, ScienceWorld's JVM, BFCL",
    "test_miniwob": "Chromium",
    "test_wheel": "builds the sdist and wheel and installs them in fresh venvs",
    "test_alfworld": "ALFWorld games through TextWorld and the PDDL planner",
    "test_tau2": "τ²-bench's environment with a user simulator",
    "test_guides": "installs the guides' plugins with pip and runs them",
    "test_ray": "starts a three-node Ray cluster on loopback, and eexp's own local one",
}
SLOW_FIXTURES = {
    "llama_server": "starts llama.cpp's llama-server",
    "smollm2": "SmolLM2-135M",
}
# module::name (parameters left off) of single tests measured over 20 s on 2 cores, with the time seen under load
SLOW_TESTS = {
    "test_corpus::test_pretraining_lowers_the_held_out_loss_and_is_recorded": "pretrains a tiny model (78 s)",
    "test_corpus::test_pretraining_is_deterministic_for_a_seed": "pretrains twice (22 s)",
    "test_critic::test_a_trained_critic_ranks_the_expert_first_more_often_than_chance": "trains a critic (62 s)",
    "test_memory::test_eval_with_several_workers_refuses_copies_of_a_gpu_model": "starts eval workers (28 s)",
    "test_rl::test_rl_in_the_dream_of_a_perfect_world_model_trains_as_in_the_world": "two RL runs (53 s)",
}
UNMARKED_LIMIT = 20.0

# The recipe runs, on request (`make test-recipes`, -m recipes; torchtune keeps its recipe integration tests apart
# too): each runs a recipe end to end through make, a process per stage, most of them loading torch (2-10 minutes
# each on 2 cores, over half of the whole suite's time). `make test-all` and CI plan every config's header command
# instead (tests/test_recipe_configs.py) and run the demo's recipe and the README's quick start end to end.
RECIPE_RUNS = {
    "test_recipe_configs::test_header_command_runs_at_a_tiny_size": "every config's header command, run",
    "test_recipes::test_smollm2_recipe_at_a_tiny_size": "the SmolLM2 recipe, run",
    "test_recipes::test_scaling_recipe_at_a_tiny_size": "the scaling recipe, run",
    "test_rl::test_rl_recipe_at_a_tiny_size": "the RL recipe, run",
    "test_rl::test_expert_step_recipe_at_a_tiny_size": "the expert-step RL recipe, run",
    "test_rl::test_next_state_recipe_at_a_tiny_size": "the next-state RL recipe, run",
}


def _tier_reason(item) -> str | None:
    module = item.module.__name__.rpartition(".")[2] if item.module else ""
    if module in SLOW_MODULES:
        return SLOW_MODULES[module]
    for name in getattr(item, "fixturenames", ()):
        if name in SLOW_FIXTURES:
            return SLOW_FIXTURES[name]
    return SLOW_TESTS.get(f"{module}::{item.originalname}")


def _shares_a_fixture_of_its_module(item) -> bool:
    """Whether the test uses a fixture built once for its module (or class): such a module's tests are run by one
    worker of `make test-all`, or each worker would build it again."""
    return any(
        d.scope in ("module", "class", "package") for defs in item._fixtureinfo.name2fixturedefs.values() for d in defs
    )


# tryfirst: pytest-xdist's worker reads the xdist_group marks in its own pytest_collection_modifyitems, which pluggy
# calls before this one unless this one asks to go first: without it no mark below is seen, and each worker builds a
# module's shared fixture again (the ALFWorld games, a cold TextWorld cache, SmolLM2's import). tests/test_tiers.py.
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("slow") is None and _tier_reason(item):
            item.add_marker(pytest.mark.slow)
        module = item.module.__name__.rpartition(".")[2] if item.module else ""
        if f"{module}::{item.originalname}" in RECIPE_RUNS:
            item.add_marker(pytest.mark.recipes)
            item.add_marker(pytest.mark.slow)
        # `make test-all` (pytest-xdist, --dist loadgroup) hands each other test to whichever worker is free: a
        # module of long independent tests (every recipe config, tests/test_recipe_configs.py) is spread over them
        if _shares_a_fixture_of_its_module(item):
            item.add_marker(pytest.mark.xdist_group(item.module.__name__ if item.module else item.nodeid))


_unmarked_durations: dict[str, float] = {}


def pytest_runtest_logreport(report):
    if "slow" not in report.keywords:
        _unmarked_durations[report.nodeid] = _unmarked_durations.get(report.nodeid, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter):
    """For developers (`make test-all` and CI set EEXP_TIER_CHECK=1): the tests of the fast tier that took longer than
    it allows, to mark slow. A user's `make test` ends with the result alone."""
    if not os.environ.get("EEXP_TIER_CHECK"):
        return
    over = sorted(((t, n) for n, t in _unmarked_durations.items() if t > UNMARKED_LIMIT), reverse=True)
    if over:
        terminalreporter.section("unmarked tests over the fast tier's limit")
        terminalreporter.write_line(
            f"{len(over)} test(s) not marked slow took over {UNMARKED_LIMIT:.0f} s (setup, "
            f"call and teardown): add them to tests/conftest.py's SLOW_TESTS or make them "
            f"cheaper"
        )
        for seconds, nodeid in over:
            terminalreporter.write_line(f"  {seconds:6.1f} s  {nodeid}")
