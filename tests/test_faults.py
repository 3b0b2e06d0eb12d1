"""Faults of the machine rather than of the input (issue 14): a full disk, a read-only folder, a damaged checkpoint,
--stats naming a directory, --resume on another stage's file, pickle weights, a --model path that does not exist.

Each one is one line `Error: ...` and exit 1, never a traceback; a JSONL output is left as whole lines that --resume
completes into what an uninterrupted run writes. The full disks are real where the tests may mount a 64 KiB tmpfs
(root); elsewhere those tests are skipped, and the in-process simulations of ENOSPC (which always run) remain.
"""

from __future__ import annotations

import builtins
import errno
import io
import json
import os
import pickle
import shutil
import subprocess
from pathlib import Path

import pytest
from by_hand import untimed
from click.testing import CliRunner

import eexp.io
from eexp.cli import cli

NO_SPACE = os.strerror(errno.ENOSPC)  # "No space left on device"


def invoke(args: list) -> object:
    """Run eexp in-process; an exception that is not a clean exit fails the test (it would be a traceback)."""
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert "Traceback" not in result.output
    return result


def assert_error(result, message: str, alone: bool = True) -> None:
    """Exit 1 and `Error: message` as the last line of stderr (its only line when `alone`)."""
    assert result.exit_code == 1, result.output
    if alone:
        assert result.stderr == f"Error: {message}\n"
    else:
        assert result.stderr.splitlines()[-1] == f"Error: {message}"
        assert result.stderr.count("Error:") == 1


def records(path) -> list[dict]:
    """The records of a file that must hold whole JSON lines only (a final newline, every line an object)."""
    data = Path(path).read_bytes()
    assert not data or data.endswith(b"\n"), "a torn last line"
    return [json.loads(line) for line in data.splitlines()]


def kept_message(out, n: int) -> str:
    return f"{out}: cannot write ({NO_SPACE}); {n} whole records kept, continue with --resume"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Expert trajectories (shop), their imitation examples, branch records and outcomes, each from an
    uninterrupted run: what an interrupted and resumed run must end up equal to."""
    d = tmp_path_factory.mktemp("faults")
    files = {name: d / f"{name}.jsonl" for name in ("expert", "il", "branches", "outcomes")}
    for args in (
        ["expert", "--env", "shop", "-n", "20", "-o", files["expert"]],
        ["imitation-data", files["expert"], "-o", files["il"]],
        ["branch", files["expert"], "-k", "2", "-o", files["branches"]],
        ["rollout", files["branches"], "-o", files["outcomes"]],
    ):
        assert invoke(args + ["-q"]).exit_code == 0
    return files


# --- a small disk: a real tmpfs, or ENOSPC simulated in-process ---------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """mount(size) -> a directory on a fresh tmpfs of that size (skips the test where none can be mounted)."""
    mounted = []

    def mount(size: str = "64k", options: str = "") -> Path:
        if not hasattr(os, "geteuid") or os.geteuid() != 0 or not shutil.which("mount"):
            pytest.skip("mounting a small tmpfs needs root (the in-process simulations still run)")
        d = tmp_path / f"disk{len(mounted)}"
        d.mkdir()
        opts = f"size={size}" + (f",{options}" if options else "")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(d)], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounted.append(d)
        return d

    yield mount
    for d in reversed(mounted):
        subprocess.run(["umount", "-l", str(d)], check=False)


def grow(disk: Path, size: str = "4m") -> None:
    """Free space: the same tmpfs, made larger (the files stay)."""
    subprocess.run(["mount", "-o", f"remount,size={size}", str(disk)], check=True)


def fill(disk: Path, leave: int = 0) -> Path:
    """Fill the disk with a file until at most `leave` bytes are free."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                st = os.statvfs(disk)
                free = st.f_bavail * st.f_frsize
                if free <= leave:
                    break
                f.write(b"\0" * min(4096, free - leave))
        except OSError as e:
            assert e.errno == errno.ENOSPC
    return filler


class SimulatedDisk:
    """Files opened for writing under `root` share `free` bytes; a write past them is cut short, and the next raises
    ENOSPC (what a full disk does). Installed as eexp.io's `open`."""

    def __init__(self, root: Path, free: int):
        self.root, self.free = root, free
        root.mkdir()

    def open(self, path, mode="r", buffering=-1, **kwargs):
        if not str(path).startswith(str(self.root)) or not any(c in mode for c in "wax"):
            return builtins.open(path, mode, buffering, **kwargs)
        raw = _FullFile(self, path, mode)
        return raw if buffering == 0 else io.BufferedWriter(raw)


