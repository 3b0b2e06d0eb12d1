"""The model card: what a model is and how it was made, written once and read back by one function per container.

A checkpoint folder holds its card as `card.yaml` (`write_card` / `read_card`); a GGUF file holds the same card as
metadata, one `eexp.<field>` key per field (`Card.gguf_fields` / `Card.from_gguf`), every value a string (JSON for
anything but text), because llama.cpp hands back every metadata value as a string. `eexp export` copies the card of
the checkpoint it exports into the GGUF and adds what export knows (source, hashes, quant); the llama.cpp and
transformers policies read the serializer from it, so `eval` renders states the way the model was trained.

Parsing is strict: an unknown key, a setting the serializer does not have, or a value of the wrong type is a
`CardError` naming the key and the file, never silently dropped.

Every hash is `eexp.files.content_hash` (sha256 over a model's files, names and bytes), the value a run of
that model records as `meta.model_sha256`: a GGUF's `eexp.source_sha256` joins the records of the checkpoint it was
exported from, and `base_sha256` the records of the base model. A data file's (the card's `data`: what a finetune
trained on) is the sha256 of its bytes, as `sha256sum FILE` prints it.

Every checkpoint folder eexp makes (`finetune`, `rl`, `init-model`, `import-model`) holds a card.yaml. A folder
made before the card keeps its provenance in config.yaml; `read_card` takes the card's fields from there.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Mapping

import yaml

from eexp.errors import CardError, SerializerError, yaml_problem
from eexp.io import write_atomic
from eexp.prompts import Serializer

CARD_FILE = "card.yaml"
LEGACY_FILE = "config.yaml"
GGUF_PREFIX = "eexp."
# objective and beta: a phase trained with --objective dpo (an SFT phase has neither); examples_per_update, epochs
# (the epochs its updates made) and loss_norm: finetune's phases (eexp.training.recipe.Finetune._phase_card)
PHASE_KEYS = (
    "name",
    "updates",
    "examples",
    "tokens",
    "truncated",
    "skipped",
    "objective",
    "beta",
    "examples_per_update",
    "epochs",
    "loss_norm",
)
# the files a run trained (and validated) on (finetune: eexp.training.recipe.Finetune): each one's role (warmup, train,
# val), absolute path, and sha256 of its bytes (as `sha256sum FILE` prints it; none for stdin)
DATA_KEYS = ("role", "file", "sha256")
# init-model --pretrain's record (eexp.models.pretrain.pretrain, and the corpus files it read)
# what trained the model (finetune, rl: eexp.training.machine.machine_card): training diverges between CPUs (an
# AVX512 machine and an AVX2 one sum in another order), so a seed's result is checked against a run on the same kind
# of machine
MACHINE_KEYS = ("cpu", "cpuid", "cpu_capability", "mkl_cbwr", "threads", "torch", "device")
PRETRAIN_KEYS = (
    "corpus",
    "steps",
    "block",
    "batch",
    "lr",
    "seed",
    "pages",
    "tokens",
    "held_out_pages",
    "held_out_loss_before",
    "final_train_loss",
    "held_out_loss",
)


@dataclass(frozen=True)
class Card:
    command: str | None = None  # what made the model: init-model, import-model, finetune, rl, merge
    eexp_version: str | None = None  # of the eexp that wrote the card (of the exporter, in a GGUF)
    serializer: dict | None = None  # the Serializer settings the training examples were rendered with
    base_model: str | None = None  # what training started from: a checkpoint folder or a GGUF file (absolute)
    base_sha256: str | None = None  # content_hash of base_model
    base_import: str | None = None  # a GGUF base's import, the checkpoint folder that was loaded and trained
    base_revision: str | None = None  # a Hugging Face Hub base (base_model is its id): the commit used
    from_scratch: bool = False  # the weights began random (init-model, or trained from such a model)
    method: str | None = None  # full, lora, qlora
    precision: str | None = None  # bf16, fp32
    gradient_checkpointing: str | None = None  # finetune, rl: "on: ..." or "off: ..." and why (asked, or estimated)
    phases: list = field(default_factory=list)  # [{name, updates, examples?, tokens?, truncated?, skipped?, ...}]
    updates: int | None = None
    best_step: int | None = None
    best_val_loss: float | None = None
    data: list | None = None  # finetune: the files trained on, [{role, file, sha256}] (DATA_KEYS; `data_file`)
    source: str | None = None  # GGUF: the checkpoint exported; import: the GGUF imported
    source_sha256: str | None = None  # content_hash of what was exported (with its adapter) or imported
    adapter: str | None = None  # GGUF: the LoRA adapter merged in (or exported alone)
    adapter_sha256: str | None = None
    quant: str | None = None  # GGUF: the tensor type written
    pretrain: dict | None = None  # init-model --pretrain: {corpus, steps, block, batch, lr, seed, pages, ...}
    # The longest thought among the training targets (`Thought: ...` up to its `Action:` line), in the model's
    # tokens: eval --act think's thought budget (eexp.policies.base.thought_budget). None: no thought was trained.
    thought_tokens: int | None = None
    machine: dict | None = None  # finetune, rl: the machine and kernels that trained it

    # -- dict (card.yaml) --

    def to_dict(self) -> dict:
        """The fields that are set, in declaration order."""
        return {
            k: v
            for k, v in asdict(self).items()
            if v is not None and v != [] and not (k == "from_scratch" and v is False)
        }

    @classmethod
    def from_dict(cls, data: Any, where: str) -> "Card":
        if data is None:
            return cls()
        if not isinstance(data, dict):
            raise CardError(f"{where}: the model card must be a mapping of key: value, not {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        for key in data:
            if key not in known:
                raise CardError(f"{where}: unknown key {key!r} in the model card (known: {', '.join(sorted(known))})")
        return cls(**{k: _check(k, v, where) for k, v in data.items()})

    # -- GGUF metadata --

    def gguf_fields(self) -> dict[str, str]:
        """The card as GGUF metadata: `eexp.<field>` -> a string (text as is, anything else as compact JSON)."""
        return {
            gguf_key(k): v if isinstance(v, str) else json.dumps(v, sort_keys=True, separators=(",", ":"))
            for k, v in self.to_dict().items()
        }

    @classmethod
    def from_gguf(cls, metadata: Mapping[str, Any], where: str) -> "Card":
        """The card in a GGUF's metadata (every `eexp.*` key; values as strings, as llama.cpp returns them)."""
        by_key = {gguf_key(f.name): f for f in fields(cls)}
        data = {}
        for key, value in metadata.items():
            if not key.startswith(GGUF_PREFIX):
                continue
            f = by_key.get(key)
            if f is None:
                raise CardError(
                    f"{where}: unknown metadata key {key!r} in the model card (known: {', '.join(sorted(by_key))})"
                )
            if isinstance(value, str) and f.type not in ("str | None",):
                try:
                    value = json.loads(value)
                except json.JSONDecodeError as e:
                    raise CardError(f"{where}: metadata {key} is not JSON ({e})") from None
            data[f.name] = value
        return cls.from_dict(data, where)


