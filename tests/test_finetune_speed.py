"""`eexp finetune` at a GPU's speed (issue 62), checked on CPU: padding-free packing (--packing) gives each example
the loss and gradient it has alone, the updates keep their examples and losses, the loop reads no loss from the
device per micro-batch, and gradient checkpointing is on by default only where the memory estimate needs it.

The mix is test_loss_norm's: IL examples (a few target tokens) and self-reflections of the same states (hundreds),
lengths far apart, so a padded micro-batch has much padding and a packed row many examples.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import pytest

from eexp.card import read_card

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from by_hand import collate, weighted_nll  # noqa: E402
from test_loss_norm import metrics, write_sr_mix  # noqa: E402

from eexp.training.batches import collate_rows, example_nll  # noqa: E402
from eexp.training.config import FinetuneConfig  # noqa: E402
from eexp.training.model import checkpointing_default, training_memory  # noqa: E402
from eexp.training.recipe import Finetune, finetune  # noqa: E402

DATA = Path(__file__).parent / "data"
pytestmark = pytest.mark.usefixtures("one_torch_thread")

THOUGHT = (
    "Thought: the third result is red and costs 25 dollars, which matches every constraint of the task; "
    "clicking it opens its page, where the size can be chosen before buying. "
) * 4


@pytest.fixture(scope="module")
def mix(tmp_path_factory) -> Path:
    return write_sr_mix(tmp_path_factory.mktemp("mix") / "mix.jsonl", THOUGHT)


def config(model, train: Path, out: Path, **kw) -> FinetuneConfig:
    options = dict(train_files=[str(train)], model=str(model), output=str(out), seed=0, quiet=True, max_length=1024)
    return FinetuneConfig(**{**options, **kw})


@pytest.fixture
def run(tiny_checkpoint, mix, tmp_path):
    recipe_ = Finetune(config(tiny_checkpoint, mix, tmp_path / "out", batch_size=4))
    recipe_.setup()
    recipe_.model.eval()  # no dropout: the same examples give the same gradient
    return recipe_


def gradient(run: Finetune, micro: list[list], **options) -> tuple[float, torch.Tensor]:
    run.cfg = replace(run.cfg, **options)
    run.model.zero_grad(set_to_none=True)
    loss_sum, _, _ = run._accumulate(micro)
    units = sum(run._units(e) for batch in micro for e in batch)
    return float(loss_sum) / units, torch.cat(
        [(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in run.params]
    )


# --- packing ------------------------------------------------------------------------------------------------------


def test_a_packed_row_gives_each_example_its_own_loss(run):
    """Packed end to end in one row, each example's summed loss is what it has alone, and what the padded batch
    gives it: attention stays inside each example and positions restart (a row attending across examples, or
    counting on, moves every loss after the first example)."""
    data = run.data["train"].examples
    batch = [data[j] for j in (0, 11, 3, 14, 20)]  # IL and SR, lengths far apart
    with torch.no_grad():
        alone = torch.cat([example_nll(run.model, collate_rows([e], run.pad_id, "cpu")) for e in batch])
        padded = example_nll(run.model, collate_rows(batch, run.pad_id, "cpu"))
        rows = collate_rows(batch, run.pad_id, "cpu", packed=True)
        packed = example_nll(run.model, rows)
        assert rows.ids.shape == (1, sum(e.length for e in batch)) and rows.mask is None
        assert torch.allclose(packed, alone, rtol=1e-5, atol=1e-5)
        assert torch.allclose(padded, alone, rtol=1e-5, atol=1e-5)
        # the positions counting on across the row (no restart) is another model: the check above has teeth
        wrong = run.model(input_ids=rows.ids, logits_to_keep=rows.keep, use_cache=False).logits
    nll = torch.nn.functional.cross_entropy(wrong.float().flatten(0, 1), rows.targets.flatten(), reduction="none")
    wrong_sums = torch.zeros(len(batch)).index_add_(0, rows.segment, nll * rows.weights[0])
    assert not torch.allclose(wrong_sums[1:], alone[1:], rtol=1e-3)


@pytest.mark.parametrize("norm", ["example", "token"])
def test_packed_and_padded_updates_have_the_same_loss_and_gradient(run, norm):
    data = run.data["train"].examples
    update = [data[j] for j in (0, 3, 11, 14, 5, 20)]
    loss, grad = gradient(run, [update[:4], update[4:]], loss_norm=norm, packing=False)
    loss_p, grad_p = gradient(run, [update[:4], update[4:]], loss_norm=norm, packing=True)
    assert loss_p == pytest.approx(loss, rel=1e-5)
    assert torch.allclose(grad_p, grad, rtol=1e-4, atol=1e-6)
    # and one example alone has the same gradient either way (no neighbour to leak into)
    assert torch.allclose(
        gradient(run, [[update[2]]], loss_norm=norm, packing=True)[1],
        gradient(run, [[update[2]]], loss_norm=norm, packing=False)[1],
        rtol=1e-4,
        atol=1e-7,
    )


def test_the_padded_path_is_the_old_arithmetic(run):
    """Unpacked, the new collation and loss (positions found on the host) give bit for bit the per-example sums of
    the code they replace (`collate` + `weighted_nll`)."""
    data = run.data["train"].examples
    batch = [data[j] for j in (1, 12, 7)]
    with torch.no_grad():
        ids, mask, weights = collate(batch, run.pad_id, "cpu")
        old = weighted_nll(run.model, ids, mask, weights, per_example=True)
        new = example_nll(run.model, collate_rows(batch, run.pad_id, "cpu"))
    assert torch.equal(old, new)


def updates_seen(monkeypatch) -> dict:
    """seen[run] (set run = NAME first): the examples (their token ids) of every update that run trains."""
    seen = {}
    real = Finetune._accumulate

    def spy(self, examples, *args, **kwargs):
        seen.setdefault(seen["run"], []).append([tuple(e.ids) for batch in examples for e in batch])
        return real(self, examples, *args, **kwargs)

    monkeypatch.setattr(Finetune, "_accumulate", spy)
    return seen


def test_packing_keeps_the_updates_and_their_losses(tiny_checkpoint, mix, tmp_path, monkeypatch):
    """End to end: with --packing the same examples make each update, in the same order, and the logged losses and
    the trained weights are the padded run's to float tolerance."""
    from safetensors.torch import load_file

    seen = updates_seen(monkeypatch)
    for packing in (False, True):
        seen["run"] = packing
        finetune(
            config(
                tiny_checkpoint, mix, tmp_path / str(packing), batch_size=4, grad_accum=2, max_steps=4, packing=packing
            )
        )
    assert seen[True] == seen[False] and len(seen[True]) == 4
    want = [r["loss"] for r in metrics(tmp_path / "False") if "loss" in r]
    assert [r["loss"] for r in metrics(tmp_path / "True") if "loss" in r] == pytest.approx(want, rel=1e-4)
    ref, got = load_file(tmp_path / "False" / "model.safetensors"), load_file(tmp_path / "True" / "model.safetensors")
    assert all(torch.allclose(got[k], ref[k], atol=3e-5) for k in ref)