class _FullFile(io.FileIO):
    def __init__(self, disk: SimulatedDisk, path, mode):
        super().__init__(path, mode)
        self.disk = disk

    def write(self, b) -> int:
        if self.disk.free <= 0:
            raise OSError(errno.ENOSPC, NO_SPACE)
        n = super().write(bytes(b)[: self.disk.free])
        self.disk.free -= n
        return n


def test_full_disk_simulated_leaves_whole_lines_that_resume_completes(data, tmp_path, monkeypatch):
    """Never skipped: ENOSPC half-way through a line, simulated in-process."""
    disk = SimulatedDisk(tmp_path / "disk", free=30_000)
    monkeypatch.setattr(eexp.io, "open", disk.open, raising=False)
    out, stats = disk.root / "il.jsonl", disk.root / "stats.json"
    result = invoke(["imitation-data", data["expert"], "-o", out, "--stats", stats, "-q"])
    kept = records(out)
    assert 0 < len(kept) < len(records(data["il"]))
    assert_error(result, kept_message(out, len(kept)))
    assert untimed(kept) == untimed(records(data["il"])[: len(kept)])
    assert sorted(os.listdir(disk.root)) == ["il.jsonl"]  # no stats, no temporary file left behind

    monkeypatch.undo()  # space freed
    assert invoke(["imitation-data", data["expert"], "-o", out, "--resume", "-q"]).exit_code == 0
    assert untimed(records(out)) == untimed(records(data["il"]))


def test_full_disk_simulated_under_stats(data, tmp_path, monkeypatch):
    disk = SimulatedDisk(tmp_path / "disk", free=20)
    monkeypatch.setattr(eexp.io, "open", disk.open, raising=False)
    out, stats = tmp_path / "il.jsonl", disk.root / "stats.json"
    result = invoke(["imitation-data", data["expert"], "-o", out, "--stats", stats, "-q"])
    assert_error(result, f"{stats}: cannot write ({NO_SPACE})")
    assert os.listdir(disk.root) == []
    assert untimed(records(out)) == untimed(records(data["il"]))  # the output itself is complete


def test_full_disk_imitation_data(data, small_disk):
    disk = small_disk("64k")
    out = disk / "il.jsonl"
    result = invoke(["imitation-data", data["expert"], "-o", out, "-q"])
    kept = records(out)
    assert 0 < len(kept) < len(records(data["il"]))
    assert_error(result, kept_message(out, len(kept)))
    grow(disk)
    assert invoke(["imitation-data", data["expert"], "-o", out, "--resume", "-q"]).exit_code == 0
    assert untimed(records(out)) == untimed(records(data["il"]))


def test_full_disk_rollout(data, small_disk):
    disk = small_disk("64k")
    out = disk / "outcomes.jsonl"
    result = invoke(["rollout", data["branches"], "-o", out, "-q"])
    kept = records(out)
    assert 0 < len(kept) < len(records(data["outcomes"]))
    assert_error(result, kept_message(out, len(kept)))
    grow(disk)
    assert invoke(["rollout", data["branches"], "-o", out, "--resume", "-q"]).exit_code == 0
    assert untimed(records(out)) == untimed(records(data["outcomes"]))


def test_full_disk_eval(tmp_path, small_disk):
    args = ["eval", "--policy", "oracle", "--env", "shop", "-n", "12", "-q"]
    full = tmp_path / "full.jsonl"
    assert invoke(args + ["-o", full]).exit_code == 0
    disk = small_disk("64k")
    filler = fill(disk, leave=8192)
    out = disk / "episodes.jsonl"
    result = invoke(args + ["-o", out])
    kept = records(out)
    assert 0 < len(kept) < 12
    assert_error(result, kept_message(out, len(kept)))
    filler.unlink()
    result = invoke(args + ["-o", out, "--resume"])
    assert result.exit_code == 0, result.output
    assert untimed(records(out)) == untimed(records(full))