def gguf_key(name: str) -> str:
    """The GGUF metadata key of a card field (`eexp_version` is `eexp.version`)."""
    return GGUF_PREFIX + ("version" if name == "eexp_version" else name)


def _check(key: str, value: Any, where: str) -> Any:
    """A field's value after the checks of its type; CardError names the key and the file."""
    if value is None:
        return False if key == "from_scratch" else None
    if key == "serializer":
        return check_serializer(value, where)
    if key in ("phases", "data"):  # lists of mappings, each of known keys
        known = PHASE_KEYS if key == "phases" else DATA_KEYS
        if not isinstance(value, list) or not all(isinstance(entry, dict) for entry in value):
            raise CardError(f"{where}: {key} must be a list of mappings")
        for entry in value:
            unknown = sorted(set(entry) - set(known))
            if unknown:
                raise CardError(f"{where}: {key}: unknown key {unknown[0]!r} (known: {', '.join(known)})")
        return value
    if key in ("machine", "pretrain"):
        known = MACHINE_KEYS if key == "machine" else PRETRAIN_KEYS
        if not isinstance(value, dict):
            raise CardError(f"{where}: {key} must be a mapping, not {type(value).__name__}")
        unknown = sorted(set(value) - set(known))
        if unknown:
            raise CardError(f"{where}: {key}: unknown key {unknown[0]!r} (known: {', '.join(known)})")
        return value
    kinds = {
        "from_scratch": bool,
        "updates": int,
        "best_step": int,
        "best_val_loss": (int, float),
        "thought_tokens": int,
    }
    kind = kinds.get(key, str)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        expected = {bool: "true or false", int: "an integer", str: "a string"}.get(kind, "a number")
        raise CardError(f"{where}: {key} must be {expected}, not {value!r}")
    return value


