"""A policy that writes one scripted reply, loaded in place of any `--policy` (for reflect's command-level tests)."""

from __future__ import annotations


def use_scripted_reflector(monkeypatch, text: str) -> None:
    """Every policy eexp loads from now on in this test replies `text` to every generate call."""
    import eexp.policies
    from eexp.policies.base import Policy, Reply

    class Scripted(Policy):
        def generate(self, messages, **kw):
            return Reply(text=text, action=None, finish_reason="stop")

        def describe(self):
            return {"model": "scripted"}

        def close(self):
            pass

    monkeypatch.setattr(eexp.policies, "load_policy", lambda *a, **k: Scripted())