def test_full_disk_under_stats(data, tmp_path, small_disk):
    disk = small_disk("64k")
    fill(disk)
    out, stats = tmp_path / "il.jsonl", disk / "stats.json"
    result = invoke(["imitation-data", data["expert"], "-o", out, "--stats", stats, "-q"])
    assert_error(result, f"{stats}: cannot write ({NO_SPACE})")
    assert sorted(os.listdir(disk)) == ["filler"]  # no temporary file left behind
    assert untimed(records(out)) == untimed(records(data["il"]))


# --- finetune, export --------------------------------------------------------------------------------------------


@pytest.fixture
def one_thread():
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def finetune_args(data, model, out, *extra) -> list:
    return [
        "finetune",
        data["il"],
        "--model",
        model,
        "-o",
        out,
        "-q",
        "--max-steps",
        "2",
        "--batch-size",
        "4",
        "--max-length",
        "512",
        *extra,
    ]


def test_full_disk_finetune(data, tiny_checkpoint, tmp_path, small_disk, one_thread):
    from safetensors.torch import load_file

    disk = small_disk("64k")
    out = disk / "run"
    result = invoke(finetune_args(data, tiny_checkpoint, out))  # the model (~400 KB) does not fit
    assert_error(
        result,
        f"cannot write the final model to {out}: the disk is full; no checkpoint was kept (free "
        "space, then --resume starts the run over)",
        alone=False,
    )
    assert len(records(out / "metrics.jsonl")) == 2
    grow(disk)
    assert invoke(finetune_args(data, tiny_checkpoint, out, "--resume")).exit_code == 0
    assert invoke(finetune_args(data, tiny_checkpoint, tmp_path / "whole")).exit_code == 0
    resumed, whole = load_file(out / "model.safetensors"), load_file(tmp_path / "whole" / "model.safetensors")
    assert resumed.keys() == whole.keys() and all((resumed[k] == whole[k]).all() for k in whole)
    assert len(records(out / "metrics.jsonl")) == 2


def test_full_disk_simulated_in_a_finetune_checkpoint(data, tiny_checkpoint, tmp_path, monkeypatch, one_thread):
    """safetensors reports a full disk with its own error type, not OSError."""
    import safetensors.torch
    from safetensors import SafetensorError

    def save_file(tensors, path, *args, **kwargs):
        Path(path).write_bytes(b"partial")
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(safetensors.torch, "save_file", save_file)
    out = tmp_path / "run"
    result = invoke(finetune_args(data, tiny_checkpoint, out, "--save-every", "1"))
    assert_error(
        result,
        f"cannot save the checkpoint {out / 'checkpoints' / 'step-1'} (step 1): the disk is full. "
        "Free space and run again with --resume",
        alone=False,
    )
    assert not (out / "checkpoints" / "step-1").exists()


def test_finetune_into_a_read_only_folder(data, tiny_checkpoint, small_disk, one_thread):
    disk = small_disk("64k", "ro")
    why = os.strerror(errno.EROFS)
    result = invoke(finetune_args(data, tiny_checkpoint, disk / "run"))
    assert_error(result, f"{disk / 'run'}: cannot create the directory ({why})")
    result = invoke(finetune_args(data, tiny_checkpoint, disk))  # exists (empty), but nothing can be written there
    assert_error(result, f"{disk}: cannot write into this directory ({why})")


def test_finetune_into_a_read_only_folder_simulated(data, tiny_checkpoint, tmp_path, monkeypatch):
    def makedirs(path, *args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))

    monkeypatch.setattr(os, "makedirs", makedirs)
    out = tmp_path / "locked" / "run"
    result = invoke(finetune_args(data, tiny_checkpoint, out))
    assert_error(result, f"{out}: cannot create the directory ({os.strerror(errno.EACCES)})")


def test_export_of_a_truncated_checkpoint(tiny_checkpoint, tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt)
    weights = ckpt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # a copy cut short
    out = tmp_path / "m.gguf"
    result = invoke(["export", ckpt, "-o", out])
    assert result.exit_code == 1
    # safetensors' own words in the brackets
    assert result.stderr.startswith(f"Error: {weights}: cannot read the weights (")
    assert result.stderr.endswith("): a truncated or damaged file?\n") and result.stderr.count("\n") == 1
    assert os.listdir(tmp_path) == ["ckpt"]


def test_stats_naming_a_directory(data, tmp_path):
    out, stats = tmp_path / "il.jsonl", tmp_path / "stats"
    stats.mkdir()
    result = invoke(["imitation-data", data["expert"], "-o", out, "--stats", stats, "-q"])
    assert_error(result, f"{stats}: is a directory, not a file to write")
    assert not out.exists()  # found before the run, not after it