def data_file(role: str, path: str) -> dict:
    """The card's entry of a data file: its role, absolute path and the sha256 of its bytes (none for stdin or a
    pipe, which cannot be read again)."""
    if path == "-" or not os.path.isfile(path):
        return {"role": role, "file": path}
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):  # hashlib.file_digest is Python 3.11's
            digest.update(block)
    return {"role": role, "file": os.path.abspath(path), "sha256": digest.hexdigest()}


def check_serializer(value: Any, where: str) -> dict:
    """Serializer settings, strictly: every key one of the Serializer's fields, with a value of its type."""
    if isinstance(value, str):  # as a GGUF or an example's meta holds it
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise CardError(f"{where}: serializer is not JSON ({e})") from None
    if not isinstance(value, dict):
        raise CardError(f"{where}: serializer must be a mapping of settings, not {type(value).__name__}")
    try:
        Serializer.from_dict(value, f"{where}: serializer")  # the one strict reading of the settings
    except SerializerError as e:
        raise CardError(str(e)) from None
    return dict(value)


# --- a checkpoint folder ------------------------------------------------------------------------------------------


def read_card(folder: str | os.PathLike | None) -> Card:
    """The card of a checkpoint folder: card.yaml, else the provenance in config.yaml; an empty card for anything
    else (no folder, a file, a folder with neither)."""
    if not folder or not os.path.isdir(folder):
        return Card()
    path = os.path.join(folder, CARD_FILE)
    if os.path.isfile(path):
        return Card.from_dict(_read_yaml(path), path)
    legacy = os.path.join(folder, LEGACY_FILE)
    if os.path.isfile(legacy):
        return _from_config(_read_yaml(legacy), legacy)
    return Card()


def write_card(folder: str | os.PathLike, card: Card) -> str:
    """Write `folder/card.yaml` (whole or not at all); returns its path."""
    path = os.path.join(folder, CARD_FILE)
    write_atomic(path, yaml.safe_dump(card.to_dict(), sort_keys=False, allow_unicode=True).encode())
    return path


def read_model_card(path: str | os.PathLike | None) -> Card:
    """The card of a model named by a local path: a checkpoint folder's (read_card) or a GGUF file's (its `eexp.*`
    metadata, read with the gguf package without loading the model); an empty card for anything else."""
    if path and os.path.isfile(path) and str(path).lower().endswith(".gguf"):
        try:
            from gguf import GGUFReader

            fields_ = GGUFReader(str(path)).fields
        except ImportError:
            return Card()
        except Exception as e:  # the gguf package raises plain ValueError/IndexError on a damaged file
            raise CardError(f"{path}: cannot read the GGUF metadata ({e})") from None
        return Card.from_gguf({k: f.contents() for k, f in fields_.items() if k.startswith(GGUF_PREFIX)}, str(path))
    return read_card(path)


def _read_yaml(path: str) -> Any:
    try:
        with open(path) as f:
            return yaml.safe_load(f)
    except OSError as e:
        raise CardError(f"{path}: cannot read ({e.strerror})") from None
    except (UnicodeDecodeError, yaml.YAMLError) as e:
        raise CardError(yaml_problem(e, path)) from None


def _from_config(data: Any, where: str) -> Card:
    """The card's fields from a config.yaml that holds options and provenance together (init-model's,
    import-model's and finetune's from before card.yaml): the fields present are taken (strictly checked), the options
    around them are not the card's business."""
    if not isinstance(data, dict):
        return Card()
    known = {f.name for f in fields(Card)}
    card = {k: v for k, v in data.items() if k in known}
    if data.get("command") == "init-model":
        card["from_scratch"] = True
    return Card.from_dict(card, where)
