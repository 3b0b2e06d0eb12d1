"""A perfect world model of shop behind IWM's prompt, for a stub server's `free_text` (tests/openai_stub.py): it finds
the state a world-model prompt shows (the task by its goal, the page by its text: every page it has answered is kept
with shop's state behind it, and a task's first page is its reset) and answers the page shop shows after the action.
A dream of it (`--env dream:URL@shop`) over its tasks is shop itself, whatever the policy does.

The prompt names no task, only its goal, and shop has tasks that share a goal over other products (346 goals of
train's 5,000 tasks are two tasks' or more): the simulator is given the tasks a run plays, whose goals must differ."""

from __future__ import annotations

import re

from eexp.envs.shop import ShopEnv
from eexp.prompts import ADMISSIBLE_HEADING, OBSERVATION_HEADING, WORLD_MODEL_SYSTEM

PAGE = re.compile(rf"\n{OBSERVATION_HEADING}(.*?)\n\n(?:{ADMISSIBLE_HEADING}|Action: )", re.DOTALL)


class ShopSimulator:
    def __init__(self, tasks: list[dict]):
        self.shop = ShopEnv()
        self.tasks = {t["goal"]: t for t in tasks}
        assert len(self.tasks) == len(tasks), "tasks that share a goal: the prompt cannot tell them apart"
        self.states: dict[tuple[str, str], object] = {}
        self.predictions = 0  # world-model prompts answered

    def __call__(self, body: dict) -> str:
        prompt = body["messages"][-1]["content"]
        if body["messages"][0]["content"] != WORLD_MODEL_SYSTEM:  # the http backend's probes at its start
            return "ok"
        goal = re.match(r"Task: (.*)\n", prompt).group(1)
        page = PAGE.search(prompt).group(1)
        action = prompt.rsplit("\nAction: ", 1)[1]
        if (goal, page) in self.states:
            self.shop.restore(self.states[goal, page])
        else:
            assert self.shop.reset(self.tasks[goal]) == page, "a page this simulator never showed"
        observation = self.shop.step(action)[0]
        self.states[goal, observation] = self.shop.snapshot()
        self.predictions += 1
        return "Observation: " + observation
