"""What a chat template's failure means to a run, said once for every objective's encoding (SFT's examples,
eexp.training.data; DPO's pairs, eexp.training.dpo): a template that cannot be parsed is the model's problem and
stops the run (exit 1, naming the model); one that cannot render a record, or a record that cannot be encoded
(a ValueError: too long under --no-truncate, ...), is that record's problem (FILE:LINE, stopped or skipped as
--on-error says)."""

from __future__ import annotations

from typing import Callable, TypeVar

import jinja2

from eexp.errors import TrainingError
from eexp.io import Reader

T = TypeVar("T")


def encode_or_reject(encode: Callable[[], T], item, reader: Reader, model: str, what: str) -> T | None:
    """`encode()` for the record of `item`; None when the record is rejected (`what` names it: "example", "pair")."""
    try:
        return encode()
    except jinja2.TemplateSyntaxError as e:
        raise TrainingError(f"{model}: the chat template cannot be parsed: {e}") from None
    except (ValueError, jinja2.TemplateError) as e:
        reader.reject(
            item.error(str(e) if isinstance(e, ValueError) else f"the chat template cannot render this {what}: {e}")
        )
        return None
