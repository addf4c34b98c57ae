"""Fault injection for tests and soak runs: QMDD_FAULTS="point=count,..." makes `check(point)` raise
the first `count` times it is reached in this process. Unset (always, in normal use) it costs a dict
lookup."""

from __future__ import annotations

import os


class InjectedFault(RuntimeError):
    pass


def _parse_pairs(spec: str) -> list[tuple[str, str]]:
    pairs = []
    for part in spec.split(","):
        point, _, value = part.partition("=")
        if point.strip():
            pairs.append((point.strip(), value.strip()))
    return pairs


_armed = {point: int(count or 1) for point, count in _parse_pairs(os.environ.get("QMDD_FAULTS", ""))}


def check(point: str) -> None:
    if _armed.get(point, 0) > 0:
        _armed[point] -= 1
        raise InjectedFault(f"injected fault at {point}")


_pauses = {point: float(seconds) for point, seconds in _parse_pairs(os.environ.get("QMDD_FAULT_PAUSES", ""))}


async def pause(point: str) -> None:
    """QMDD_FAULT_PAUSES="point=seconds": the first time `point` is reached, wait that long (to hold a
    request in flight while a test kills the daemon)."""
    seconds = _pauses.pop(point, 0.0)
    if seconds > 0:
        import trio

        await trio.sleep(seconds)
