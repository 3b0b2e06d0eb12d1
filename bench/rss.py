"""Peak RSS that belongs to one process alone.

On Linux a child's ru_maxrss (getrusage, wait4) starts from its parent's RSS at the fork: exec records the old memory
map's high-water mark. A bench that has loaded a model and then starts the process it measures would report the
bench's own memory as the child's. These read what the process itself touched since its exec instead."""

from __future__ import annotations

import os
import re
import resource
import shutil
import subprocess
import tempfile
import time


def self_peak_mb() -> float:
    """This process's peak RSS since its exec (VmHWM), in MB of 2**20 bytes; ru_maxrss where /proc is missing."""
    try:
        with open("/proc/self/status") as f:
            return int(re.search(r"VmHWM:\s+(\d+)", f.read()).group(1)) / 1024
    except (OSError, AttributeError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_measured(cmd: list[str], stdin_path=None) -> tuple[float, float, int]:
    """(wall seconds, peak RSS MB, exit status) of one command, output discarded. The RSS comes from GNU time
    (/usr/bin/time), which is small, so the command inherits only its few MB; without it, ru_maxrss of the child,
    which includes this process's RSS at the fork (see above)."""
    gnu_time = shutil.which("time", path="/usr/bin:/bin")
    with tempfile.NamedTemporaryFile("r") as out, open(stdin_path or os.devnull, "rb") as stdin:
        wrapped = [gnu_time, "-f", "%M", "-o", out.name, *cmd] if gnu_time else cmd
        start = time.perf_counter()
        proc = subprocess.Popen(wrapped, stdin=stdin, stdout=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        rss = usage.ru_maxrss / 1024
        if gnu_time:
            lines = [x for x in out.read().split() if x.isdigit()]
            rss = int(lines[-1]) / 1024 if lines else rss
    return seconds, rss, os.waitstatus_to_exitcode(status)