def test_packing_is_the_likelihood_loss_s_alone(tiny_checkpoint, tmp_path, runner):
    from eexp.cli import cli

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("")
    result = runner.invoke(
        cli,
        [
            "finetune",
            str(pairs),
            "--objective",
            "dpo",
            "--packing",
            "--model",
            str(tiny_checkpoint),
            "-o",
            str(tmp_path / "o"),
            "-q",
        ],
    )
    assert result.exit_code == 2, result.output
    assert "--packing" in result.output


# --- no wait for the device per micro-batch -----------------------------------------------------------------------


def test_the_loop_reads_the_loss_once_a_log_row(tiny_checkpoint, mix, tmp_path, monkeypatch):
    """8 updates of 2 micro-batches, a log row every 4, validation: eexp's training code reads device values on the
    host once a log row and once a validation, never per micro-batch (the old loop's float(loss) made the host wait
    for the GPU at each of the 16, and validation at each of its batches)."""
    reads = []
    for name in ("item", "tolist", "__float__", "__int__", "__bool__"):
        real = getattr(torch.Tensor, name)

        def wrapped(self, *args, _real=real, _name=name, **kwargs):
            caller = sys._getframe(1).f_code.co_filename
            if "eexp/training" in caller.replace("\\", "/"):
                reads.append((_name, sys._getframe(1).f_code.co_name))
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, wrapped)
    out = tmp_path / "out"
    finetune(config(tiny_checkpoint, mix, out, batch_size=2, grad_accum=2, max_steps=8, log_every=4, val_fraction=0.3))
    monkeypatch.undo()
    rows = [r for r in metrics(out) if "loss" in r]
    validations = [r for r in metrics(out) if "val_loss" in r]
    assert [r["step"] for r in rows] == [4, 8] and all(r["loss"] > 0 for r in rows) and len(validations) >= 2
    # one read a row (the window's losses) and one a validation (its sums), whatever the micro-batches
    assert reads == [("tolist", "_floats")] * (len(rows) + len(validations))


