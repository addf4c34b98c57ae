"""MCP over HTTP, before the SDK's app sees a request: what the door's rate limit counts.

A session is many POSTs of protocol (initialize, its notification, tools/list, ping, resources/list)
around the tool calls that do the work: counting every POST against the door's limit (60 a minute,
burst 10) cut an ordinary agent session short. Only `tools/call` and `initialize` requests take a token:
each `initialize` opens a session that lives until it is closed or idle for 30 minutes, and uncounted,
one client opened the SDK's 10,000 in 40 s (400 MB), refusing everyone else's. The body they are found
in, read by the door, is given to the SDK's app again.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

Receive = Callable[[], Awaitable[dict[str, Any]]]


COUNTED = frozenset({"tools/call", "initialize"})


def counted(body: bytes) -> bool:
    """Whether a POST's body (one JSON-RPC message or a batch) holds a request the rate limit counts
    (COUNTED). A body that is not JSON-RPC counts for nothing here: the SDK refuses it."""
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return False
    messages = value if isinstance(value, list) else [value]
    return any(isinstance(m, dict) and m.get("method") in COUNTED for m in messages)


def replaying(body: bytes, receive: Receive) -> Receive:
    """A receive that gives the app the body the door has read, then whatever the client sends next."""
    sent = False

    async def again() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()
    return again
