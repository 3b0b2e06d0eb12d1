"""The front door as a new user meets it (README "Installing"): after ./install.sh `man eexp-COMMAND` finds eexp's
pages, and the steps that take minutes say how far they are instead of printing nothing."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"


@pytest.mark.skipif(shutil.which("man") is None, reason="man is not installed")
@pytest.mark.skipif(Path(sys.prefix).resolve() != VENV.resolve(), reason="not run from the .venv install.sh made")
def test_man_finds_every_page_after_install_sh():
    """pip's editable install puts no man pages anywhere; install.sh links man/*.1 into .venv/share/man/man1, where
    man looks once .venv/bin is on PATH (the README's set-up), with no MANPATH of the user's own."""
    env = {k: v for k, v in os.environ.items() if k != "MANPATH"}
    env["PATH"] = f"{VENV / 'bin'}:/usr/local/bin:/usr/bin:/bin"
    for page in sorted((ROOT / "man").glob("eexp*.1")):
        found = subprocess.run(["man", "-w", page.stem], env=env, capture_output=True, text=True, timeout=60)
        assert found.returncode == 0, f"man {page.stem}: {found.stderr.strip()} (./install.sh links the pages)"
        assert Path(found.stdout.strip()).resolve() == page.resolve()


def test_install_sh_shows_the_progress_of_a_compile():
    """install.sh's progress filter turns a compile's lines (make's `[ 42%]`, ninja's `[120/340]`) into one line
    every 10%, so llama-cpp-python's and llama-server's builds (minutes each) show where they are."""
    ninja = "".join(f"  [{i}/40] Building CXX object ggml.o\n" for i in range(1, 41))
    make = "[  3%] Building C object a.o\nwarning: unused\n[ 17%] Building C object b.o\n[100%] Linking llama\n"
    shown = {}
    for name, lines in (("ninja", ninja), ("make", make)):
        proc = subprocess.run(
            ["bash", "-c", f'eval "$(sed -n "/^progress()/,/^}}/p" install.sh)"; progress {name}'],
            cwd=ROOT,
            input=lines,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0 and proc.stdout == "", proc.stderr
        shown[name] = proc.stderr.splitlines()
    assert shown["ninja"] == [f"install.sh: ninja: compiled {p}%" for p in (2, *range(10, 101, 10))]
    assert shown["make"] == [
        "install.sh: make: compiled 3%",
        "install.sh: make: compiled 17%",
        "install.sh: make: compiled 100%",
    ]
    # and no step that compiles or downloads for minutes sends its output away
    script = (ROOT / "install.sh").read_text()
    assert "llama_server.py build >/dev/null" not in script and "install -v" in script
