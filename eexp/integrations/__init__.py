"""Adapters that hand eexp environments and checkpoints to other engines (SkyRL)."""
