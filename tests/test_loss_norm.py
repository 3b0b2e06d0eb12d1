"""How `eexp finetune` weighs its examples (issue 40, point 1): --loss-norm example | token, and updates whose examples
do not depend on how they are split into micro-batches (--grad-accum) or processes.

The mix these tests model is the SR recipe's: `mix --concat` of IL examples (`Action: click[34]`, a few target
tokens) and self-reflections (`Thought: ...` then the action, hundreds). Summed over target tokens and divided by
their count, an update of the two gives the IL action a few percent of the loss; per example it gets half.
"""

from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path

import pytest

from eexp.card import read_card
from eexp.cli import cli
from eexp.io import read_records
from eexp.prompts import Serializer
from eexp.stages.imitation import imitation_examples

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from eexp.training.batches import phase_updates, updates_per_epoch  # noqa: E402
from eexp.training.config import FinetuneConfig  # noqa: E402
from eexp.training.data import Dataset, Encoded  # noqa: E402
from eexp.training.recipe import Finetune, finetune  # noqa: E402

DATA = Path(__file__).parent / "data"
pytestmark = pytest.mark.usefixtures("one_torch_thread")

THOUGHT = (
    "Thought: the task asks for a red shirt under 30 dollars, and this page lists the search results. The "
    "first result is a blue shirt and the second costs 45 dollars, so neither fits; the third is red and "
    "costs 25 dollars, which matches every constraint of the task. Clicking it opens its page, where the "
    "size and the colour can be chosen before buying. "
) * 3


def write_sr_mix(path: Path, thought: str = THOUGHT) -> Path:
    """The SR recipe's training file in small: the 11 IL examples of tests/data and, for each, a self-reflection
    of the same state (`thought` before the same action), concatenated (tests/test_finetune_speed.py too)."""
    il = [e for t in read_records([DATA / "trajectories.jsonl"]) for e in imitation_examples(t, Serializer(), True)]
    sr = []
    for e in il:
        r = json.loads(json.dumps(e))
        r["id"] += ":sr"
        r["messages"][-1]["content"] = thought + "\n" + e["messages"][-1]["content"]
        sr.append(r)
    path.write_text("".join(json.dumps(r) + "\n" for r in il + sr))
    return path


@pytest.fixture(scope="module")
def mix(tmp_path_factory) -> Path:
    return write_sr_mix(tmp_path_factory.mktemp("mix") / "sr_train.jsonl")


def config(model, train: Path, out: Path, **kw) -> FinetuneConfig:
    options = dict(train_files=[str(train)], model=str(model), output=str(out), seed=0, quiet=True, max_length=2048)
    return FinetuneConfig(**{**options, **kw})


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


# --- which examples share an update --------------------------------------------------------------------------------


def updates_of(lengths: list[int], epochs: int = 2, world: int = 1, **options) -> list[list[frozenset]]:
    """Every update of `epochs` epochs as the set of its examples, and each update's micro-batches."""
    data = Dataset("train", [Encoded(ids=[0] * n, weights=[0.0] * (n - 1) + [1.0]) for n in lengths])
    cfg = FinetuneConfig(train_files=[], model="m", output="o", seed=3, **options)
    per_epoch = updates_per_epoch(len(lengths), cfg.batch_size, cfg.grad_accum, world)
    plan = phase_updates(data, cfg, "train", world)
    out = []
    for _ in range(epochs * per_epoch):
        _, micro = next(plan)
        assert all(len(b) <= cfg.batch_size for b in micro) and len(micro) <= cfg.grad_accum * world
        out.append(frozenset(j for b in micro for j in b))
    return out


