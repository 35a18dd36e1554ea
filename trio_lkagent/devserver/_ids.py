"""LiveKit-style identifiers: a prefix and 12 characters (``protocol/utils/guid``)."""

from __future__ import annotations

import secrets

__all__ = [
    "AGENT_DISPATCH_PREFIX",
    "AGENT_JOB_PREFIX",
    "AGENT_WORKER_PREFIX",
    "NODE_PREFIX",
    "ROOM_PREFIX",
    "new_guid",
]

ROOM_PREFIX = "RM_"
AGENT_WORKER_PREFIX = "AW_"
AGENT_JOB_PREFIX = "AJ_"
AGENT_DISPATCH_PREFIX = "AD_"
NODE_PREFIX = "ND_"

# shortuuid's default alphabet (57 characters, no look-alikes), as guid.New uses.
_ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_SIZE = 12


def new_guid(prefix: str) -> str:
    """A fresh random id such as ``AW_x7Kp2mQ9rT4v``."""
    return prefix + "".join(secrets.choice(_ALPHABET) for _ in range(_SIZE))
