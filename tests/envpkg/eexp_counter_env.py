"""A counter to bring to a target value: the smallest environment a third party could write for eexp.

It cannot snapshot, so eexp reaches its states by reset + replay. Task ids are `<split>-<n>`.
"""

from eexp.envs.base import Env
from eexp.errors import EnvError


class CounterEnv(Env):
    name = "counter"
    version = "0.1"
    splits = ("train", "test", "ood")
    action_format = "inc | dec"
    max_steps = 10
    options = {}

    def tasks(self, split):
        if split not in self.splits:
            raise EnvError(f"counter has no split {split!r}")
        offset = {"train": 1, "test": 2, "ood": 6}[split]
        return [{"id": f"{split}-{i}", "split": split, "goal": f"bring the counter to {i + offset}"} for i in range(4)]

    def reset(self, task):
        self.target = int(task["goal"].rsplit(" ", 1)[1])
        self.value = 0
        return "counter: 0"

    def step(self, action):
        action = self.canonicalize(action)
        if action not in ("inc", "dec"):
            return f"unknown action {action!r}; use inc or dec. counter: {self.value}", 0.0, False, {"valid": False}
        self.value += 1 if action == "inc" else -1
        done = self.value == self.target
        return f"counter: {self.value}", float(done), done, {"valid": True}

    def admissible(self):
        return ["inc", "dec"]

    def expert(self, task):
        return ["inc"] * int(task["goal"].rsplit(" ", 1)[1])

    def success(self):
        return self.value == self.target