@pytest.mark.parametrize(
    "stage, file, held, wanted",
    [
        ("rollout", "il", "training examples", "outcomes"),
        ("imitation-data", "outcomes", "outcomes", "training examples"),
    ],
)
def test_resume_refuses_the_output_of_another_stage(data, tmp_path, stage, file, held, wanted):
    source = {"rollout": data["branches"], "imitation-data": data["expert"]}[stage]
    out = tmp_path / "out.jsonl"
    shutil.copy(data[file], out)
    before = out.read_bytes()
    result = invoke([stage, source, "-o", out, "--resume", "-q"])
    assert_error(result, f"{out}:1: cannot resume: this file holds {held}, not {wanted} (written by another stage?)")
    assert out.read_bytes() == before  # untouched


class _Touch:
    """A pickle that leaves a mark when it is loaded."""

    def __init__(self, mark: Path):
        self.mark = mark

    def __reduce__(self):
        return (open, (str(self.mark), "w"))


def test_finetune_loads_safetensors_only(data, tiny_checkpoint, tmp_path, monkeypatch):
    model, mark = tmp_path / "bin-model", tmp_path / "unpickled"
    shutil.copytree(tiny_checkpoint, model)
    (model / "model.safetensors").unlink()
    (model / "pytorch_model.bin").write_bytes(pickle.dumps(_Touch(mark)))
    out = tmp_path / "run"
    result = invoke(finetune_args(data, model, out))
    assert_error(
        result,
        f"{model}: the weights are pytorch_model.bin, a pickle, and eexp loads safetensors only; "
        'convert them once (if you trust the file): python -c "from transformers import '
        f"AutoModelForCausalLM as M; M.from_pretrained('{model}', use_safetensors=False)"
        f".save_pretrained('{model}')\"",
    )
    assert not mark.exists() and not out.exists()

    # and the checkpoint is loaded with use_safetensors=True, as eval and export load theirs
    import transformers

    asked = {}

    def from_pretrained(path, **kwargs):
        asked.update(kwargs)
        raise OSError("stop here")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", from_pretrained)
    result = invoke(finetune_args(data, tiny_checkpoint, tmp_path / "run2"))
    assert_error(result, f"{tiny_checkpoint}: cannot load the model: stop here", alone=False)
    assert asked["use_safetensors"] is True


def test_finetune_model_that_does_not_exist(data, tmp_path):
    model, out = tmp_path / "no-such-model", tmp_path / "run"
    result = invoke(finetune_args(data, model, out))
    assert_error(result, f"{model}: no such model directory (the path does not exist)")
    assert not out.exists()


def interrupted_file(marker: bytes, written: int | None):
    """eexp.io's `open` for a file whose write of the line holding `marker` puts `written` bytes of it on disk (None:
    all of them) and is then interrupted by a Ctrl-C, raised before the writer sees how many bytes were written."""

    class Interrupted(io.FileIO):
        def write(self, b) -> int:
            data = bytes(b)
            if marker not in data:
                return super().write(data)
            super().write(data[:written])
            raise KeyboardInterrupt

    return lambda path, mode, buffering=-1: Interrupted(path, mode)


@pytest.mark.parametrize("written, kept", [(None, ["first", "second"]), (5, ["first"])], ids=["after", "half-way"])
def test_a_ctrl_c_keeps_the_whole_lines_written_and_only_those(tmp_path, monkeypatch, written, kept):
    """A Ctrl-C that lands just after a record's line reached the file must not cut that line away (it is whole);
    one that lands half-way through a line cuts back to the last whole line."""
    out = tmp_path / "out.jsonl"
    monkeypatch.setattr(eexp.io, "open", interrupted_file(b"second", written), raising=False)
    writer = eexp.io.Writer(str(out))
    writer.write({"id": "first"})
    with pytest.raises(KeyboardInterrupt):
        writer.write({"id": "second"})
    writer.close()
    assert [r["id"] for r in records(out)] == kept


# --- issue 65: a torn middle line on --resume, SIGTERM under -j --------------------------------------------------


