"""Fault injection for tests and soak runs: QMDD_FAULTS="point=count,..." makes `check(point)` raise
the first `count` times it is reached in this process. Unset (always, in normal use) it costs a dict
lookup."""

from __future__ import annotations

import os


class InjectedFault(RuntimeError):
    pass


def _parse(spec: str) -> dict[str, int]:
    armed: dict[str, int] = {}
    for part in spec.split(","):
        point, _, count = part.partition("=")
        if point.strip():
            armed[point.strip()] = int(count or 1)
    return armed


_armed = _parse(os.environ.get("QMDD_FAULTS", ""))


def check(point: str) -> None:
    if _armed.get(point, 0) > 0:
        _armed[point] -= 1
        raise InjectedFault(f"injected fault at {point}")
