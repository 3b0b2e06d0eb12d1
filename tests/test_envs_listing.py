"""`eexp envs` says which environments are not installed here (their packages are extras: alfworld and tau2 are not
in `all`) and the exact command that installs each, instead of listing them as available."""

from __future__ import annotations

import sys

import orjson

from eexp.cli import cli
from eexp.envs import base


def test_an_environment_whose_package_is_missing_is_listed_as_not_installed_with_its_command(runner, monkeypatch):
    monkeypatch.setitem(base.NEEDS, "tau2", (("no_such_module_for_eexp",), "tau2"))
    monkeypatch.setitem(base.NEEDS, "bfcl", (("no_such_module_for_eexp",), None))
    result = runner.invoke(cli, ["envs"])
    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: line for line in result.stdout.splitlines()[1:]}
    pip = f"{sys.executable} -m pip install"
    assert "not installed (no module no_such_module_for_eexp): " + pip in lines["tau2"]
    # eexp from where it was installed: this checkout in editable mode (install.sh), with the extra
    assert lines["tau2"].endswith("[tau2]'") and "-e '" in lines["tau2"]
    assert lines["bfcl"].endswith(f"{pip} --no-deps 'bfcl-eval>=2025' mpmath")
    assert "not installed" not in lines["shop"]  # eexp's own worlds need nothing more
    rows = {r["name"]: r for r in map(orjson.loads, runner.invoke(cli, ["envs", "--json"]).stdout.splitlines())}
    assert (rows["tau2"]["available"], rows["tau2"]["installed"], rows["tau2"]["missing"]) == (
        False,
        False,
        ["no_such_module_for_eexp"],
    )
    assert rows["tau2"]["install"] in lines["tau2"]
    # described by name: one line naming the command, exit 1
    described = runner.invoke(cli, ["envs", "tau2"])
    assert described.exit_code == 1
    assert described.stderr.strip().startswith("Error: tau2: not installed (no module no_such_module_for_eexp): " + pip)
