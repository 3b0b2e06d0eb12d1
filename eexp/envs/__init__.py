"""Environments: the protocol, the registry, and how a recorded state is reached again."""

from eexp.envs.base import Env, env_class, make_env, registry

__all__ = ["Env", "env_class", "make_env", "registry"]