def test_grad_accum_and_processes_do_not_change_which_examples_share_an_update():
    """The SmolLM2 SR mix (192 IL examples of ~300 tokens, 192 reflections of ~600): 8 examples an update as one
    batch of 8, 2 x --grad-accum 4, or 2 processes x 2 x 2 are the same updates, in the same order. (Fails on the
    old plan, which grouped micro-batches by length within windows of --batch-size x 64 examples and then took
    --grad-accum of them: 2 x 4 made mixed updates where one batch of 8 made pure IL or pure SR ones.)"""
    rng = random.Random(0)
    lengths = [rng.randint(250, 350) for _ in range(192)] + [rng.randint(500, 700) for _ in range(192)]
    one = updates_of(lengths, batch_size=8)
    assert updates_of(lengths, batch_size=2, grad_accum=4) == one
    assert updates_of(lengths, batch_size=1, grad_accum=8) == one
    assert updates_of(lengths, world=2, batch_size=2, grad_accum=2) == one
    assert updates_of(lengths, world=4, batch_size=2) == one
    # Each epoch holds every example once, 8 to an update (384 = 48 x 8).
    assert len(one) == 96 and all(len(u) == 8 for u in one)
    assert sorted(j for u in one[:48] for j in u) == list(range(384))
    # Length-grouped as one batch of 8 always was: most updates are all IL or all SR.
    pure = sum(1 for u in one if all(j < 192 for j in u) or all(j >= 192 for j in u))
    assert pure >= 80


def test_the_last_short_update_of_an_epoch_is_split_alike():
    """11 examples, 4 an update: 4, 4 and 3, whatever the split (2 processes x --grad-accum 2 x 1: the short
    update is 3 micro-batches, two on the first process)."""
    lengths = [10 + 3 * k for k in range(11)]
    one = updates_of(lengths, batch_size=4)
    assert sorted(len(u) for u in one[:3]) == [3, 4, 4]
    assert updates_of(lengths, world=2, batch_size=1, grad_accum=2) == one
    assert updates_of(lengths, batch_size=2, grad_accum=2) == one


# --- the loss of an update ----------------------------------------------------------------------------------------


@pytest.fixture
def run(tiny_checkpoint, mix, tmp_path):
    """A set-up recipe (model loaded, the mix encoded), for computing the gradients of chosen updates."""
    recipe = Finetune(config(tiny_checkpoint, mix, tmp_path / "out", batch_size=2))
    recipe.setup()
    recipe.model.eval()  # no dropout: the same examples give the same gradient
    return recipe


