"""Resumable checkpoints: `OUT/checkpoints/step-N` holds what decides the next update, written whole or not at all.

A checkpoint is `weights.safetensors` (the trained weights: all of them, or the LoRA adapter), `optimizer.pt`,
`scheduler.pt` and `rng.pt` (written by eexp itself and read back with `torch.load(weights_only=True)`, which refuses
arbitrary pickled objects) and `state.json` (phase, step, best validation loss, the run's fingerprint). It is written
into a temporary directory beside its target and renamed into place, so a save that fails (disk full, killed) leaves
the previous checkpoint as it was. The batch order is a pure function of (seed, phase, epoch), so with these files a
resumed run repeats an uninterrupted run's losses exactly.
"""

from __future__ import annotations

import errno
import os
import re
import shutil

import orjson
import safetensors.torch  # called as safetensors.torch.save_file: a test puts a failing writer (full disk) there
import torch
from safetensors import SafetensorError

from eexp.errors import TrainingError, WriteError
from eexp.io import write_atomic


def why(e: BaseException) -> str:
    """Why a write failed, in words: "the disk is full", or the system's reason. safetensors raises its own error
    type, whose message carries the errno (`I/O error: No space left on device (os error 28)`)."""
    code = getattr(e, "errno", None)
    if code is None:
        found = re.search(r"(?:os error|code:) (\d+)", str(e))
        code = int(found.group(1)) if found else None
    if code == errno.ENOSPC:
        return "the disk is full"
    return os.strerror(code) if code else (str(e).strip().splitlines() or [type(e).__name__])[0]


def checkpoints(root: str) -> list[str]:
    """The step-N checkpoints under `root`, oldest first."""
    if not os.path.isdir(root):
        return []
    steps = sorted(int(d.split("-")[1]) for d in os.listdir(root)
                   if d.startswith("step-") and d.split("-")[1].isdigit())
    return [os.path.join(root, f"step-{s}") for s in steps]


def save(root: str, final: str, weights: dict, state: dict, optimizer=None, scheduler=None) -> None:
    """Write a checkpoint to `final` (under `root`) through a temporary directory; optimizer, scheduler and RNG state
    too when `optimizer` is given. A failure is a TrainingError that names the previous checkpoint, still intact."""
    os.makedirs(root, exist_ok=True)
    tmp = os.path.join(root, f".tmp-{os.path.basename(final)}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        os.makedirs(tmp)
        safetensors.torch.save_file(weights, os.path.join(tmp, "weights.safetensors"))
        if optimizer is not None:
            torch.save(optimizer.state_dict(), os.path.join(tmp, "optimizer.pt"))
            torch.save(scheduler.state_dict(), os.path.join(tmp, "scheduler.pt"))
            rng = {"torch": torch.get_rng_state()}
            if torch.cuda.is_available():
                rng["cuda"] = torch.cuda.get_rng_state_all()
            torch.save(rng, os.path.join(tmp, "rng.pt"))
        write_atomic(os.path.join(tmp, "state.json"), orjson.dumps(state, option=orjson.OPT_INDENT_2) + b"\n")
        old = final + ".old"  # only "best" is ever replaced; step-N directories are new
        shutil.rmtree(old, ignore_errors=True)
        if os.path.exists(final):
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    except (OSError, SafetensorError, WriteError) as e:  # safetensors has its own error for a full disk
        shutil.rmtree(tmp, ignore_errors=True)
        previous = checkpoints(root)
        kept = f"; the previous checkpoint {previous[-1]} is intact" if previous else ""
        raise TrainingError(f"cannot save the checkpoint {final} (step {state['global_step']}): {why(e)}"
                            f"{kept}. Free space and run again with --resume") from None


def prune(root: str, keep: int) -> None:
    """Delete all but the newest `keep` step-N checkpoints."""
    for old in checkpoints(root)[:-max(keep, 1)]:
        shutil.rmtree(old, ignore_errors=True)


def read_state(path: str) -> dict:
    with open(os.path.join(path, "state.json"), "rb") as f:
        return orjson.loads(f.read())


def load_weights(path: str, model, device) -> None:
    """The checkpoint's weights into `model`; every trainable tensor must be there (else it is another run's)."""
    weights = safetensors.torch.load_file(os.path.join(path, "weights.safetensors"), device=str(device))
    missing = {n for n, p in model.named_parameters() if p.requires_grad} - set(weights)
    if missing:
        raise TrainingError(f"{path}: the checkpoint lacks {len(missing)} trained tensor(s) "
                            f"(e.g. {sorted(missing)[0]}): not a checkpoint of this run")
    model.load_state_dict(weights, strict=False)


def load_optimizer(path: str, optimizer, scheduler, device) -> None:
    """Optimizer, scheduler and RNG state as they were saved."""
    # weights_only=True: plain tensors and containers only, never arbitrary pickled objects.
    optimizer.load_state_dict(torch.load(os.path.join(path, "optimizer.pt"), weights_only=True, map_location=device))
    scheduler.load_state_dict(torch.load(os.path.join(path, "scheduler.pt"), weights_only=True))
    rng = torch.load(os.path.join(path, "rng.pt"), weights_only=True)
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def check_fingerprint(saved: dict, now: dict, path: str) -> None:
    """--resume continues the same run: the same data and the options that shape the loss curve."""
    if saved.get("data") and saved["data"] != now["data"]:
        raise TrainingError(f"cannot resume from {path}: the training data differ from that run's")
    before, after = saved.get("options", {}), now["options"]
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    if changed:
        raise TrainingError(f"cannot resume from {path}: options differ from that run's: "
                            + ", ".join(f"{k} ({before.get(k)!r} -> {after.get(k)!r})" for k in changed))


def trim_metrics(metrics_path: str, step: int) -> None:
    """Rows logged after the checkpoint are logged again by the resumed run."""
    if not os.path.exists(metrics_path):
        return
    with open(metrics_path, "rb") as f:
        rows = [line for line in f.read().splitlines(keepends=True) if line.strip()]
    kept = []
    for line in rows:
        try:
            if orjson.loads(line)["step"] <= step:
                kept.append(line)
        except (orjson.JSONDecodeError, KeyError, TypeError):
            continue  # a torn last line from the killed run
    write_atomic(metrics_path, b"".join(kept))
