"""Models named by a Hugging Face Hub id (issue 28 point 1): `finetune --model ORG/NAME`, `--policy ORG/NAME` and an
adapter trained on a Hub base, offline (HF_HUB_OFFLINE=1) from a Hugging Face cache that the test builds itself in
huggingface_hub's layout (models--ORG--NAME/{refs/main, snapshots/COMMIT/FILE -> blobs/SHA}) from a tiny
`eexp init-model` model. Safetensors only, model code only when asked, and the card records the id and revision.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
huggingface_hub = pytest.importorskip("huggingface_hub")

from eexp.card import read_card  # noqa: E402
from eexp.cli import cli  # noqa: E402
from eexp.errors import HubError, PolicyError  # noqa: E402
from eexp.files import content_hash, hub_id, resolve_hub_model  # noqa: E402
from eexp.policies import load_policy, policy_kind  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DATA = Path(__file__).parent / "data"
REPO = "eexp-test/tiny-chat"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def put_in_hub_cache(cache: Path, repo: str, folder: Path, commit: str = COMMIT, skip=()) -> Path:
    """A model in the Hugging Face cache as `hf download` leaves it: each file a blob named by its hash, the
    snapshot of `commit` made of links to the blobs, and refs/main naming the commit. Returns the snapshot."""
    root = cache / ("models--" + repo.replace("/", "--"))
    snapshot = root / "snapshots" / commit
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True)
    for f in sorted(folder.iterdir()):
        if f.is_file() and f.name not in skip:
            data = f.read_bytes()
            blob = root / "blobs" / hashlib.sha256(data).hexdigest()
            blob.write_bytes(data)
            (snapshot / f.name).symlink_to(os.path.relpath(blob, snapshot))
    (root / "refs").mkdir(exist_ok=True)
    (root / "refs" / "main").write_text(commit)
    return snapshot


@pytest.fixture
def hub(tmp_path, monkeypatch, tiny_checkpoint):
    """An offline Hugging Face cache holding REPO (the session's tiny checkpoint). huggingface_hub reads its
    settings when imported, so the in-process tests set its constants too; subprocesses get the variables."""
    cache = tmp_path / "hf" / "hub"
    snapshot = put_in_hub_cache(cache, REPO, Path(tiny_checkpoint))
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return {"cache": cache, "snapshot": snapshot, "env": env}


def test_a_hub_id_is_read_only_where_no_such_path_exists(tmp_path, monkeypatch):
    assert hub_id("Qwen/Qwen2.5-7B-Instruct") == ("Qwen/Qwen2.5-7B-Instruct", None)
    assert hub_id("meta-llama/Llama-3.2-3B-Instruct@main") == ("meta-llama/Llama-3.2-3B-Instruct", "main")
    for not_an_id in (
        "model.gguf",
        "org/model.gguf",
        "./org/name",
        "/org/name",
        "a/b/c",
        "random",
        "kind:target",
        "http://host/v1",
        "",
    ):
        assert hub_id(not_an_id) is None, not_an_id
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "il").mkdir(parents=True)
    assert hub_id("runs/il") is None  # a path that exists is the path


def test_finetune_from_a_hub_id_offline_records_the_id_and_revision(hub, tmp_path):
    """The done-when of point 1, as a user runs it: `eexp finetune --model ORG/NAME` with HF_HUB_OFFLINE=1 and the
    model in the Hugging Face cache, in a process of its own (so huggingface_hub reads the variables itself)."""
    from eexp.io import read_records
    from eexp.prompts import Serializer
    from eexp.stages.imitation import imitation_examples

    il = tmp_path / "il.jsonl"
    il.write_text(
        "".join(
            json.dumps(e) + "\n"
            for t in read_records([DATA / "trajectories.jsonl"])
            for e in imitation_examples(t, Serializer(), True)
        )
    )
    out = tmp_path / "lora"
    env = {**os.environ, **hub["env"], "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "eexp",
            "finetune",
            str(il),
            "--model",
            REPO,
            "-o",
            str(out),
            "--lora",
            "--max-steps",
            "2",
            "--batch-size",
            "4",
            "--max-length",
            "512",
            "-q",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"base model: {REPO} at revision {COMMIT}" in proc.stderr
    card = read_card(out)
    assert card.base_model == REPO and card.base_revision == COMMIT
    assert card.base_sha256 == content_hash([str(hub["snapshot"])])
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == REPO and adapter["revision"] == COMMIT
    # the adapter loads onto its Hub base, found in the cache at the revision it was trained on
    policy = load_policy(str(out))
    assert policy.base == str(hub["snapshot"])
    policy.close()


def test_a_policy_from_a_hub_id_names_the_id_and_revision_in_its_records(hub):
    assert policy_kind(REPO) == "checkpoint"
    for spec in (REPO, f"{REPO}@{COMMIT}"):
        policy = load_policy(spec, act="score")
        meta = policy.describe()
        assert meta["model"] == REPO and meta["model_revision"] == COMMIT
        assert meta["model_sha256"] == content_hash([str(hub["snapshot"])])
        policy.close()


def test_a_model_in_the_cache_is_used_without_asking_the_hub(hub, monkeypatch):
    """HF_HUB_OFFLINE unset, the Hub "reachable" at a loopback port that counts connections: a model the cache
    holds is used as it is. huggingface_hub's default asks the Hub on every load whether the branch moved, so a run
    from a cached Hub id connected out (before, eexp left that to HF_HUB_OFFLINE=1)."""
    connections = []
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def count() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            connections.append(1)
            conn.close()

    thread = threading.Thread(target=count, daemon=True)
    thread.start()
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{listener.getsockname()[1]}")
    try:
        found = resolve_hub_model(REPO)
    finally:
        stop.set()
        thread.join()
        listener.close()
    assert (found.id, found.revision) == (REPO, COMMIT)
    assert Path(found.path) == hub["snapshot"]
    assert connections == []


def test_a_model_not_in_the_cache_offline_is_a_clear_error(hub, tmp_path):
    result = CliRunner().invoke(
        cli, ["finetune", str(DATA / "trajectories.jsonl"), "--model", "eexp-test/absent", "-o", str(tmp_path / "o")]
    )
    assert result.exit_code == 1
    assert "eexp-test/absent: no such local path, and not in the Hugging Face cache" in result.output
    assert "HF_HUB_OFFLINE is set" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "o").exists()
    with pytest.raises(PolicyError, match="not in the Hugging Face cache"):
        load_policy("eexp-test/absent")


def test_pickled_weights_are_refused(hub, tmp_path, tiny_checkpoint):
    """A repository with only pytorch_model.bin: eexp never unpickles a download (and does not fetch the file)."""
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    for f in Path(tiny_checkpoint).iterdir():
        if f.is_file() and not f.name.endswith(".safetensors"):
            shutil.copy(f, pickled / f.name)
    (pickled / "pytorch_model.bin").write_bytes(b"not loaded")
    put_in_hub_cache(hub["cache"], "eexp-test/pickled", pickled)
    with pytest.raises(HubError, match="no safetensors weights"):
        resolve_hub_model("eexp-test/pickled")


def test_model_code_is_refused_unless_asked(hub, tmp_path, tiny_checkpoint):
    remote = tmp_path / "remote"
    shutil.copytree(tiny_checkpoint, remote)
    config = json.loads((remote / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_x.XForCausalLM"}
    (remote / "config.json").write_text(json.dumps(config))
    put_in_hub_cache(hub["cache"], "eexp-test/remote", remote)
    with pytest.raises(HubError, match="asks for its own code"):
        resolve_hub_model("eexp-test/remote")
    assert resolve_hub_model("eexp-test/remote", trust_remote_code=True).revision == COMMIT


def test_rl_resolved_config_names_the_hub_start(hub, tmp_path):
    """rl --model ORG/NAME: the run's config names the Hub id as its start and base (not a cache path)."""
    from eexp.rl.config import RLConfig
    from eexp.rl.recipe import RL

    run = RL(
        RLConfig(
            model=REPO,
            output=str(tmp_path / "rl"),
            env="shop",
            group_size=2,
            tasks_per_step=1,
            max_steps=1,
            episode_steps=1,
            allow_zero_start=True,
            quiet=True,
        )
    )
    run.setup()
    made = run.resolved_config()
    assert made["start"] == REPO and made["base_model"] == REPO
    card = run.card()
    assert card.base_model == REPO and card.base_revision == COMMIT
    run.env.close()
    assert yaml.safe_dump(made)  # plain data


def test_a_path_under_a_local_folder_is_never_a_hub_id(tmp_path, monkeypatch):
    """`runs/sft-final` mistyped, with a `runs/` here, is a missing path: not a Hub id to look up (the run's name sent
    out, and a Hub repo of that name loaded instead)."""
    from eexp.files import hub_id

    monkeypatch.chdir(tmp_path)
    assert hub_id("runs/sft-final") == ("runs/sft-final", None)
    (tmp_path / "runs").mkdir()
    assert hub_id("runs/sft-final") is None and hub_id("runs/sft-final@main") is None
