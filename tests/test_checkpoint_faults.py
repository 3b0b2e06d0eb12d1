"""--resume from a damaged checkpoint, and from a run whose paths are spelled otherwise or moved (issue 65).

A run killed after its checkpoint at step 2 (the final save left out, as a killed run leaves it) is resumed:
- a truncated `weights.safetensors`, a missing `optimizer.pt`, a `state.json` cut short are each one line naming the
  file and what to do, exit 1, and nothing is deleted (before: a SafetensorError, FileNotFoundError or
  orjson.JSONDecodeError traceback, the last naming no file);
- the same run resumed as `W/il.jsonl --model W/base -o W/ft` after starting as `il.jsonl --model base -o ft` in W
  resumes, and so does the run folder moved with its model and data (before: "options differ ... model ('base' ->
  '/.../base')"); another model at the same path is still refused.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from eexp.cli import cli

pytest.importorskip("torch")
from eexp.training.recipe import Finetune  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def invoke(args: list) -> object:
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert "Traceback" not in result.output
    return result


@pytest.fixture(scope="module")
def il(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("ckpt-data")
    expert, il = d / "expert.jsonl", d / "il.jsonl"
    assert invoke(["expert", "--env", "shop", "-n", "3", "-o", expert, "-q"]).exit_code == 0
    assert invoke(["imitation-data", expert, "-o", il, "-q"]).exit_code == 0
    return il


def finetune_args(il, model, out, *extra) -> list:
    return [
        "finetune",
        il,
        "--model",
        model,
        "-o",
        out,
        "-q",
        "--max-steps",
        "3",
        "--save-every",
        "2",
        "--batch-size",
        "4",
        "--max-length",
        "512",
        *extra,
    ]


@pytest.fixture
def killed(il, tiny_checkpoint, tmp_path, monkeypatch):
    """A run stopped after its checkpoint at step 2, before its final save: its folder."""
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        m.setattr(Finetune, "finish", lambda self: None)
        result = invoke(finetune_args(il, tiny_checkpoint, out))
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-2"]
    return out


def error(result) -> str:
    """The run's one `Error:` line, the last of stderr (the lines before it say what the run loaded)."""
    assert result.exit_code == 1, result.output
    lines = result.stderr.splitlines()
    assert [line for line in lines if line.startswith("Error:")] == lines[-1:], result.stderr
    return lines[-1]


def listing(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in folder.rglob("*") if p.is_file()}


def resume_refused(il, model, out, file: Path, what: str) -> None:
    before = listing(out)
    result = invoke(finetune_args(il, model, out, "--resume"))
    ckpt = out / "checkpoints" / "step-2"
    assert error(result) == (
        f"Error: {file}: {what}; the checkpoint {ckpt} is damaged: move it aside (or delete "
        f"it), and --resume starts the run over"
    )
    assert listing(out) == before  # nothing deleted, nothing written


def test_a_truncated_weights_file_is_one_line(il, tiny_checkpoint, killed):
    weights = killed / "checkpoints" / "step-2" / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:20])
    before = listing(killed)
    result = invoke(finetune_args(il, tiny_checkpoint, killed, "--resume"))
    line = error(result)
    assert line.startswith(f"Error: {weights}: cannot be read (") and "is damaged: move it aside" in line
    assert listing(killed) == before


def test_a_missing_optimizer_file_is_one_line(il, tiny_checkpoint, killed):
    optimizer = killed / "checkpoints" / "step-2" / "optimizer.pt"
    optimizer.unlink()
    resume_refused(il, tiny_checkpoint, killed, optimizer, "missing")


def test_a_state_file_cut_short_is_one_line(il, tiny_checkpoint, killed):
    state = killed / "checkpoints" / "step-2" / "state.json"
    state.write_bytes(state.read_bytes()[:25])
    before = listing(killed)
    result = invoke(finetune_args(il, tiny_checkpoint, killed, "--resume"))
    line = error(result)
    assert line.startswith(f"Error: {state}: not valid JSON (") and line.endswith("--resume starts the run over")
    assert listing(killed) == before


def test_a_damaged_checkpoint_points_to_the_one_before_it(il, tiny_checkpoint, tmp_path, monkeypatch):
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        m.setattr(Finetune, "finish", lambda self: None)
        assert (
            invoke(finetune_args(il, tiny_checkpoint, out, "--save-every", "1", "--keep-checkpoints", "2")).exit_code
            == 0
        )
    rng = out / "checkpoints" / "step-2" / "rng.pt"
    rng.write_bytes(rng.read_bytes()[:10])
    result = invoke(finetune_args(il, tiny_checkpoint, out, "--save-every", "1", "--keep-checkpoints", "2", "--resume"))
    line = error(result)
    assert line.startswith(f"Error: {rng}: cannot be read (")
    assert line.endswith(f"--resume continues from {out / 'checkpoints' / 'step-1'}")


def test_resume_under_another_spelling_of_the_paths_and_from_a_moved_folder(
    il, tiny_checkpoint, tiny_llama_checkpoint, tmp_path, monkeypatch
):
    w = tmp_path / "W"
    w.mkdir()
    shutil.copytree(tiny_checkpoint, w / "base")
    shutil.copy(il, w / "il.jsonl")
    monkeypatch.setattr(Finetune, "finish", lambda self: None)  # every run here stops before its final save
    monkeypatch.chdir(w)
    assert invoke(finetune_args("il.jsonl", "base", "ft")).exit_code == 0
    monkeypatch.chdir(tmp_path)
    result = invoke(finetune_args("W/il.jsonl", "W/base", "W/ft", "--resume"))
    assert result.exit_code == 0, result.output
    assert "resumed from W/ft/checkpoints/step-2 (step 2 of 3)" in result.stderr

    shutil.move(w, tmp_path / "moved")  # the whole run folder, its model and data with it
    result = invoke(finetune_args("moved/il.jsonl", "moved/base", "moved/ft", "--resume"))
    assert result.exit_code == 0, result.output
    assert "resumed from moved/ft/checkpoints/step-2" in result.stderr

    shutil.rmtree(tmp_path / "moved" / "base")  # another model where the first one was: another run
    shutil.copytree(tiny_llama_checkpoint, tmp_path / "moved" / "base")
    result = invoke(finetune_args("moved/il.jsonl", "moved/base", "moved/ft", "--resume"))
    assert "options differ from that run's: model ('base' -> 'moved/base')" in error(result)
