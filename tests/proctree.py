"""subprocess.run for a command that starts a tree of processes (make and its recipes, a shell script), such that a
timeout leaves none of them behind.

subprocess.run kills only the process it started when its timeout passes: a recipe test that timed out killed make
and left make's fine-tune and reflect processes running for minutes, holding the cores the next tests and runs were
timed on. Here the command runs in a session of its own, and on a timeout (or an interrupt) the whole process group
is killed before the exception goes on. A process that starts a session of its own (a server eexp starts that way)
is its own parent's to stop, as without a timeout.
"""

from __future__ import annotations

import os
import signal
import subprocess


def run_tree(args, *, timeout: float, capture_output: bool = False, **kwargs) -> subprocess.CompletedProcess:
    """subprocess.run(args, timeout=..., capture_output=..., **kwargs), the command's process group killed on a
    timeout."""
    if capture_output:
        kwargs["stdout"] = kwargs["stderr"] = subprocess.PIPE
    with subprocess.Popen(args, start_new_session=True, **kwargs) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except BaseException:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise
    return subprocess.CompletedProcess(args, proc.returncode, out, err)