def gradient(run: Finetune, micro: list[list], norm: str) -> tuple[float, torch.Tensor]:
    """(the update's loss, its gradient as one vector) for the update made of the micro-batches `micro`."""
    run.cfg = replace(run.cfg, loss_norm=norm)
    run.model.zero_grad(set_to_none=True)
    loss_sum, _, _ = run._accumulate(micro)  # a device scalar: read here, as the loop reads it at a log row
    units = sum(run._units(e) for batch in micro for e in batch)
    return float(loss_sum) / units, torch.cat(
        [(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in run.params]
    )


@pytest.mark.parametrize("norm", ["example", "token"])
def test_an_update_split_into_micro_batches_has_the_loss_and_gradient_of_one_batch(run, norm):
    data = run.data["train"].examples
    update = [data[j] for j in (0, 3, 11, 14, 5, 20)]  # IL and SR examples, lengths apart
    loss_one, grad_one = gradient(run, [update], norm)
    for split in ([update[:2], update[2:4], update[4:]], [update[:1], update[1:5], update[5:]], [[e] for e in update]):
        loss, grad = gradient(run, split, norm)
        assert loss == pytest.approx(loss_one, rel=1e-5)
        assert torch.allclose(grad, grad_one, rtol=1e-4, atol=1e-7)


def test_per_example_normalization_gives_an_il_and_an_sr_example_equal_weight(run):
    """The gradient of an update of one IL example and its self-reflection is the mean of their own gradients
    (each example's mean over its target tokens): equal weights. Per target token, the IL example's weight is its
    share of the tokens, a few percent."""
    data = run.data["train"].examples
    il, sr = data[0], data[11]
    assert sr.n_targets > 10 * il.n_targets
    for norm in ("example", "token"):
        loss_il, g_il = gradient(run, [[il]], norm)
        loss_sr, g_sr = gradient(run, [[sr]], norm)
        loss, g = gradient(run, [[sr], [il]], norm)
        w_il = 0.5 if norm == "example" else il.n_targets / (il.n_targets + sr.n_targets)
        assert loss == pytest.approx(w_il * loss_il + (1 - w_il) * loss_sr, rel=1e-5)
        assert torch.allclose(g, w_il * g_il + (1 - w_il) * g_sr, rtol=1e-4, atol=1e-7)
        # and not the other rule's weights: the two really differ on this pair
        other = il.n_targets / (il.n_targets + sr.n_targets) if norm == "example" else 0.5
        assert not torch.allclose(g, other * g_il + (1 - other) * g_sr, rtol=1e-2, atol=1e-6)
    assert il.n_targets / (il.n_targets + sr.n_targets) < 0.1


@pytest.mark.parametrize("norm", ["example", "token"])
def test_grad_accum_trains_as_one_batch(tiny_checkpoint, mix, tmp_path, norm):
    """End to end: 4 examples an update as one batch, 2 x 2 and 1 x 4 give the same logged losses and weights
    (float rounding apart). Fails on the old plan (other examples in each update)."""
    runs = {}
    for batch, accum in ((4, 1), (2, 2), (1, 4)):
        out = tmp_path / f"{batch}x{accum}"
        finetune(config(tiny_checkpoint, mix, out, batch_size=batch, grad_accum=accum, max_steps=4, loss_norm=norm))
        runs[batch, accum] = out
    want = [r["loss"] for r in metrics(runs[4, 1]) if "loss" in r]
    from safetensors.torch import load_file

    ref = load_file(runs[4, 1] / "model.safetensors")
    for key in ((2, 2), (1, 4)):
        assert [r["loss"] for r in metrics(runs[key]) if "loss" in r] == pytest.approx(want, rel=1e-4)
        got = load_file(runs[key] / "model.safetensors")
        # float rounding differs with the CPU's kernels: up to 1.1e-5 after 4 updates on an AMX Xeon (each Adam step
        # moves a weight by about the learning rate, far more than the tolerance: a different plan falls outside it)
        assert all(torch.allclose(got[k], ref[k], atol=3e-5) for k in ref)


# --- the budget in epochs, on the card ----------------------------------------------------------------------------


def test_epochs_make_the_updates_and_the_card_says_so(tiny_checkpoint, mix, tmp_path):
    """--epochs 2 over 22 examples, 8 an update (4 x --grad-accum 2): 2 x ceil(22 / 8) = 6 updates; the card
    records each phase's updates, examples per update, epochs and loss normalization (a results page states them)."""
    out = tmp_path / "sr"
    finetune(config(tiny_checkpoint, mix, out, batch_size=4, grad_accum=2, epochs=2))
    card = read_card(out)
    assert card.updates == 6
    assert card.phases == [
        {
            "name": "train",
            "updates": 6,
            "examples": 22,
            "tokens": card.phases[0]["tokens"],
            "truncated": 0,
            "skipped": 0,
            "examples_per_update": 8,
            "epochs": 2.0,
            "loss_norm": "example",
        }
    ]
    # a --max-steps budget that ends mid-epoch says so
    out = tmp_path / "steps"
    finetune(config(tiny_checkpoint, mix, out, batch_size=4, max_steps=3, loss_norm="token"))
    assert {k: read_card(out).phases[0][k] for k in ("updates", "epochs", "loss_norm")} == {
        "updates": 3,
        "epochs": 0.5,
        "loss_norm": "token",
    }


def test_dpo_refuses_token_normalization(tiny_checkpoint, tmp_path, runner):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("")
    result = runner.invoke(
        cli,
        [
            "finetune",
            str(pairs),
            "--objective",
            "dpo",
            "--loss-norm",
            "token",
            "--model",
            str(tiny_checkpoint),
            "-o",
            str(tmp_path / "o"),
            "-q",
        ],
    )
    assert result.exit_code == 2
    assert "--loss-norm token is the sft loss's; DPO's loss is the mean over pairs" in result.output