def test_resume_names_the_line_that_is_not_json(data, tmp_path):
    """A torn line in the middle (not the last: that one is cut off and done again) is named by its number."""
    out = tmp_path / "outcomes.jsonl"
    lines = Path(data["outcomes"]).read_bytes().splitlines(keepends=True)
    out.write_bytes(b"".join(lines[:3]) + lines[3][:40] + b"\n" + b"".join(lines[4:]))
    before = out.read_bytes()
    result = invoke(["rollout", data["branches"], "-o", out, "--resume", "-q"])
    assert_error(result, f"{out}:4: cannot resume: the line is not JSON (fix or remove it, then --resume again)")
    assert out.read_bytes() == before


def test_sigterm_to_eval_with_workers_is_one_line(tmp_path):
    """SIGTERM (a job's time limit, `kill`) to `eval -j 2`: the workers are stopped as on Ctrl-C, and stderr says
    `eexp: terminated`, not Python's resource tracker's "There appear to be N leaked semaphore objects"."""
    import signal
    import sys
    import time

    out = tmp_path / "episodes.jsonl"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "eexp",
            "eval",
            "--env",
            "shop",
            "--split",
            "train",
            "--policy",
            "random",
            "-n",
            "5000",
            "-j",
            "2",
            "-o",
            str(out),
            "-q",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline and not (out.exists() and out.stat().st_size):
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be stopped"
    proc.send_signal(signal.SIGTERM)
    # to its end (the resource tracker, a child, writes to it too), and a hang fails rather than stalling the suite
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143
    assert stderr == "eexp: terminated\n"
    assert 0 < len(records(out)) < 5000  # whole lines only


def test_write_atomic_never_follows_a_file_planted_at_its_temporary_name(tmp_path):
    """--stats, --summary and the environments' caches are written beside their target and renamed. The temporary
    name was the target's plus `.tmp<pid>`: another user of a shared folder could plant a symlink there and have the
    write land in a file of theirs choosing. The name is now drawn at random and made exclusively (O_EXCL)."""
    import os

    from eexp.io import write_atomic

    victim = tmp_path / "victim"
    victim.write_text("mine")
    target = tmp_path / "stats.json"
    for pid in range(os.getpid() - 50, os.getpid() + 50):  # every name the old scheme could have used near this run
        (tmp_path / f"stats.json.tmp{pid}").symlink_to(victim)
    write_atomic(str(target), b'{"ok": 1}')
    assert victim.read_text() == "mine" and target.read_bytes() == b'{"ok": 1}'
    left = {p.name for p in tmp_path.iterdir()} - {"victim", "stats.json"}
    assert all(name.startswith("stats.json.tmp") for name in left)  # the planted links only: no temporary left
    plain = tmp_path / "plain"
    plain.write_bytes(b"")
    assert target.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777  # the mode a plain open gives (umask)


def test_a_file_where_an_output_folder_should_be_is_said_as_such(tmp_path):
    """init-model and merge make the folders above OUT: a file in the way was a FileExistsError traceback."""
    (tmp_path / "afile").write_text("")
    out = tmp_path / "afile" / "sub" / "model"
    result = invoke(["init-model", str(out)])
    assert_error(result, f"{tmp_path / 'afile'}: is a file, not a folder: cannot write {out} inside it")
    assert (tmp_path / "afile").read_text() == ""
    # OUT itself a file (an empty one was said to be "not empty"); merge's missing adapter, a missing one
    assert_error(
        invoke(["init-model", str(tmp_path / "afile")]),
        f"{tmp_path / 'afile'}: is a file; init-model writes a new folder",
    )
    missing = tmp_path / "nodir"
    assert_error(invoke(["merge", str(missing), "-o", str(tmp_path / "m")]), f"{missing}: no such file or directory")
    gguf = tmp_path / "afile" / "x.gguf"
    assert_error(
        invoke(["export", str(tmp_path), "-o", str(gguf)]),
        f"cannot write {gguf}: directory {tmp_path / 'afile'} is a file, not a folder",
    )


def test_an_adapter_whose_base_is_not_here_names_the_option_that_gives_one(tmp_path):
    """merge's is --base (it said --policy-arg base=DIR, eval's)."""
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(
        '{"base_model_name_or_path": "/nonexistent/base", "peft_type": "LORA"}'
    )
    result = invoke(["merge", str(adapter), "-o", str(tmp_path / "merged")])
    assert_error(
        result,
        f"{adapter}: the adapter's base model '/nonexistent/base' is not a local directory (nothing is downloaded; "
        "give it with --base DIR)",
    )
    assert not (tmp_path / "merged").exists()
