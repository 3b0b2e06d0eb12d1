"""llama.cpp's own converters, matched to the llama.cpp that eexp runs.

`eexp export` converts with llama.cpp's `convert_hf_to_gguf.py` (its `conversion/` package) and
`convert_lora_to_gguf.py`, taken from the source distribution (sdist) of the llama-cpp-python that is installed: the
same llama.cpp commit that llama-cpp-python compiled, so the converter writes what that llama.cpp reads. The sdist also
holds llama.cpp's `gguf-py`, the `gguf` package that converter is written against (newer than PyPI's gguf of the
same version number); it is installed as the `gguf` distribution, replacing PyPI's, so that one distribution owns
the `gguf` module and transformers (`import-model`) and the converter use the same one.

    python -m eexp.models.llama_converter              # ./install.sh runs this
    python -m eexp.models.llama_converter --sdist FILE  # from a llama-cpp-python sdist already at hand

Installing fetches that sdist from PyPI (or pip's cache), so it is a step a person asks for (`./install.sh` runs it),
never one `eexp export` takes on its own: nothing eexp runs reaches outside the machine. An export without the
converter stops with one line that gives the command (`converter_dir`).

The files go to `<sys.prefix>/share/eexp/llama.cpp-<version>/` (the virtual environment of that llama-cpp-python),
or, where that cannot be written (a system Python), to eexp's cache (`$EEXP_CACHE/llama.cpp/<version>-<environment
hash>/`), with `INSTALLED.json` written last. `converter_dir()` finds them for export, or says how to install them.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX: no lock (_locked)
    fcntl = None

from eexp.cache import cache_root
from eexp.errors import ConverterMissing, ModelError

LLAMA_DIST = "llama-cpp-python"
# what is taken from the sdist's vendor/llama.cpp/
MEMBERS = ("convert_hf_to_gguf.py", "convert_lora_to_gguf.py", "conversion", "gguf-py", "LICENSE")
MARKER = "INSTALLED.json"
INSTALL_HINT = "run `python -m eexp.models.llama_converter` in eexp's environment (./install.sh does)"


def llama_cpp_version() -> str | None:
    """The installed llama-cpp-python's version, read without importing it; None when it is not installed."""
    try:
        return importlib.metadata.version(LLAMA_DIST)
    except importlib.metadata.PackageNotFoundError:
        return None


def _prefix_dir(version: str) -> Path:
    return Path(sys.prefix) / "share" / "eexp" / f"llama.cpp-{version}"


def _cache_dir(version: str) -> Path:
    """The folder in eexp's cache, one per environment (the converter goes with that environment's gguf package)."""
    env = hashlib.sha256(os.path.realpath(sys.prefix).encode()).hexdigest()[:12]
    return cache_root() / "llama.cpp" / f"{version}-{env}"


def _writable(folder: Path) -> bool:
    """Whether `folder` can be made and written (the nearest existing parent decides)."""
    while not folder.exists():
        if folder.parent == folder:
            return False
        folder = folder.parent
    return folder.is_dir() and os.access(folder, os.W_OK | os.X_OK)


def install_dir(version: str) -> Path:
    """Where the converter of `version` is, or goes: the environment's share/eexp, else eexp's cache."""
    prefix = _prefix_dir(version)
    if (prefix / MARKER).is_file() or _writable(prefix):
        return prefix
    return _cache_dir(version)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def gguf_module_file() -> Path | None:
    """gguf/constants.py of the gguf distribution that is installed (without importing gguf)."""
    try:
        dist = importlib.metadata.distribution("gguf")
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in dist.files or []:
        if str(file).replace("\\", "/") == "gguf/constants.py":
            return Path(dist.locate_file(file))
    return None


def converter_dir() -> Path:
    """The folder holding llama.cpp's converters for the installed llama-cpp-python. ModelError when they are not
    installed, or when the installed gguf package is not the one of that llama.cpp."""
    version = llama_cpp_version()
    if version is None:
        raise ModelError(
            "eexp export needs llama-cpp-python and llama.cpp's converter: pip install 'eexp[gguf]', "
            f"then {INSTALL_HINT}"
        )
    folder = install_dir(version)
    try:
        marker = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        raise ConverterMissing(
            f"llama.cpp's converter for llama-cpp-python {version} is not installed "
            f"(no {folder / MARKER}): {INSTALL_HINT}"
        ) from None
    installed = gguf_module_file()
    if installed is None or not installed.is_file() or _sha256(installed) != marker.get("gguf_constants_sha256"):
        raise ModelError(
            f"the installed gguf package is not llama.cpp's gguf-py from llama-cpp-python {version} "
            f"(replaced or upgraded since?): {INSTALL_HINT}"
        )
    return folder


