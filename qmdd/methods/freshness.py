"""Searches right after the daemon starts: held until the start-up rescan has caught up.

While the daemon was down, files changed; the watcher's first act is a rescan (a stat per file) that
brings the index up to date, but a command that started the daemon asks at once, and was answered from
the index as it was (a new-user trial: the rescan landed ~0.4 s after the daemon was ready, three
answers later): a deleted note still found, a new one not. A search now waits for the rescans of the
collections it reads, up to CATCH_UP_WAIT_S, and past that answers with a warning saying what may be
missing.
"""

from __future__ import annotations

from typing import Any

from qmdd.methods.call import Call, MethodHandler
from qmdd.methods.services import Services
from qmdd.protocol.errors import ErrorCode

CATCH_UP_WAIT_S = 3.0


def after_catch_up(s: Services, handler: MethodHandler) -> MethodHandler:
    """A search method that waits for the start-up rescans first (see the module's doc)."""
    async def caught_up(params: dict[str, Any], call: Call) -> Any:
        searched = params.get("collections") or None
        behind = s.catch_up.behind(searched)
        if behind:
            behind = await s.catch_up.wait(searched, CATCH_UP_WAIT_S)
        answer = await handler(params, call)
        if behind and isinstance(answer, dict):
            answer.setdefault("warnings", []).append({
                "code": ErrorCode.INDEX_NOT_READY.value,
                "message": f"still rescanning {', '.join(sorted(behind))} since the daemon started: changes made "
                           "while it was down may be missing from these results",
                "hints": ["Search again in a moment; `qmdctl status` shows each collection's watch."]})
        return answer
    return caught_up
