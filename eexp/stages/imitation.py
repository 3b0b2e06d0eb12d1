"""imitation-data: one IL example per expert step (state -> expert action).

With `observation_loss` (the ActObs baseline, arXiv 2609.20715: imitation with a loss on the observations too, no
new data and no alternatives) each example goes on past the action: a user turn asks what the environment shows
after it, and an assistant turn `Observation: <next observation>` answers with the observation the expert
trajectory recorded next. `finetune` trains on every assistant turn whose weight is not 0 (eexp.training.
data.target_spans), so the observation tokens get loss with no change to finetune. The policy prompt is the IL prompt
unchanged (eval renders the same two messages and the model answers `Action: ...`), and the observation turn only
ever follows a user turn that asks for it, so a model trained on these still answers with an action where an action
is asked (the same format separation as the world-model examples).
"""

from __future__ import annotations

from typing import Iterator

from eexp.prompts import Serializer, format_action, format_observation
from eexp.records import example_meta, trajectory_states
from eexp.runner import RecordError

# The user turn between the expert action and the observation target of an --observation-loss example.
OBSERVATION_PROMPT = "What does the environment show after this action? Answer `Observation: <observation>`."


def imitation_examples(
    trajectory: dict,
    serializer: Serializer,
    include_failed: bool = False,
    count=lambda name: None,
    *,
    observation_loss: bool = False,
    observation_weight: float = 1.0,
) -> Iterator[dict]:
    """Yields nothing for an unsuccessful trajectory unless include_failed (imitating failures teaches them).

    `observation_loss`: every example also trains on the next observation (clipped like the current observation of
    a rendered state, to serializer.max_observation_chars), with loss weight `observation_weight`."""
    if not trajectory["success"] and not include_failed:
        count("unsuccessful_skipped")
        return
    steps = trajectory["steps"]
    if not steps:
        raise RecordError("steps: empty, nothing to imitate")
    extra = {"observation_loss": True, "observation_weight": observation_weight} if observation_loss else None
    for step, state, action in trajectory_states(trajectory):
        messages = serializer.policy_messages(state) + [{"role": "assistant", "content": format_action(action)}]
        if observation_loss:
            next_observation = (
                steps[step + 1]["observation"] if step + 1 < len(steps) else trajectory["final_observation"]
            )
            target = {
                "role": "assistant",
                "content": format_observation(next_observation, serializer.max_observation_chars),
            }
            if observation_weight != 1:
                target["weight"] = observation_weight
            messages += [{"role": "user", "content": OBSERVATION_PROMPT}, target]
        yield {
            "id": f"{'ilobs' if observation_loss else 'il'}:{trajectory['id']}#{step}",
            "source_id": trajectory["id"],
            "messages": messages,
            "meta": example_meta(
                stage="imitation-data",
                kind="il-obs" if observation_loss else "il",
                env=trajectory["env"]["name"],
                env_version=trajectory["env"]["version"],
                task_id=trajectory["task"]["id"],
                trajectory_id=trajectory["id"],
                step=step,
                action=action,
                action_source="expert",
                serializer=serializer.json,
                extra=extra,
            ),
        }