def _download_sdist(version: str, into: Path) -> Path:
    """The llama-cpp-python sdist of `version`, with pip (from pip's cache when it built that version)."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "--disable-pip-version-check",
        "download",
        "--no-deps",
        "--no-binary",
        ":all:",
        f"{LLAMA_DIST}=={version}",
        "-d",
        str(into),
    ]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    found = sorted(into.glob("llama_cpp_python-*.tar.gz"))
    if proc.returncode != 0 or not found:
        raise ModelError(f"cannot download the llama-cpp-python {version} sdist with pip:\n{proc.stdout[-2000:]}")
    return found[0]


def _extract(sdist: Path, version: str, into: Path) -> None:
    """vendor/llama.cpp/{MEMBERS} of the sdist into `into` (regular files and folders only)."""
    prefix = f"llama_cpp_python-{version}/vendor/llama.cpp/"
    wanted = tuple(prefix + m for m in MEMBERS)
    try:
        with tarfile.open(sdist, "r:gz") as tar:
            members = [
                m
                for m in tar.getmembers()
                if (m.isfile() or m.isdir()) and any(m.name == w or m.name.startswith(w + "/") for w in wanted)
            ]
            if not any(m.name == prefix + "convert_hf_to_gguf.py" for m in members):
                raise ModelError(f"{sdist}: no {prefix}convert_hf_to_gguf.py (not a llama-cpp-python {version} sdist)")
            for m in members:
                m.name = m.name[len(prefix) :]
            safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}  # Python >= 3.10.12
            tar.extractall(into, members=members, **safe)
    except (OSError, tarfile.TarError) as e:
        raise ModelError(f"{sdist}: cannot read ({e})") from None


def _gguf_py_version(folder: Path) -> str:
    """The version gguf-py's pyproject.toml declares."""
    found = re.search(r'^version\s*=\s*"([^"]+)"', (folder / "pyproject.toml").read_text(), re.M)
    if not found:
        raise ModelError(f"{folder / 'pyproject.toml'}: no version")
    return found.group(1)


def install(sdist: str | os.PathLike | None = None, echo=print) -> Path:
    """Install llama.cpp's converters and its gguf package for the installed llama-cpp-python (a no-op when done)."""
    version = llama_cpp_version()
    if version is None:
        raise ModelError("llama-cpp-python is not installed: pip install 'eexp[gguf]' first")
    target = install_dir(version)
    try:
        converter_dir()
        echo(f"llama.cpp's converter for llama-cpp-python {version} is installed ({target})")
        return target
    except ModelError:
        pass
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ModelError(f"cannot install llama.cpp's converter in {target.parent} ({e.strerror})") from None
    with _locked(target.parent / f".{target.name}.lock"):
        try:  # another eexp may have installed it while this one waited
            converter_dir()
            return target
        except ModelError:
            pass
        _install(version, target, sdist, echo)
    echo(f"installed llama.cpp's converter for llama-cpp-python {version} in {target}")
    return target


@contextlib.contextmanager
def _locked(path: Path):
    """One installer at a time per folder (two exports started at once install once)."""
    if fcntl is None:  # not POSIX: no lock
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _install(version: str, target: Path, sdist, echo) -> None:
    with tempfile.TemporaryDirectory(prefix=f".{target.name}.", dir=target.parent) as tmp:
        tmp = Path(tmp)
        src = Path(sdist) if sdist is not None else _download_sdist(version, tmp / "sdist")
        staged = tmp / "llama.cpp"
        _extract(src, version, staged)
        echo(f"installing llama.cpp's gguf-py (from the llama-cpp-python {version} sdist) as the gguf package")
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "--disable-pip-version-check",
                "install",
                "-q",
                "--no-deps",
                "--force-reinstall",
                str(staged / "gguf-py"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        if proc.returncode != 0:
            raise ModelError(f"cannot install {staged / 'gguf-py'} with pip:\n{proc.stdout[-2000:]}")
        importlib.invalidate_caches()
        expected = _sha256(staged / "gguf-py" / "gguf" / "constants.py")
        installed = gguf_module_file()
        if installed is None or _sha256(installed) != expected:
            raise ModelError("pip installed gguf-py, but another gguf package is still the one found")
        (staged / MARKER).write_text(
            json.dumps(
                {
                    "llama_cpp_python": version,
                    "sdist": src.name,
                    "sdist_sha256": _sha256(src),
                    "gguf_version": _gguf_py_version(staged / "gguf-py"),
                    "gguf_constants_sha256": expected,
                },
                indent=1,
            )
            + "\n"
        )
        # installed now; a copy beside the converter would be a second gguf (conversion/ puts ../gguf-py first on
        # sys.path unless NO_LOCAL_GGUF is set)
        shutil.rmtree(staged / "gguf-py")
        if target.exists():
            shutil.rmtree(target)
        os.replace(staged, target)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m eexp.models.llama_converter",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--sdist",
        metavar="FILE",
        help="a llama_cpp_python-VERSION.tar.gz of the installed version (default: pip downloads it)",
    )
    args = parser.parse_args(argv)
    try:
        install(args.sdist, echo=lambda msg: print(f"eexp: {msg}", file=sys.stderr))
    except ModelError as e:
        print(f"Error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
