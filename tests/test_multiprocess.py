"""Multi-process fine-tuning on CPU (issue 28 point 5): `accelerate launch` of 2 CPU processes (gloo), DDP and
FSDP with the committed configs, --grad-accum 2, example counts that leave the processes uneven, and validation.

Every run must finish (a process short of micro-batches in an update, or of validation batches, still joins each
collective) and give the losses of one process with the same effective batch (2 processes x --grad-accum 2 =
1 process x --grad-accum 4). Tolerance: relative 1e-4 for DDP (the same sums, added in another order) and 1e-3 for
FSDP, whose sharded gradient reduction and flat-parameter AdamW step round differently; three updates of a
0.1M-parameter model stay well inside both.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from eexp.io import read_records  # noqa: E402
from eexp.prompts import Serializer  # noqa: E402
from eexp.stages.imitation import imitation_examples  # noqa: E402
from eexp.training.config import FinetuneConfig  # noqa: E402
from eexp.training.recipe import finetune  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).parent.parent
DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """11 training examples (with batch 1 and 2 x 2 micro-batches an update, the last update of the epoch has 3: two
    for the first process, one for the second) and 5 validation examples (3 batches for one process, 2 for the
    other)."""
    d = tmp_path_factory.mktemp("mp")
    examples = [
        e for t in read_records([DATA / "trajectories.jsonl"]) for e in imitation_examples(t, Serializer(), True)
    ]
    assert len(examples) == 11
    (d / "train.jsonl").write_text("".join(json.dumps(e) + "\n" for e in examples))
    (d / "val.jsonl").write_text("".join(json.dumps(e) + "\n" for e in examples[:5]))
    return d


def metrics(out) -> list[dict]:
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def launch(config: str, data: Path, out: Path, tmp_path: Path, port: int, *extra: str, script: list[str]):
    """`accelerate launch --config_file recipes/accelerate/CONFIG --num_processes 2` on the CPU: the config's
    multi-process launcher (torchrun), with ACCELERATE_USE_CPU so every process runs on the CPU over gloo.
    (`accelerate launch --cpu --num_processes 2` starts one process in accelerate 1.x: its multi-CPU launcher is
    mpirun.)"""
    accelerate = shutil.which("accelerate", path=os.path.dirname(sys.executable)) or "accelerate"
    args = [
        accelerate,
        "launch",
        "--config_file",
        str(ROOT / "recipes" / "accelerate" / config),
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--main_process_port",
        str(port),
        *script,
        "finetune",
        str(data / "train.jsonl"),
        "--val",
        str(data / "val.jsonl"),
        "-o",
        str(out),
        *COMMON,
        "--grad-accum",
        "2",
        *extra,
    ]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "ACCELERATE_USE_CPU": "true",
        "HF_HOME": str(tmp_path / "hf"),
    }  # no accelerate config of the user's
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    # eexp's own one-line errors, from whichever process failed, first: the other's traceback (it sees only the
    # connection close) would push them out of a plain tail
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error: ")]
    assert proc.returncode == 0, "\n".join([*errors, proc.stderr[-3000:]])
    return proc


COMMON = ["--max-steps", "3", "--batch-size", "1", "--max-length", "512", "--eval-every", "1", "--seed", "0", "-q"]


@pytest.fixture(scope="module")
def single(tiny_checkpoint, data, tmp_path_factory):
    """One process, --grad-accum 4: the reference run."""
    out = tmp_path_factory.mktemp("single") / "out"
    finetune(
        FinetuneConfig(
            train_files=[str(data / "train.jsonl")],
            val=str(data / "val.jsonl"),
            model=str(tiny_checkpoint),
            output=str(out),
            max_steps=3,
            batch_size=1,
            grad_accum=4,
            max_length=512,
            eval_every=1,
            seed=0,
            quiet=True,
        )
    )
    return out


def same_run(out, reference, rel):
    got, want = metrics(out), metrics(reference)
    # the same updates at the same epochs: 2 processes really shared each update (one would count 6 an epoch)
    assert [(r["step"], r.get("epoch")) for r in got] == [(r["step"], r.get("epoch")) for r in want]
    assert [r["loss"] for r in got if "loss" in r] == pytest.approx([r["loss"] for r in want if "loss" in r], rel=rel)
    assert [r["val_loss"] for r in got if "val_loss" in r] == pytest.approx(
        [r["val_loss"] for r in want if "val_loss" in r], rel=rel
    )
    assert len([r for r in got if "val_loss" in r]) == 4  # before the first update, then after each of 3


@pytest.mark.slow
def test_ddp_two_processes_with_grad_accum_and_uneven_shards(tiny_checkpoint, data, single, tmp_path):
    out = tmp_path / "ddp"
    launch(
        "ddp.yaml",
        data,
        out,
        tmp_path,
        29541,
        "--model",
        str(tiny_checkpoint),
        "--save-every",
        "2",
        script=["-m", "eexp"],
    )
    same_run(out, single, rel=1e-4)
    from safetensors.torch import load_file

    a, b = load_file(out / "model.safetensors"), load_file(single / "model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in b)


@pytest.mark.slow
def test_fsdp_two_processes_with_the_committed_config(tiny_checkpoint, data, single, tmp_path):
    """recipes/accelerate/fsdp.yaml itself (FSDP2 with CPU-efficient loading: the first process's weights are
    broadcast into the others' shards), on 2 CPU processes (through tests/accelerate_fsdp_cpu.py, which lifts
    accelerate's accelerator-only check)."""
    out = tmp_path / "fsdp"
    launch(
        "fsdp.yaml",
        data,
        out,
        tmp_path,
        29542,
        "--model",
        str(tiny_checkpoint),
        script=[str(Path(__file__).parent / "accelerate_fsdp_cpu.py")],
    )
    same_run(out, single, rel=1e-3)
    from safetensors.torch import load_file

    a, b = load_file(out / "model.safetensors"), load_file(single / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[k], b[k], atol=1e-4) for k in b)
