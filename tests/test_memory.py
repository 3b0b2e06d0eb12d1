"""Memory that fits a GPU workstation (issue 28 point 4), as far as a CPU machine can check it: gradient
checkpointing (on by default with CUDA, really recomputing when on, the same losses), --attn-implementation, full
fine-tunes saved in the training dtype, the refusal of a --full that cannot fit (with the estimate), RL's
checkpointed update, weight hashes computed once across processes, and `eval -j N` refusing N copies of a GPU model.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from eexp.cli import cli  # noqa: E402
from eexp.errors import UsageProblem  # noqa: E402
from eexp.io import read_records  # noqa: E402
from eexp.prompts import Serializer  # noqa: E402
from eexp.stages.imitation import imitation_examples  # noqa: E402
from eexp.training.config import (  # noqa: E402
    FULL_BYTES_PER_PARAM,
    FinetuneConfig,  # noqa: E402
    check_full_fits,
)
from eexp.training.model import count_parameters  # noqa: E402
from eexp.training.recipe import Finetune, finetune  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DATA = Path(__file__).parent / "data"
GiB = 1024**3


@pytest.fixture(scope="module")
def il(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("mem") / "il.jsonl"
    path.write_text(
        "".join(
            json.dumps(e) + "\n"
            for t in read_records([DATA / "trajectories.jsonl"])
            for e in imitation_examples(t, Serializer(), True)
        )
    )
    return path


def cfg(model, il, out, **kw) -> FinetuneConfig:
    return FinetuneConfig(
        **{
            "train_files": [str(il)],
            "model": str(model),
            "output": str(out),
            "batch_size": 4,
            "max_length": 512,
            "max_steps": 3,
            "quiet": True,
            **kw,
        }
    )


def losses(out) -> list[float]:
    return [
        json.loads(line)["loss"]
        for line in (Path(out) / "metrics.jsonl").read_text().splitlines()
        if "loss" in json.loads(line)
    ]


def decoder_layer(model):
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return inner.model.layers[0]


def count_layer_calls(model) -> list[int]:
    """Calls of the first decoder layer's MLP (inside the layer's forward, which transformers checkpoints: a
    recomputed layer runs it again in the backward pass)."""
    calls = [0]
    decoder_layer(model).mlp.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


# --- gradient checkpointing ---------------------------------------------------------------------------------------


def test_gradient_checkpointing_is_off_on_cpu_and_as_asked_anywhere(tiny_checkpoint, il, tmp_path):
    """On CPU nothing is weighed: off. Asked on or off, it is as asked on a GPU too (the default there, a memory
    estimate against the GPU's free memory, is tests/test_finetune_speed.py's)."""
    run = Finetune(cfg(tiny_checkpoint, il, tmp_path / "o"))
    run.device = torch.device("cpu")
    assert run._checkpointing() == (False, "off: not on a CUDA GPU (the default there)")
    for asked, why in (
        (False, "off: asked (--no-gradient-checkpointing)"),
        (True, "on: asked (--gradient-checkpointing)"),
    ):
        run = Finetune(cfg(tiny_checkpoint, il, tmp_path / "o", gradient_checkpointing=asked))
        run.device = torch.device("cuda")  # what setup finds on a GPU machine (nothing runs on it here)
        assert run._checkpointing() == (asked, why)


@pytest.mark.parametrize("lora", [False, True])
def test_gradient_checkpointing_recomputes_and_keeps_the_losses(tiny_checkpoint, il, tmp_path, lora):
    """On: each decoder layer runs twice per micro-batch (forward, then again in the backward pass); the losses
    are those of the run without it. config.yaml records the resolved setting."""
    runs = {}
    for on in (False, True):
        run = Finetune(cfg(tiny_checkpoint, il, tmp_path / str(on), gradient_checkpointing=on, lora=lora))
        run.setup()
        calls = count_layer_calls(run.model)
        run.train()
        run.finish()
        runs[on] = (calls[0], losses(tmp_path / str(on)))
        made = yaml.safe_load((tmp_path / str(on) / "config.yaml").read_text())
        assert made["gradient_checkpointing"] is on
    (plain_calls, plain), (ckpt_calls, ckpt) = runs[False], runs[True]
    assert ckpt_calls == 2 * plain_calls > 0
    assert ckpt == pytest.approx(plain, rel=1e-5)


def test_rl_update_with_gradient_checkpointing_recomputes_and_gives_the_same_update(tiny_checkpoint, tmp_path):
    """RL's packed update in train mode (where transformers checkpoints) with dropout off: the same
    log-probabilities and gradients as eval mode without checkpointing, with each layer recomputed."""
    from eexp.rl.config import RLConfig
    from eexp.rl.loss import sample_parts
    from eexp.rl.recipe import RL

    results = {}
    for on in (False, True):
        run = RL(
            RLConfig(
                model=str(tiny_checkpoint),
                output=str(tmp_path / f"rl-{on}"),
                env="shop",
                act="score",
                group_size=2,
                tasks_per_step=1,
                max_steps=1,
                episode_steps=2,
                allow_zero_start=True,
                gradient_checkpointing=on,
                quiet=True,
            )
        )
        run.setup()
        samples = [{**s, "advantage": 1.0} for _, trace in run.rollouts(1) for s in trace]
        assert samples and all(p["mode"] == "score" for s in samples for p in sample_parts(s))
        calls = count_layer_calls(run.model)
        run.model.zero_grad(set_to_none=True)
        outs = run._logprobs(run.model, samples)
        total = sum(logp.sum() for parts in outs for logp, _ in parts)
        total.backward()
        assert not run.model.training  # back in eval mode for the rollouts
        results[on] = (calls[0], float(total.detach()), [p.grad.clone() for p in run.params])
        run.env.close()
    (plain_calls, plain, plain_grads), (ckpt_calls, ckpt, ckpt_grads) = results[False], results[True]
    assert ckpt_calls == 2 * plain_calls > 0
    assert ckpt == pytest.approx(plain, rel=1e-6)
    for a, b in zip(ckpt_grads, plain_grads):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5)


# --- attention, saved dtype ---------------------------------------------------------------------------------------


def test_attn_implementation_is_the_one_asked_for(tiny_checkpoint, il, tmp_path, runner):
    run = finetune(cfg(tiny_checkpoint, il, tmp_path / "eager", attn_implementation="eager"))
    assert run.model.config._attn_implementation == "eager"
    sdpa = finetune(cfg(tiny_checkpoint, il, tmp_path / "sdpa", attn_implementation="sdpa"))
    assert sdpa.model.config._attn_implementation == "sdpa"
    assert losses(tmp_path / "eager") == pytest.approx(losses(tmp_path / "sdpa"), rel=1e-4)
    result = runner.invoke(
        cli,
        [
            "finetune",
            str(il),
            "--model",
            str(tiny_checkpoint),
            "-o",
            str(tmp_path / "fa"),
            "--attn-implementation",
            "flash_attention_2",
            "--max-steps",
            "1",
            "-q",
        ],
    )
    assert result.exit_code == 2, result.output  # no flash-attn (or no GPU) here: a usage error, named
    assert "--attn-implementation flash_attention_2" in result.output and "Traceback" not in result.output


def test_full_finetune_is_saved_in_the_training_dtype(tiny_checkpoint, il, tmp_path):
    """bf16 training saves bf16 weights (half the disk of the fp32 master weights), config.json and the card say
    so, and the tied embedding is saved once; fp32 training saves fp32; --save-dtype overrides."""
    from safetensors.torch import load_file

    for precision, save, expect in (
        ("bf16", "auto", torch.bfloat16),
        ("fp32", "auto", torch.float32),
        ("fp32", "bf16", torch.bfloat16),
    ):
        out = tmp_path / f"{precision}-{save}"
        run = finetune(cfg(tiny_checkpoint, il, out, precision=precision, save_dtype=save, max_steps=2))
        weights = load_file(out / "model.safetensors")
        assert {t.dtype for t in weights.values()} == {expect}
        config = json.loads((out / "config.json").read_text())
        assert config["dtype"] == str(expect).removeprefix("torch.")
        trained = {n: p.detach() for n, p in run.model.named_parameters()}
        for name, t in weights.items():  # the trained fp32 weights, rounded once
            assert torch.equal(t, trained[name].to(expect)), name
        assert len(weights) == len({n for n in trained if n in weights})
        reloaded = transformers.AutoModelForCausalLM.from_pretrained(out, dtype="auto")  # as vLLM reads config.json
        assert reloaded.dtype == expect
        assert yaml.safe_load((out / "card.yaml").read_text())["precision"] == precision


# --- a --full that cannot fit ------------------------------------------------------------------------------------


def test_parameters_are_counted_from_the_safetensors_headers(tiny_checkpoint):
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_checkpoint)
    stored = sum(p.numel() for p in model.state_dict().values())
    tied = model.get_output_embeddings().weight.numel() if model.config.tie_word_embeddings else 0
    assert count_parameters(str(tiny_checkpoint)) in (stored, stored - tied)
    assert count_parameters(str(tiny_checkpoint)) == model.num_parameters()


def test_a_full_finetune_that_cannot_fit_is_refused_with_the_estimate():
    n = 8_030_000_000  # Llama-3.1-8B
    assert FULL_BYTES_PER_PARAM * n / GiB == pytest.approx(119.7, abs=0.1)
    with pytest.raises(UsageProblem) as e:
        check_full_fits("meta-llama/Llama-3.1-8B-Instruct", n, 80 * GiB)
    message = str(e.value)
    assert "8.03B parameters" in message and "about 120 GiB" in message and "the GPU has 80 GiB" in message
    assert "--lora" in message and "recipes/accelerate/fsdp.yaml" in message
    check_full_fits("m", n, 80 * GiB, processes=2, sharded=True)  # 60 GiB a GPU under FSDP over 2: fits
    with pytest.raises(UsageProblem, match="about 60 GiB on each of 2 GPUs under FSDP"):
        check_full_fits("m", n, 40 * GiB, processes=2, sharded=True)
    check_full_fits("m", 1_500_000_000, 40 * GiB)  # 1.5B full on one 40 GiB GPU: 22 GiB, fits


def _set_tf32(matmul: bool, cudnn: bool) -> None:
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def test_the_memory_check_runs_before_anything_is_loaded_or_written(
    tiny_checkpoint, il, tmp_path, monkeypatch, request
):
    """On a GPU, setup refuses --full before loading the model or making OUT (a CUDA device is faked here, and
    loading the model or making OUT would fail the test: the check once could have moved after them unseen)."""
    props = type("Props", (), {"total_memory": 1024**2})()  # a 1 MiB GPU
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: props)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    # setup turns TF32 on for the faked GPU: put back after the test (torch's flag objects refuse monkeypatch's undo)
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    request.addfinalizer(lambda: _set_tf32(*tf32))

    def too_late(self, *args, **kwargs):
        raise AssertionError("reached before the memory check refused the run")

    for step in ("_prepare_output", "_load_tokenizer", "_load_data", "_load_model"):
        monkeypatch.setattr(Finetune, step, too_late)
    run = Finetune(cfg(tiny_checkpoint, il, tmp_path / "o"))
    with pytest.raises(
        UsageProblem, match=r"--full on .* \(0\.\d+M parameters\) needs about \d+\.\d MiB .* the GPU has 1\.0 MiB"
    ):
        run.setup()
    assert run.device.type == "cuda" and not (tmp_path / "o").exists()
    lora = Finetune(cfg(tiny_checkpoint, il, tmp_path / "o", lora=True))
    with pytest.raises(AssertionError, match="reached before the memory check"):
        lora.setup()  # LoRA is not refused: setup goes on to make OUT


# --- hashes, eval -j --------------------------------------------------------------------------------------------


def test_weight_hashes_are_computed_once_and_keyed_by_size_and_mtime(tiny_checkpoint, tmp_path, monkeypatch):
    import shutil

    from eexp import files

    model = tmp_path / "m"
    shutil.copytree(tiny_checkpoint, model)
    first = files.content_hash([str(model)])
    weights = model / "model.safetensors"
    stat = weights.stat()
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # same size; the mtime put back: what a later process finds is the stored hash
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    monkeypatch.setattr(files, "_HASHES", {})  # a fresh process
    assert files.content_hash([str(model)]) == first
    assert list((Path(os.environ["EEXP_CACHE"]) / "hashes").iterdir())
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # touched: hashed again
    monkeypatch.setattr(files, "_HASHES", {})
    assert files.content_hash([str(model)]) != first


def test_eval_with_several_workers_refuses_copies_of_a_gpu_model(tiny_checkpoint, runner, monkeypatch):
    args = ["eval", "--policy", str(tiny_checkpoint), "--env", "shop", "-n", "2", "-j", "2"]
    result = runner.invoke(cli, [*args, "--policy-arg", "device=cuda"])
    assert result.exit_code == 2, result.output
    assert "would load 2 copies of the model onto cuda" in result.output and "-j 1" in result.output
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # device=auto on a GPU machine
    result = runner.invoke(cli, args)
    assert result.exit_code == 2 and "2 copies" in result.output
    result = runner.invoke(cli, [*args, "--policy-arg", "device=cpu", "--max-steps", "1", "-q"])
    assert result.exit_code == 0, result.output  # workers on the CPU: allowed
    assert len(result.stdout.strip().splitlines()) == 2
