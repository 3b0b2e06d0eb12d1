"""imitation-data: one IL example per expert step (state -> expert action)."""

from __future__ import annotations

from typing import Iterator

from eexp.io import RecordError
from eexp.prompts import Serializer, format_action
from eexp.records import example_meta, trajectory_states


def imitation_examples(trajectory: dict, serializer: Serializer, include_failed: bool = False,
                       count=lambda name: None) -> Iterator[dict]:
    """Yields nothing for an unsuccessful trajectory unless include_failed (imitating failures teaches them)."""
    if not trajectory["success"] and not include_failed:
        count("unsuccessful_skipped")
        return
    if not trajectory["steps"]:
        raise RecordError("steps: empty, nothing to imitate")
    for step, state, action in trajectory_states(trajectory):
        yield {
            "id": f"il:{trajectory['id']}#{step}",
            "source_id": trajectory["id"],
            "messages": serializer.policy_messages(state) + [
                {"role": "assistant", "content": format_action(action)}],
            "meta": example_meta(stage="imitation-data", kind="il", env=trajectory["env"]["name"],
                                 env_version=trajectory["env"]["version"], task_id=trajectory["task"]["id"],
                                 trajectory_id=trajectory["id"], step=step, action=action, action_source="expert",
                                 serializer=serializer.to_json()),
        }