# --- gradient checkpointing where memory needs it -----------------------------------------------------------------

SMOLLM2 = dict(
    vocab_size=49152,
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
)
LLAMA_1B = dict(
    vocab_size=49152,
    hidden_size=2048,
    intermediate_size=8192,
    num_hidden_layers=16,
    num_attention_heads=32,
    num_key_value_heads=8,
)
GIB = 1024**3


def estimate(shape: dict, n_params: float, rows: int, tokens: int, kept: int, method: str = "lora") -> dict:
    return training_memory(
        transformers.LlamaConfig(**shape),
        int(n_params),
        method=method,
        bf16=True,
        rows=rows,
        row_tokens=tokens,
        kept=kept,
    )


def test_the_memory_estimate_meets_the_measured_peak():
    """Issue 62's plain loop on an H100 peaked at 9.7 GiB for the 1B shape (LoRA, bf16, batch 8 of ~340-token
    examples, longest batches longer): the estimate for batch 8 of 512 tokens is of that size, not a multiple."""
    parts = estimate(LLAMA_1B, 1.07e9, 8, 512, 80)
    assert 7 * GIB < sum(parts.values()) < 14 * GIB
    assert parts["activations"] > parts["weights"] > parts["logits"] > parts["state"]


def test_checkpointing_is_on_only_where_the_estimate_does_not_fit():
    """The recipes' settings on an 80 GB GPU: off at batch 8 for both shapes (checkpointing cost 35-40% there);
    on where it cannot fit: a full fine-tune of the 1B shape at batch 64, or a 16 GB GPU at batch 8 of 1,024."""
    free80, free16 = 78 * GIB, 15 * GIB
    for shape, n in ((SMOLLM2, 1.35e8), (LLAMA_1B, 1.07e9)):
        on, why = checkpointing_default(estimate(shape, n, 8, 1024, 80), free80)
        assert not on and why.startswith("off: about ") and "78.0 GiB free" in why
    on, why = checkpointing_default(estimate(LLAMA_1B, 1.07e9, 64, 1024, 640, method="full"), free80)
    assert on and why.startswith("on: about ")
    assert checkpointing_default(estimate(LLAMA_1B, 1.07e9, 8, 1024, 80), free16)[0]


def test_the_default_reads_the_gpu_s_free_memory_and_the_card_says_why(run, monkeypatch):
    """On CPU the default is off and the card says so; on a GPU (here its free memory, faked) the recipe's own
    largest micro-batch and the model's shape decide, and the reason names the estimate."""
    assert run.model_cfg.gradient_checkpointing is False
    assert run.checkpointing_why == "off: not on a CUDA GPU (the default there)"
    run.device = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (40 * GIB, 80 * GIB))
    on, why = run._checkpointing()
    assert not on and why.startswith("off: about ") and "40.0 GiB free" in why
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (1024**2, 80 * GIB))  # 1 MiB free
    on, why = run._checkpointing()
    assert on and why.startswith("on: about ")
    run.cfg = replace(run.cfg, gradient_checkpointing=False)
    assert run._checkpointing() == (False, "off: asked (--no-gradient-checkpointing)")
    # the largest micro-batch: 4 rows of the longest example, logits at the targets of all of them (at most the row)
    longest = max(e.length for e in run.data["train"].examples)
    rows, tokens, kept = run._activation_shape()
    assert (rows, tokens) == (4, longest) and 0 < kept <= longest


def test_the_card_records_the_decision(tiny_checkpoint, mix, tmp_path):
    out = tmp_path / "out"
    finetune(config(tiny_checkpoint, mix, out, batch_size=4, max_steps=1, gradient_checkpointing=True))
    assert read_card(out).gradient_checkpointing == "on: asked (--gradient-checkpointing)"
