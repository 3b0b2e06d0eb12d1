"""eexp reflect --resume with --rejected FILE: after an interruption at any point (a kill between two outcomes, a torn
last line, the rejected file one outcome ahead of -o because a rejection is written before its example) and
--resume, both -o FILE and the rejected file are those of an uninterrupted run, with --fallback grounded and
without; a finished run resumed again adds nothing."""

from __future__ import annotations

import orjson
import pytest
from by_hand import untimed
from test_reflect import GOOD, SHOP, _lines

from eexp.cli import cli
from eexp.policies.base import derive_seed

IDS = [f"t{i}#2" for i in range(6)]
BAD_IDS = {"t1#2", "t2#2", "t5#2"}  # two rejections in a row, and the last outcome rejected
LEAKY = "The expert picks pink here, since the task asks for pink.\n\nAction: click[pink]"  # label_leakage
SEED = 7


@pytest.fixture
def scripted(monkeypatch):
    """A policy whose reply is fixed by the outcome (through the seed reflect derives from its id): label leakage
    for BAD_IDS, a good reflection otherwise; it counts its calls."""
    import eexp.policies
    from eexp.policies.base import Policy, Reply

    by_seed = {derive_seed(SEED, i, 0): (LEAKY if i in BAD_IDS else GOOD) for i in IDS}
    calls = []

    class Scripted(Policy):
        def generate(self, messages, seed=None, **kw):
            calls.append(seed)
            return Reply(text=by_seed.get(seed, GOOD), action=None, finish_reason="stop")  # GOOD for other ids

        def describe(self):
            return {"model": "scripted"}

        def close(self):
            pass

    monkeypatch.setattr(eexp.policies, "load_policy", lambda *a, **k: Scripted())
    return calls


def _outcomes(tmp_path):
    path = tmp_path / "outcomes.jsonl"
    records = [dict(SHOP, id=i, source_id=i.split("#")[0], trajectory_id=i.split("#")[0]) for i in IDS]
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    return path


def _reflect(runner, data, out, rejected, fallback, *more):
    args = ["reflect", "--policy", "m.gguf", "--seed", str(SEED), str(data), "-o", str(out)]
    args += ["--rejected", str(rejected)]
    result = runner.invoke(cli, [*args, *(["--fallback", "grounded"] if fallback else []), *more])
    assert result.exit_code == 0, result.output


def _write(path, records, torn: bytes = b""):
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records) + torn)


def _same(path, reference):
    return untimed(_lines(path)) == untimed(reference)


@pytest.mark.parametrize("fallback", [True, False], ids=["fallback", "no-fallback"])
def test_resume_after_any_interruption_gives_the_uninterrupted_files(runner, scripted, tmp_path, fallback):
    data = _outcomes(tmp_path)
    ref_out, ref_rej = tmp_path / "ref.jsonl", tmp_path / "ref.rejected.jsonl"
    _reflect(runner, data, ref_out, ref_rej, fallback)
    full_out, full_rej = _lines(ref_out), _lines(ref_rej)
    assert sorted(r["source_id"] for r in full_rej) == sorted(BAD_IDS)
    assert len(full_out) == (len(IDS) if fallback else len(IDS) - len(BAD_IDS))

    def before(records, j):  # the records of the first j outcomes
        return [r for r in records if IDS.index(r["source_id"]) < j]

    out, rej = tmp_path / "sr.jsonl", tmp_path / "rejected.jsonl"
    # a kill after j outcomes; the rejected file may hold the next outcome's rejection already (written before its
    # example, or flushed before the output's pending lines), and either file may end on a torn line
    for j in range(len(IDS) + 1):
        for ahead in (0, 1):
            for torn in (b"", b'{"id": "sr:t'):
                _write(out, before(full_out, j), torn)
                _write(rej, before(full_rej, j + ahead), torn)
                _reflect(runner, data, out, rej, fallback, "--resume")
                where = f"killed after {j} outcomes, rejected {ahead} ahead, torn {bool(torn)}"
                assert _same(out, full_out), where
                assert _same(rej, full_rej), where

    # a finished run resumed again (the audit's case: the last outcome was rejected, and its rejection was
    # written twice) changes neither file and asks the model again only for the last outcome of -o (and, without a
    # fallback, of the rejected file), which --resume does again
    _write(out, full_out)
    _write(rej, full_rej)
    del scripted[:]
    _reflect(runner, data, out, rej, fallback, "--resume")
    assert _same(out, full_out) and _same(rej, full_rej)
    assert len(scripted) == (1 if fallback else 2)


@pytest.mark.parametrize(
    "change, said",
    [
        ("state", "its record of t1#2 was made from another input record than this one"),
        ("tasks", "3 of its 3 records are of inputs that this input does not begin with"),
    ],
)
def test_resume_from_other_outcomes_is_refused(runner, scripted, tmp_path, change, said):
    """A part begun from one file of outcomes is not continued from another made with the same settings (another
    expert file's): an example kept for an outcome skipped must show that outcome's state and expert action, and
    every kept example must be matched before the run writes. Refused word for word, the part left as it was."""
    data, out, rejected = _outcomes(tmp_path), tmp_path / "sr.jsonl", tmp_path / "sr.rejected.jsonl"
    _reflect(runner, data, out, rejected, True)
    kept = b"".join(out.read_bytes().splitlines(keepends=True)[:4])  # t0-t3's examples; t3's done again on resume
    out.write_bytes(kept)
    records = [orjson.loads(line) for line in data.read_bytes().splitlines()]
    if change == "state":
        records[1]["state"] = {**records[1]["state"], "observation": records[1]["state"]["observation"] + " (changed)"}
    else:  # other outcomes: ids none of the kept examples has
        records = [dict(r, id="u" + r["id"]) for r in records]
    other = tmp_path / "other.jsonl"
    _write(other, records)
    args = ["reflect", "--policy", "m.gguf", "--seed", str(SEED), str(other), "-o", str(out), "--resume"]
    result = runner.invoke(cli, [*args, "--fallback", "grounded"])

    assert result.exit_code == 2, result.output
    assert result.output == (
        f"Error: --resume: {out} was begun from another input ({said}): resume it with the input it was begun from, "
        "or write to another file\n"
    )
    assert out.read_bytes() == kept
