"""The errors eexp shows a person say what happened: input, usage, output (disk), policy (server) and environment
errors are siblings under EexpError, so code that catches one (the stage runner's "a bad input line") catches that
alone; a missing or empty input file is its own class, not a message to read; one usage error, exit 2."""

from __future__ import annotations

import errno
import pickle

import pytest
from click.testing import CliRunner

from eexp import errors
from eexp.cli import cli
from eexp.errors import EexpError, EmptyFile, EnvError, InputError, MissingFile, PolicyError, UsageProblem, WriteError
from eexp.io import read_records


def test_what_happened_are_siblings_under_eexp_error():
    kinds = [InputError, UsageProblem, WriteError, PolicyError, EnvError]
    for kind in kinds:
        assert issubclass(kind, EexpError)
        assert not any(issubclass(kind, other) for other in kinds if other is not kind), kind
    assert issubclass(MissingFile, InputError) and issubclass(EmptyFile, InputError)
    assert [k.exit_code for k in kinds] == [1, 2, 1, 1, 1]


def test_each_class_is_imported_from_where_it_was_and_is_the_same_class():
    import eexp.envs.base
    import eexp.io
    import eexp.policies.base
    import eexp.training
    import eexp.training.config

    assert eexp.io.InputError is InputError and eexp.io.WriteError is WriteError
    assert eexp.policies.base.PolicyError is PolicyError and eexp.envs.base.EnvError is EnvError
    # the one usage error: finetune's is no second class of the same name
    assert eexp.training.UsageProblem is UsageProblem and eexp.training.config.UsageProblem is UsageProblem
    import eexp.cli.options
    assert not hasattr(eexp.cli.options, "UserError")


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
    made = [MissingFile("a.jsonl"), EmptyFile("b.jsonl"), InputError("bad", "c.jsonl", 3),
            WriteError(OSError(errno.ENOSPC, "No space left on device"), "d.jsonl", "; 2 whole records kept"),
            PolicyError("cannot reach the policy endpoint"), UsageProblem("give one of them")]
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
    assert result.exit_code == 1 and result.stderr.splitlines()[-1] == f"Error: {tmp_path / 'm.gguf'}: no such GGUF file"
    result = runner.invoke(cli, ["eval", "--policy", "oracle", "--env", "shop", "-j", "2", "--concurrency", "2"])
    assert result.exit_code == 2 and "Error: -j 2 runs worker processes and --concurrency 2" in result.stderr


def test_the_docstring_lists_every_error_class():
    for name in ("InputError", "MissingFile", "EmptyFile", "UsageProblem", "WriteError", "PolicyError", "EnvError"):
        assert f"  {name} " in errors.__doc__, name
