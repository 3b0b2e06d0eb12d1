"""The demo recipe end to end at a reduced size: every artifact is made, and every record file validates."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

RECIPES = Path(__file__).parent.parent / "recipes"


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("make") is None, reason="GNU make is not installed")
def test_demo_recipe_at_a_reduced_size(tmp_path):
    out = tmp_path / "demo"
    eexp = f"{sys.executable} -m eexp"
    small = ["N_EXPERT=12", "K_IWM=2", "K_SR=2", "STEPS=60", "N_EVAL=6", "JOBS=1"]
    proc = subprocess.run(["make", "-C", str(RECIPES), "-j2", "compare", "CONFIG=configs/demo.mk", f"OUT={out}",
                           f"EEXP={eexp}", *small], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    records = ["expert.jsonl", "il.jsonl", "outcomes_iwm.jsonl", "iwm.jsonl", "outcomes_sr.jsonl", "sr.jsonl",
               "sr_train.jsonl", "eval/IL.jsonl", "eval/IWM.jsonl", "eval/SR.jsonl", "eval/random.jsonl"]
    for name in records:
        assert (out / name).stat().st_size > 0, f"{name} is empty"
    check = subprocess.run([sys.executable, "-m", "eexp", "validate", *(str(out / n) for n in records)],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stderr

    for run in ("IL", "IWM", "SR"):
        assert (out / run / "config.yaml").exists() and (out / run / "metrics.jsonl").exists()
        phases = [orjson.loads(line)["phase"] for line in (out / run / "metrics.jsonl").read_text().splitlines()]
        assert len(phases) == 60  # one update budget for every method, the warm-up included
        assert ("warmup" in phases) == (run == "IWM")
    compare = orjson.loads((out / "compare.json").read_bytes())
    assert set(compare["splits"]) == {"test", "ood"}
    for rows in compare["splits"].values():
        assert [r["run"] for r in rows] == ["IL", "IWM", "SR", "random"]
        assert all(r["n"] == 6 for r in rows)
    assert (out / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "IWM" in proc.stdout and "SR" in proc.stdout  # the table is printed
