"""eexp as a package: `python -m build` makes an sdist and, from it, a wheel; the wheel installs into a fresh virtual
environment outside the repository, and `eexp` works there with its man pages and package data.

Nothing is downloaded: the build runs without isolation (setuptools from this environment), the wheel goes in with
--no-deps --no-index, and the fresh environment sees this one's packages (click, orjson, ...) through a path file,
which puts them after its own site-packages: the eexp it imports is the wheel's, not this checkout."""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import orjson
import pytest

from eexp import __version__

ROOT = Path(__file__).parent.parent


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    """sdist and wheel of this checkout, built from a copy of what a clean clone holds (the build writes into its
    source tree)."""
    pytest.importorskip("build")
    tmp = tmp_path_factory.mktemp("wheel")
    src, out = tmp / "src", tmp / "dist"
    junk = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    shutil.copytree(ROOT / "eexp", src / "eexp", ignore=junk)
    shutil.copytree(ROOT / "man", src / "man")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    proc = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(src)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def venv(dist, tmp_path_factory) -> Path:
    """A fresh virtual environment with the wheel installed in it, and this environment's packages behind it."""
    root = tmp_path_factory.mktemp("venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True, timeout=120)
    python = root / "bin" / "python"
    wheel = next(dist.glob("*.whl"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "--disable-pip-version-check",
            "install",
            "-q",
            "--no-deps",
            "--no-index",
            str(wheel),
        ],
        check=True,
        timeout=300,
    )
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    (Path(purelib) / "eexp_test_deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return root


def run(venv: Path, cwd: Path, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}/usr/bin:/bin"
    return subprocess.run(list(args), cwd=cwd, env=env, input=stdin, capture_output=True, timeout=300)


@pytest.mark.slow  # ~30 s on 2 cores: the build is most of it
def test_sdist_and_wheel_hold_the_package_its_data_and_man_pages(dist):
    wheel, sdist = next(dist.glob("*.whl")), next(dist.glob("*.tar.gz"))
    assert wheel.name == f"eexp-{__version__}-py3-none-any.whl"
    assert sdist.name == f"eexp-{__version__}.tar.gz"
    man_pages = sorted(p.name for p in (ROOT / "man").glob("*.1"))
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        entry_points = z.read(f"eexp-{__version__}.dist-info/entry_points.txt").decode()
    assert {f"eexp-{__version__}.data/data/share/man/man1/{m}" for m in man_pages} <= names
    assert {"eexp/templates/reflect.txt", "eexp/templates/reflect-short.txt", "eexp/cli/__init__.py"} <= names
    assert not any(n.startswith(("tests/", "recipes/", "bench/")) for n in names)
    assert "[eexp.envs]" in entry_points and "shop = eexp.envs.shop:ShopEnv" in entry_points
    assert "[eexp.policies]" in entry_points and "[console_scripts]" in entry_points
    with tarfile.open(sdist) as t:
        held = {n.split("/", 1)[1] for n in t.getnames() if "/" in n}
    assert {f"man/{m}" for m in man_pages} <= held and {"README.md", "pyproject.toml"} <= held


@pytest.mark.slow  # ~20 s more: a venv, the install and a dozen eexp processes
def test_the_wheel_runs_outside_the_repository(venv, tmp_path):
    version = run(venv, tmp_path, "eexp", "--version")
    assert version.returncode == 0 and version.stdout.decode().startswith(f"eexp, version {__version__}\n")
    where = run(
        venv,
        tmp_path,
        "python",
        "-c",
        "import eexp, importlib.resources as r; print(eexp.__file__); "
        "print(r.files('eexp').joinpath('templates/reflect.txt').read_text()[:40])",
    )
    assert where.returncode == 0, where.stderr.decode()
    module, template = where.stdout.decode().splitlines()[:2]
    assert Path(module).is_relative_to(venv) and template  # the wheel's eexp, with its package data
    assert (venv / "share" / "man" / "man1" / "eexp-branch.1").read_text().startswith(".TH")

    overview = run(venv, tmp_path, "eexp")  # `eexp` alone: the commands, by stage of the pipeline
    assert overview.returncode == 0 and b"Collect experience:" in overview.stdout
    envs = run(venv, tmp_path, "eexp", "envs")
    assert envs.returncode == 0, envs.stderr.decode()
    assert {"shop", "tools"} <= {line.split()[0] for line in envs.stdout.decode().splitlines()[1:]}

    # a tiny pipeline, as the README draws it: expert -> branch -> rollout -> IWM and SR data, IL data, eval
    pipeline = (
        "eexp expert --env shop -n 3 -o expert.jsonl && eexp imitation-data expert.jsonl -o il.jsonl && "
        "eexp branch --propose admissible -k 2 expert.jsonl | eexp rollout -o outcomes.jsonl && "
        "eexp world-model-data outcomes.jsonl -o iwm.jsonl && "
        "eexp reflect --reflector grounded outcomes.jsonl -o sr.jsonl && "
        "eexp eval --policy random --env shop --split test -n 2 --max-steps 5 -q -o episodes.jsonl && "
        "eexp validate expert.jsonl il.jsonl outcomes.jsonl iwm.jsonl sr.jsonl episodes.jsonl"
    )
    done = run(venv, tmp_path, "sh", "-ec", pipeline)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    trajectories = [orjson.loads(x) for x in (tmp_path / "expert.jsonl").read_bytes().splitlines()]
    assert len(trajectories) == 3 and all(t["success"] for t in trajectories)
    assert trajectories[0]["meta"]["eexp_version"] == __version__
    for name in ("il", "outcomes", "iwm", "sr"):
        assert (tmp_path / f"{name}.jsonl").read_bytes().count(b"\n") > 0, name
    assert (tmp_path / "episodes.jsonl").read_bytes().count(b"\n") == 2


def test_the_wheel_s_export_says_how_to_install_the_converter_and_fetches_nothing(venv, tmp_path):
    """`pip install eexp` and then `eexp export`: the wheel carries no converter, and export does not fetch one (that
    would reach PyPI): it stops with one line giving the command that installs it (`./install.sh` runs it)."""
    from eexp.models.llama_converter import llama_cpp_version

    version = llama_cpp_version()
    if version is None:
        pytest.skip("llama-cpp-python is not installed here")
    made = run(venv, tmp_path, "eexp", "init-model", "tiny", "-q")
    assert made.returncode == 0, made.stderr.decode()[-3000:]
    export = run(venv, tmp_path, "eexp", "export", "tiny", "-o", "tiny.gguf")
    marker = venv / "share" / "eexp" / f"llama.cpp-{version}" / "INSTALLED.json"
    assert export.returncode == 1
    assert export.stderr.decode() == (
        f"Error: llama.cpp's converter for llama-cpp-python {version} is not installed (no {marker}): run "
        "`python -m eexp.models.llama_converter` in eexp's environment (./install.sh does)\n"
    )
    assert not (tmp_path / "tiny.gguf").exists() and not (venv / "share" / "eexp").exists()


def test_eexp_alone_shows_every_command_once_by_section():
    from click.testing import CliRunner

    from eexp.cli import SECTIONS, cli

    result = CliRunner().invoke(cli, [], prog_name="eexp")
    assert result.exit_code == 0 and result.stdout.startswith("Usage: eexp")
    listed = [
        line.split()[0]
        for line in result.stdout.splitlines()
        if line.startswith("  ") and line.split()[0] in cli.commands
    ]
    assert sorted(listed) == sorted(cli.commands)  # each once, none left out (a new one lands in "Other commands")
    headings = [line[:-1] for line in result.stdout.splitlines() if line.endswith(":") and not line.startswith(" ")]
    assert [h for h in headings if h in SECTIONS] == list(SECTIONS)
    assert listed[:5] == ["envs", "expert", "curate", "branch", "rollout"]  # the pipeline's order, not the alphabet's
    assert "..." not in result.stdout.split("Collect experience:")[1]  # first sentences whole, never cut
    assert result.stdout == CliRunner().invoke(cli, ["--help"], prog_name="eexp").stdout


def test_version_names_python_and_the_packages_that_decide_what_runs():
    from click.testing import CliRunner

    from eexp.cli import VERSION_PACKAGES, cli

    result = CliRunner().invoke(cli, ["--version"])
    first, second = result.stdout.splitlines()
    assert result.exit_code == 0 and first == f"eexp, version {__version__}"
    assert second.startswith(f"python {sys.version.split()[0]} ({sys.executable}); ")
    for name in VERSION_PACKAGES:
        assert f"{name} " in second
