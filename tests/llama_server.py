"""llama.cpp's own HTTP server (`llama-server`: parallel slots, continuous batching), for the tests and bench/.

A test and benchmark tool, not a dependency of eexp: users run whatever server they like (vLLM, SGLang, llama.cpp)
and point `--policy http://...` at it. It is built from the llama.cpp that the pinned llama-cpp-python sdist
vendors (MIT), only the `llama-server` target, without its web UI (whose build would fetch assets), and kept by
version under .venv/opt/, so a machine compiles it once:

    python tests/llama_server.py build        # about 10 minutes on 2 quiet cores; prints the binary's path
    python tests/llama_server.py path         # the binary, or exit 1 if it is not built
    python tests/llama_server.py run MODEL.gguf --parallel 8 -- eexp eval --concurrency 8 ...
                                              # a command with a server on MODEL as its EEXP_POLICY (recipes/)

`EEXP_LLAMA_SERVER=/path/to/llama-server` uses a binary of your own instead. `Server(model, parallel=N)` starts
one on 127.0.0.1 and a free port, waits until it answers, and stops it on close.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from pathlib import Path

# The llama.cpp that llama-cpp-python 0.3.36 vendors (ggml 0.25.3): the same code eexp's in-process GGUF policy runs.
SOURCE = "llama-cpp-python==0.3.36"
ROOT = Path(__file__).resolve().parent.parent
DEST = ROOT / ".venv" / "opt" / f"llama-server-{SOURCE.split('==')[1]}"
CMAKE_FLAGS = [
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DLLAMA_BUILD_SERVER=ON",
    "-DLLAMA_BUILD_TOOLS=ON",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_APP=OFF",
    # no web UI: the prebuilt one is fetched from a hub at build time, the other needs npm
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_CURL=OFF",
]


def binary() -> Path | None:
    """The llama-server to use: $EEXP_LLAMA_SERVER, else the one built here, else None."""
    given = os.environ.get("EEXP_LLAMA_SERVER")
    if given:
        return Path(given) if os.access(given, os.X_OK) else None
    built = DEST / "llama-server"
    return built if built.exists() else None


def build(jobs: int | None = None) -> Path:
    """Build llama-server from the pinned sdist (downloaded with pip: PyPI is the one place this machine reaches)."""
    found = binary()
    if found:
        return found
    jobs = jobs or os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="eexp-llama-server-") as tmp:
        tmp = Path(tmp)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--disable-pip-version-check",
                "-q",
                "--no-deps",
                "--no-binary",
                ":all:",
                "-d",
                str(tmp),
                SOURCE,
            ],
            check=True,
        )
        sdist = next(tmp.glob("llama_cpp_python-*.tar.gz"))
        with tarfile.open(sdist) as tar:
            tar.extractall(tmp, filter="data")
        source = next(tmp.glob("llama_cpp_python-*/vendor/llama.cpp"))
        build_dir = tmp / "build"
        log = tmp / "build.log"
        # ggml's CMake compiles through ccache when it is installed (GGML_CCACHE, on by default); with the source's
        # temporary folder as ccache's base, its paths hash the same in every build, so a machine that built this
        # version once (a second clone, CI) compiles it again in about a minute instead of ~10
        env = {**os.environ, "CCACHE_BASEDIR": str(tmp)}
        for step in (
            ["cmake", "-S", str(source), "-B", str(build_dir), *CMAKE_FLAGS],
            ["cmake", "--build", str(build_dir), "--target", "llama-server", "-j", str(jobs)],
        ):
            sys.stderr.write(f"llama-server: {'configuring' if step[1] == '-S' else 'compiling'} (cmake)\n")
            with open(log, "ab") as out:  # the compiler's warnings stay out of the install's output
                done = _run_with_progress(step, out, env)
            if done.returncode:
                sys.stderr.write(log.read_text(errors="replace")[-4000:])
                raise SystemExit(
                    f"llama-server: {' '.join(step[:2])} failed (exit {done.returncode}); its output ends above"
                )
        DEST.mkdir(parents=True, exist_ok=True)
        staged = DEST / "llama-server.tmp"
        shutil.copy2(build_dir / "bin" / "llama-server", staged)
        os.replace(staged, DEST / "llama-server")  # whole or absent, never half a binary
    return DEST / "llama-server"


def _run_with_progress(step: list[str], log, env: dict) -> subprocess.CompletedProcess:
    """Run a cmake step with its output into `log`, and every 10% of a build's `[ 42%]` lines on stderr: the compile
    takes minutes, and a step that prints nothing for them looks hung."""
    proc = subprocess.Popen(step, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    shown = -1
    for line in proc.stdout:
        log.write(line)
        found = re.match(rb"\[\s*(\d+)%\]", line)
        if found and int(found.group(1)) // 10 > shown:
            shown = int(found.group(1)) // 10
            sys.stderr.write(f"llama-server: compiled {int(found.group(1))}%\n")
            sys.stderr.flush()
    return subprocess.CompletedProcess(step, proc.wait())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A llama-server on 127.0.0.1 serving `model` with `parallel` slots (continuous batching), `threads` CPU
    threads (by default $OMP_NUM_THREADS, which a worker of `make test-all` sets to 1, else 2) and `ctx` tokens of
    context per slot; `log` receives its output."""

    def __init__(
        self,
        model: str | Path,
        *,
        parallel: int = 4,
        threads: int | None = None,
        ctx: int = 2048,
        log: str | Path | None = None,
        extra: list[str] = (),
        ready_timeout: float = 180,
    ):
        threads = threads or int(os.environ.get("OMP_NUM_THREADS") or 2)
        exe = binary()
        if exe is None:
            raise FileNotFoundError("llama-server is not built: python tests/llama_server.py build")
        from eexp.policies.gguf_loader import AMX_FLAGS, cpu_flags

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.log_path = Path(log) if log else None
        args = [
            str(exe),
            "-m",
            str(model),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--parallel",
            str(parallel),
            "-c",
            str(ctx * parallel),
            "-t",
            str(threads),
            "--threads-http",
            str(parallel + 2),
            "--seed",
            "1",
            "--no-ui",
            *extra,
        ]
        if cpu_flags() & set(AMX_FLAGS):  # the repacking that crashes quantized models on AMX (gguf_loader.py)
            args.append("--no-repack")
        self._log = open(self.log_path, "wb") if self.log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT)
        self._wait(ready_timeout)

    def _wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama-server exited with {self.proc.returncode}: {self.log()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.3)
        self.close()
        raise RuntimeError(f"llama-server did not become ready in {timeout:.0f} s: {self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:] if self.log_path else "(no log kept)"

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log is not subprocess.DEVNULL:
            self._log.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def run(argv: list[str]) -> int:
    """`run MODEL [--parallel N] [--threads T] [--log FILE] -- COMMAND...`: COMMAND with a server on MODEL, its URL
    in EEXP_POLICY (the default policy of eval, branch and reflect); the server stops when COMMAND ends, whose exit
    status is returned. A SIGTERM (a killed make, a timeout) is passed on to COMMAND, and the server stops after it:
    none is left serving."""
    import argparse

    if "--" not in argv:
        raise SystemExit("usage: llama_server.py run MODEL [--parallel N] [--threads T] [--log FILE] -- COMMAND...")
    cut = argv.index("--")
    ap = argparse.ArgumentParser(prog="llama_server.py run")
    ap.add_argument("model")
    ap.add_argument("--parallel", type=int, default=8)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--ctx", type=int, default=2048, help="context tokens per slot")
    ap.add_argument("--log")
    args = ap.parse_args(argv[:cut])
    with Server(args.model, parallel=args.parallel, threads=args.threads, ctx=args.ctx, log=args.log) as server:
        command = subprocess.Popen(argv[cut + 1 :], env={**os.environ, "EEXP_POLICY": server.url})
        signal.signal(signal.SIGTERM, lambda signum, frame: command.send_signal(signum))
        code = command.wait()
    return 128 - code if code < 0 else code  # killed by signal N: 128 + N, as a shell says it


if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else "build"
    if command == "build":
        print(build())
    elif command == "path":
        found = binary()
        if found is None:
            sys.exit(1)
        print(found)
    elif command == "run":
        sys.exit(run(sys.argv[2:]))
    else:
        sys.exit(f"usage: {sys.argv[0]} build|path|run")
