"""The errors eexp shows a person say what happened: input, usage, output (disk), policy (server) and environment
errors are siblings under EexpError, so code that catches one (the stage runner's "a bad input line") catches that
alone; a missing or empty input file is its own class, not a message to read; one usage error, exit 2."""

from __future__ import annotations

import ast
import errno
import pickle
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from eexp import errors
from eexp.cli import cli
from eexp.errors import EexpError, EmptyFile, EnvError, InputError, MissingFile, PolicyError, UsageProblem, WriteError
from eexp.io import read_records


def test_what_happened_are_siblings_under_eexp_error():
    kinds = [
        InputError,
        UsageProblem,
        WriteError,
        PolicyError,
        EnvError,
        errors.ModelError,
        errors.TrainingError,
        errors.CardError,
        errors.SerializerError,
        errors.HubError,
    ]
    for kind in kinds:
        assert issubclass(kind, EexpError)
        assert not any(issubclass(kind, other) for other in kinds if other is not kind), kind
    assert issubclass(MissingFile, InputError) and issubclass(EmptyFile, InputError)
    assert issubclass(errors.EndpointDown, PolicyError) and issubclass(errors.UserFailed, EnvError)
    assert issubclass(errors.ConverterMissing, errors.ModelError)
    assert [k.exit_code for k in kinds] == [1, 2, 1, 1, 1, 1, 1, 1, 1, 1]


# EexpErrors defined outside eexp/errors.py, each with its reason: the errors of reaching a recorded state, which a
# stage records as a record's `error` (rollout, branch) and which make their message from the observations compared.
DEFINED_ELSEWHERE = {
    "eexp/envs/reach.py": {"ReachError", "StepTimeout", "StateMismatch"},
    "eexp/envs/tau2_env.py": {"UserNotRecorded"},  # a StateMismatch: a replayed user reply that was never recorded
}
ROOT = Path(__file__).resolve().parent.parent


def error_class_names() -> set[str]:
    return {name for name, value in vars(errors).items() if isinstance(value, type) and issubclass(value, EexpError)}


def test_every_error_class_is_defined_in_errors_py():
    """Every subclass of EexpError in eexp/ (read with ast, so modules of optional packages count too) is a class of
    eexp/errors.py, or one of DEFINED_ELSEWHERE."""
    known, found = error_class_names(), {}
    classes = [
        (path.relative_to(ROOT).as_posix(), node)
        for path in sorted((ROOT / "eexp").rglob("*.py"))
        if path.name != "errors.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.ClassDef)
    ]
    grew = True
    while grew:  # a subclass of a subclass counts too
        grew = False
        for rel, node in classes:
            bases = {b.id if isinstance(b, ast.Name) else getattr(b, "attr", None) for b in node.bases}
            if node.name not in found and bases & (known | set(found)):
                found[node.name], grew = rel, True
    elsewhere = {(rel, name) for name, rel in found.items()}
    allowed = {(rel, name) for rel, names in DEFINED_ELSEWHERE.items() for name in names}
    assert elsewhere == allowed, (
        f"defined outside eexp/errors.py: {sorted(elsewhere - allowed)}; "
        f"gone from DEFINED_ELSEWHERE: {sorted(allowed - elsewhere)}"
    )


def test_every_name_of_errors_py_is_imported_from_there_alone():
    """`from eexp.errors import X`, never X from a module that imported it (eexp.io, eexp.policies, eexp.envs.base,
    eexp.training...): in eexp/, tests/, bench/ and the guides' examples."""
    names = {
        name
        for name in vars(errors)
        if not name.startswith("_") and getattr(vars(errors)[name], "__module__", "eexp.errors") == "eexp.errors"
    } - {"annotations"}
    wrong = []
    for path in sorted(path for folder in ("eexp", "tests", "bench") for path in (ROOT / folder).rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.ImportFrom)
                and (node.level or (node.module or "").startswith("eexp"))
                and node.module != "errors"
                and node.module != "eexp.errors"
            ):
                wrong += [
                    f"{rel}:{node.lineno}: {a.name} from {'.' * node.level}{node.module}"
                    for a in node.names
                    if a.name in names
                ]
    for path in sorted((ROOT / "docs" / "guide").glob("*.md")):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            found = re.match(r"\s*from (eexp[\w.]*) import (.*)", line)
            if found and found[1] != "eexp.errors":
                wrong += [
                    f"{path.relative_to(ROOT)}:{number}: {name} from {found[1]}"
                    for name in re.findall(r"\w+", found[2])
                    if name in names
                ]
    assert not wrong, "\n".join(wrong)


def test_a_missing_or_empty_input_file_is_its_own_class_with_the_same_text(tmp_path):
    with pytest.raises(MissingFile) as missing:
        list(read_records([str(tmp_path / "nope.jsonl")]))
    assert str(missing.value) == f"{tmp_path / 'nope.jsonl'}: no such file"
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(EmptyFile) as empty:
        list(read_records([str(tmp_path / "empty.jsonl")]))
    assert str(empty.value) == f"{tmp_path / 'empty.jsonl'}: empty file (no records)"


def test_errors_keep_their_text_across_a_worker_process():
    """A -j worker's error reaches the parent pickled: the same class and text."""
    made = [
        MissingFile("a.jsonl"),
        EmptyFile("b.jsonl"),
        InputError("bad", "c.jsonl", 3),
        WriteError(OSError(errno.ENOSPC, "No space left on device"), "d.jsonl", "; 2 whole records kept"),
        PolicyError("cannot reach the policy endpoint"),
        UsageProblem("give one of them"),
    ]
    for e in made:
        back = pickle.loads(pickle.dumps(e))
        assert type(back) is type(e) and str(back) == str(e)
    assert pickle.loads(pickle.dumps(made[3])).errno == errno.ENOSPC


def test_the_messages_and_exit_codes_a_person_sees_are_unchanged(tmp_path):
    """What were click.ClickExceptions of the CLI (UserError) are EexpErrors now: `Error: message`, exit 1."""
    runner = CliRunner()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x"}\n')
    result = runner.invoke(cli, ["validate", str(bad)])
    assert result.exit_code == 1 and result.stderr.splitlines()[-1] == "Error: 1 invalid record(s)"
    result = runner.invoke(cli, ["doctor", "--policy", str(tmp_path / "m.gguf")])
    assert (
        result.exit_code == 1 and result.stderr.splitlines()[-1] == f"Error: {tmp_path / 'm.gguf'}: no such GGUF file"
    )
    result = runner.invoke(cli, ["eval", "--policy", "oracle", "--env", "shop", "-j", "2", "--concurrency", "2"])
    assert result.exit_code == 2 and "Error: -j 2 runs worker processes and --concurrency 2" in result.stderr


def test_the_docstring_lists_every_error_class():
    for name in error_class_names() - {"EexpError"}:
        assert f"  {name} " in errors.__doc__, name
