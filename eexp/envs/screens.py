"""A look at what the agent saw: a picture of each state beside the text the model read (`eval --screenshots DIR`).

For an environment with a `screenshot()` method (PNG bytes of the current state; `miniwob` has one), `save_step`
writes `DIR/<episode id>/<step>.png` and, beside it, `<step>.txt`: the observation and, when given, the prompt the
model read in that state, so a person can check that the two agree. Step 0 is the state after reset(); step i the
state after the i-th action. Files are written to a temporary name and renamed.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from eexp.io import write_atomic

UNSAFE = re.compile(r"[^A-Za-z0-9._~#-]+")


def can_screenshot(env: Any) -> bool:
    return callable(getattr(env, "screenshot", None))


def episode_dir(directory: str | os.PathLike, episode_id: str) -> Path:
    """The folder of one episode: its id with every character a file name should not hold replaced by '_'."""
    return Path(directory) / (UNSAFE.sub("_", episode_id) or "_")


def save_step(
    env: Any, directory: str | os.PathLike, episode_id: str, step: int, observation: str, prompt: str | None = None
) -> Path:
    """Write the picture of the env's current state and the text beside it; returns the PNG's path."""
    folder = episode_dir(directory, episode_id)
    folder.mkdir(parents=True, exist_ok=True)
    png = folder / f"{step:03d}.png"
    write_atomic(str(png), env.screenshot())
    text = f"# observation\n{observation}\n"
    if prompt is not None:
        text += f"\n# what the model read\n{prompt}\n"
    write_atomic(str(folder / f"{step:03d}.txt"), text.encode())
    return png
