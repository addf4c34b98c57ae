"""What a method gets besides its params, whichever door the request came through."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import trio

Emit = Callable[[str, Any], Awaitable[None]]
Receive = Callable[[], Awaitable[Mapping[str, Any] | None]]
"""The client's next frame, decoded (a map with a string type) but unchecked: a session method decides
what it accepts. None once the client has closed."""


async def _no_more_frames() -> None:
    return None


@dataclass(frozen=True)
class Call:
    """A way to stream parts of the answer back (progress, result batches, session lines) and, for a
    method that turns its connection into a session (`mcp.session`), to read the client's next frame."""

    emit: Emit
    receive: Receive = _no_more_frames
    trace_id: str = "-"
    generation: tuple[int, int] | None = None
    """The index generation the answer is worked out at, where the result cache read it before the work
    (`qmdd.methods.cache`): the steps below that key what they remember on it need not read it again."""


MethodHandler = Callable[[dict[str, Any], Call], Awaitable[Any]]


def client_gone(exc: BaseException) -> bool:
    """True when every failure inside `exc` is the client's stream breaking (it disconnected): an ended
    call, not a failed one."""
    if isinstance(exc, BaseExceptionGroup):
        return all(client_gone(e) for e in exc.exceptions)
    return isinstance(exc, (trio.BrokenResourceError, trio.ClosedResourceError))

STREAM_BATCH = 500


async def stream_long_list(call: Call, answer: dict[str, Any], key: str) -> None:
    """Send a long list as `key` items of STREAM_BATCH entries, so no reply frame grows without bound;
    the final reply then carries the list empty and `streamed: key`."""
    entries = answer[key]
    if len(entries) <= STREAM_BATCH:
        return
    for start in range(0, len(entries), STREAM_BATCH):
        await call.emit(key, entries[start:start + STREAM_BATCH])
    answer[key] = []
    answer["streamed"] = key


def whole(answer: Any, items: list[tuple[str, Any]]) -> Any:
    """A method's answer with the list it streamed (see `stream_long_list`) joined back in, for doors
    that reply in one piece."""
    if isinstance(answer, dict) and "streamed" in answer:
        key = answer.pop("streamed")
        answer[key] = [entry for kind, batch in items if kind == key for entry in batch]
    return answer


def planned(would: dict[str, Any]) -> dict[str, Any]:
    """The answer to a `dry_run: true` request (protocol.wire.DRY_RUN_METHODS): every check passed,
    nothing changed; `would` is what the request would have done."""
    return {"dry_run": True, "would": would}
