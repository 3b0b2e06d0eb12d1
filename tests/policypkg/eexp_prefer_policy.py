"""The smallest policy backend a third party could write for eexp: `--policy prefer:WORD` takes the first
admissible action that contains WORD (the first admissible action when none does).

A loader gets the text after `prefer:`, the --policy-arg options and the stage's settings, and returns an
`eexp.policies.Policy`; problems the user can act on are `PolicyError`s.
"""

from eexp.errors import PolicyError
from eexp.policies import Policy, Reply
from eexp.prompts import format_action

OPTIONS = {"case": "insensitive"}  # --policy-arg case=sensitive|insensitive


class PreferPolicy(Policy):
    def __init__(self, word: str, case: str):
        self.word, self.case = word, case
        self.name = f"prefer-{word}"

    def _contains(self, action: str) -> bool:
        if self.case == "sensitive":
            return self.word in action
        return self.word.lower() in action.lower()

    def act(self, messages, *, admissible, seed, temperature=0.0, context=None):
        if not admissible:
            return Reply(text="", action=None, valid=False, finish_reason="error: no admissible actions")
        action = next((a for a in admissible if self._contains(a)), admissible[0])
        return Reply(text=format_action(action), action=action, valid=True, finish_reason="stop")

    def generate(self, messages, *, seed, temperature, top_p=1.0, max_tokens=256):
        return Reply(text=f"I prefer {self.word}.", action=None, finish_reason="stop")

    def describe(self):
        return {"model": self.name, "model_sha256": "", "backend": "prefer"}


def load(target, args, *, act, max_tokens, top_p):
    if not target:
        raise PolicyError("prefer: give a word, --policy prefer:WORD")
    if act not in (None, "generate"):
        raise PolicyError(f"--act {act} is not available with the prefer backend (available: generate)")
    unknown = sorted(set(args) - set(OPTIONS))
    if unknown:
        raise PolicyError(f"prefer: unknown --policy-arg {', '.join(unknown)} (known: {', '.join(OPTIONS)})")
    return PreferPolicy(target, args.get("case", OPTIONS["case"]))
