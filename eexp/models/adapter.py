"""The base checkpoint of a LoRA adapter folder: the one resolution the transformers backend (eexp.policies.hf), `eexp
merge` and `eexp rl` (a LoRA --model) share. Here, below the policies, so that a module of eexp/models/ needs
nothing from eexp/policies/."""

from __future__ import annotations

import json
import os

from eexp.errors import HubError, ModelError, PolicyError
from eexp.files import hub_id, resolve_hub_model
from eexp.models.import_gguf import adapter_base


def base_of(
    adapter: str, override: str = "", trust_remote_code: bool = False, override_with: str = "--policy-arg base=DIR"
) -> str:
    """The local folder of `adapter`'s base: `override` where given, else adapter_config.json's
    base_model_name_or_path (relative to the adapter where it is a folder there): a Hub id's snapshot at the
    revision trained on, a GGUF's import (from the cache, or imported again), or the folder itself. A base that cannot
    be had is a PolicyError, which names the adapter and the option that gives one (`override_with`)."""
    revision = None
    if override:
        base = override
    else:
        try:
            with open(os.path.join(adapter, "adapter_config.json")) as f:
                conf = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise PolicyError(f"{adapter}/adapter_config.json: cannot read ({e})") from None
        base, revision = conf.get("base_model_name_or_path") or "", conf.get("revision")
        if base and not os.path.isabs(base) and os.path.isdir(os.path.join(adapter, base)):
            base = os.path.join(adapter, base)
    if hub_id(base):  # a Hub base (finetune --model ORG/NAME): its snapshot, at the revision trained on
        spec = f"{base}@{revision}" if revision and "@" not in base else base
        try:
            return resolve_hub_model(spec, trust_remote_code=trust_remote_code).path
        except HubError as e:
            raise PolicyError(f"{adapter}: the adapter's base: {e}") from None
    if not (base and os.path.isdir(base)):  # a GGUF base (finetune --model X.gguf): its import, from the cache
        try:
            base = adapter_base(adapter, base) or base
        except ModelError as e:
            raise PolicyError(f"{adapter}: {e}") from None
    if not base or not os.path.isdir(base):
        raise PolicyError(
            f"{adapter}: the adapter's base model {base!r} is not a local directory "
            f"(nothing is downloaded; give it with {override_with})"
        )
    return base
