"""`--policy-arg key=value` values arrive as strings; each backend declares the keys it takes and their types."""

from __future__ import annotations

from typing import Any

from eexp.errors import PolicyError

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def take_args(args: dict | None, schema: dict[str, tuple[type, Any]], backend: str) -> dict[str, Any]:
    """Typed values for every key of `schema` ({key: (type, default)}); an unknown key or a bad value is an error
    that names the keys the backend knows."""
    args = dict(args or {})
    unknown = sorted(set(args) - set(schema))
    if unknown:
        raise PolicyError(
            f"--policy-arg {unknown[0]!r} is not an option of the {backend} backend "
            f"(options: {', '.join(sorted(schema))})"
        )
    out = {}
    for key, (kind, default) in schema.items():
        if key not in args or args[key] is None:
            out[key] = default
            continue
        value = args[key]
        if not isinstance(value, str):  # from a YAML config or Python: already typed
            out[key] = value
            continue
        try:
            if kind is bool:
                low = value.strip().lower()
                if low not in _TRUE | _FALSE:
                    raise ValueError
                out[key] = low in _TRUE
            else:
                out[key] = kind(value)
        except ValueError:
            raise PolicyError(f"--policy-arg {key}={value!r}: expected {kind.__name__}") from None
    return out
