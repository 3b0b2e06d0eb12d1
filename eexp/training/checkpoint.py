"""Resumable checkpoints: `OUT/checkpoints/step-N` holds what decides the next update, written whole or not at all.

A checkpoint is `weights.safetensors` (the trained weights: all of them, or the LoRA adapter), `optimizer.pt`,
`scheduler.pt` and `rng.pt` (written by eexp itself and read back with `torch.load(weights_only=True)`, which refuses
arbitrary pickled objects) and `state.json` (phase, step, best validation loss, the run's fingerprint). It is written
into a temporary directory beside its target and renamed into place, so a save that fails (disk full, killed) leaves
the previous checkpoint as it was. The batch order is a pure function of (seed, phase, epoch), so with these files a
resumed run repeats an uninterrupted run's losses exactly.

Reading one back, a file that is missing or damaged (cut short, not what eexp wrote) is one TrainingError naming the
file and what to do; nothing is deleted. `run_folder` holds a run's output folder (locked against a second run, not
left behind empty by a run that fails before writing into it); `fingerprint` and `check_fingerprint` are what
--resume must find unchanged, paths compared by what they point to.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import pickle
import re
import shutil
import stat

import orjson
import safetensors.torch  # called as safetensors.torch.save_file: a test puts a failing writer (full disk) there
import torch
from safetensors import SafetensorError

from eexp.errors import TrainingError, WriteError, first_line
from eexp.io import lock_output, unlock_output, write_atomic

# What reading a damaged torch.save file raises: a zip cut short (RuntimeError "failed finding central directory"),
# a pickle cut short (EOFError, UnpicklingError), something that is not one (weights_only refuses it: UnpicklingError).
TORCH_LOAD_ERRORS = (OSError, RuntimeError, EOFError, pickle.UnpicklingError, ValueError, KeyError, IndexError)
# The keys a checkpoint's state.json must hold, to be a checkpoint's state at all (--resume compares the fingerprint).
STATE_KEYS = ("phase", "phase_step", "global_step")


def why(e: BaseException) -> str:
    """Why a write failed, in words: "the disk is full", or the system's reason. safetensors raises its own error
    type, whose message carries the errno (`I/O error: No space left on device (os error 28)`)."""
    code = getattr(e, "errno", None)
    if code is None:
        found = re.search(r"(?:os error|code:) (\d+)", str(e))
        code = int(found.group(1)) if found else None
    if code == errno.ENOSPC:
        return "the disk is full"
    return os.strerror(code) if code else first_line(e)


def checkpoints(root: str) -> list[str]:
    """The step-N checkpoints under `root`, oldest first."""
    if not os.path.isdir(root):
        return []
    steps = sorted(
        int(d.split("-")[1]) for d in os.listdir(root) if d.startswith("step-") and d.split("-")[1].isdigit()
    )
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
        raise TrainingError(
            f"cannot save the checkpoint {final} (step {state['global_step']}): {why(e)}"
            f"{kept}. Free space and run again with --resume"
        ) from None


def prune(root: str, keep: int) -> None:
    """Delete all but the newest `keep` step-N checkpoints."""
    for old in checkpoints(root)[: -max(keep, 1)]:
        shutil.rmtree(old, ignore_errors=True)


def damaged(file: str, what: str) -> TrainingError:
    """`FILE: what is wrong with it`, then what to do: the checkpoint that holds it is damaged (eexp writes each one
    whole, through a temporary folder, so something else cut or removed it). Continue from the one before it, or
    start over; eexp itself deletes nothing."""
    ckpt = os.path.dirname(file)
    earlier = [c for c in checkpoints(os.path.dirname(ckpt)) if c != ckpt and _step(c) < _step(ckpt)]
    then = f"continues from {earlier[-1]}" if earlier else "starts the run over"
    return TrainingError(
        f"{file}: {what}; the checkpoint {ckpt} is damaged: move it aside (or delete it), and --resume {then}"
    )


def _step(ckpt: str) -> int:
    tail = os.path.basename(ckpt).split("-")[-1]
    return int(tail) if tail.isdigit() else -1


def read_state(path: str) -> dict:
    file = os.path.join(path, "state.json")
    try:
        with open(file, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise damaged(file, "missing") from None
    except OSError as e:
        raise damaged(file, f"cannot be read ({e.strerror})") from None
    try:
        state = orjson.loads(data)
    except orjson.JSONDecodeError as e:
        raise damaged(file, f"not valid JSON ({e})") from None
    if not isinstance(state, dict) or any(k not in state for k in STATE_KEYS):
        raise damaged(file, f"not a checkpoint's state (it lacks {', '.join(STATE_KEYS)})")
    return state


def load_weights(path: str, model, device) -> None:
    """The checkpoint's weights into `model`; every trainable tensor must be there (else it is another run's)."""
    file = os.path.join(path, "weights.safetensors")
    try:
        weights = safetensors.torch.load_file(file, device=str(device))
    except FileNotFoundError:
        raise damaged(file, "missing") from None
    except (SafetensorError, OSError, ValueError) as e:  # cut short: "incomplete metadata", "buffer too small"
        raise damaged(file, f"cannot be read ({why(e)})") from None
    missing = {n for n, p in model.named_parameters() if p.requires_grad} - set(weights)
    if missing:
        raise TrainingError(
            f"{path}: the checkpoint lacks {len(missing)} trained tensor(s) "
            f"(e.g. {sorted(missing)[0]}): not a checkpoint of this run"
        )
    model.load_state_dict(weights, strict=False)


def _torch_file(path: str, name: str, **kwargs):
    """One of the checkpoint's torch.save files, read back with weights_only=True (plain tensors and containers
    only, never arbitrary pickled objects); a missing or damaged one is `damaged`."""
    file = os.path.join(path, name)
    try:
        return torch.load(file, weights_only=True, **kwargs)
    except FileNotFoundError:
        raise damaged(file, "missing") from None
    except TORCH_LOAD_ERRORS as e:
        raise damaged(file, f"cannot be read ({why(e)})") from None


def load_optimizer(path: str, optimizer, scheduler, device) -> None:
    """Optimizer, scheduler and RNG state as they were saved; all three files are read before any is applied."""
    saved_optimizer = _torch_file(path, "optimizer.pt", map_location=device)
    saved_scheduler = _torch_file(path, "scheduler.pt")
    rng = _torch_file(path, "rng.pt")
    optimizer.load_state_dict(saved_optimizer)
    scheduler.load_state_dict(saved_scheduler)
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def is_main_process() -> bool:
    """Whether this is the main process of the run (rank 0 of `accelerate launch` or torchrun, which set RANK), known
    before the trainer starts its Accelerator."""
    try:
        return int(os.environ.get("RANK") or 0) == 0
    except ValueError:
        return True


@contextlib.contextmanager
def run_folder(path: str, main: bool = True):
    """A training run's output folder, held while the run lasts (`with run_folder(OUT): setup, train, finish`): locked
    with eexp.io.lock_output, so a second run into it (a second --resume) is refused at start naming this one's pid;
    and made here when missing, so that a run that then fails at its start (a broken input line, a wrong --model)
    removes it again while it is still empty: a refusal leaves no folder behind, a run that stopped mid-way keeps what
    it wrote. Only the main process (`main`) of a multi-process run holds it."""
    made: list[str] = []
    key = None
    if main:
        if not os.path.lexists(path):
            missing, up = [], os.path.abspath(path)
            while not os.path.lexists(up):
                missing.append(up)
                up = os.path.dirname(up)
            try:
                os.makedirs(path)
                made = missing  # deepest first
            except OSError:
                pass  # the run's own check says why (a read-only folder)
        key = lock_output(path, folder=True)
    try:
        yield
    except BaseException:
        for folder in made:
            try:
                os.rmdir(folder)  # only while empty: never what the run wrote
            except OSError:
                break
        raise
    finally:
        unlock_output(key)


# Options that are not compared: where the checkpoint was found (the run's folder, wherever it is now).
UNCOMPARED = {"output"}
# The options of finetune and rl that name files or folders, compared by what they point to (another option's value
# is compared as written, even where a file of that name happens to exist).
PATH_OPTIONS = {"model", "adapter", "train_files", "val", "warmup_data", "expert", "outcomes"}
# A folder's identity reads its files' names and sizes, and the bytes of the small ones (configs, tokenizers, cards).
SMALL_FILE = 1 << 20
MAX_FILES = 10_000
# A file's identity reads its size and its first and last MiB (a GGUF of several GB is not read through).
SAMPLE = 1 << 20


def fingerprint(options: dict, data: str) -> dict:
    """What --resume must find unchanged: the options that shape the run (`options`, as given), a digest of the
    data it reads (`data`), and what each option that names an existing file or folder points to (`paths`: its real
    path and its content's identity), so that the same run resumed under another spelling of its paths (`base` in
    W, or `W/base`) or with its folder moved is the same run."""
    paths = {}
    for name, value in options.items():
        values = value if isinstance(value, list) else [value]
        if name not in PATH_OPTIONS or not values or not all(isinstance(v, str) and v for v in values):
            continue
        if any(os.path.exists(v) for v in values):
            paths[name] = [_identity(v) for v in values]
    return {"options": options, "data": data, "paths": paths}


def _identity(path: str) -> dict:
    if not os.path.exists(path):
        return {"missing": path}
    return {"real": os.path.realpath(path), "content": _content(path)}


def _content(path: str) -> str | None:
    """A digest of what a file or folder holds (None where it cannot be read, or a folder is too large to list)."""
    digest = hashlib.blake2b(digest_size=16)
    try:
        if os.path.isdir(path):
            files = []
            for root, dirs, names in os.walk(path):
                dirs.sort()
                files += [os.path.join(root, n) for n in sorted(names)]
                if len(files) > MAX_FILES:
                    return None
            for file in files:
                st = os.stat(file)
                if not stat.S_ISREG(st.st_mode):
                    continue
                digest.update(f"{os.path.relpath(file, path)}\0{st.st_size}\0".encode())
                if st.st_size <= SMALL_FILE:
                    with open(file, "rb") as f:
                        digest.update(f.read())
        else:
            size = os.path.getsize(path)
            digest.update(f"{size}\0".encode())
            with open(path, "rb") as f:
                digest.update(f.read(SAMPLE))
                if size > 2 * SAMPLE:
                    f.seek(size - SAMPLE)
                digest.update(f.read())
    except OSError:
        return None
    return digest.hexdigest()


def _same_place(before: list, after: list) -> bool:
    """Whether two lists of identities name the same things, one by one: the same real path, or the same content."""
    if len(before) != len(after):
        return False
    for b, a in zip(before, after):
        if not isinstance(b, dict) or "missing" in a or "missing" in b:
            if b != a:
                return False
            continue
        if b.get("real") != a.get("real") and (b.get("content") is None or b.get("content") != a.get("content")):
            return False
    return True


def check_fingerprint(saved: dict, now: dict, path: str) -> None:
    """--resume continues the same run: the same data and the options that shape the loss curve. An option that
    names files or folders is the same when it names the same ones (`fingerprint`'s paths), however spelled; a
    checkpoint written before eexp recorded paths compares them as written."""
    if saved.get("data") and saved["data"] != now["data"]:
        raise TrainingError(f"cannot resume from {path}: the training data differ from that run's")
    before, after = saved.get("options", {}), now["options"]
    saved_paths, now_paths = saved.get("paths"), now.get("paths") or {}

    def differs(k: str) -> bool:
        if k in UNCOMPARED:
            return False
        if saved_paths is not None and (k in saved_paths or k in now_paths):
            return not _same_place(saved_paths.get(k) or [], now_paths.get(k) or [])
        return before.get(k) != after.get(k)

    changed = sorted(k for k in set(before) | set(after) if differs(k))
    if changed:
        raise TrainingError(
            f"cannot resume from {path}: options differ from that run's: "
            + ", ".join(f"{k} ({before.get(k)!r} -> {after.get(k)!r})" for k in changed)
        )


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
