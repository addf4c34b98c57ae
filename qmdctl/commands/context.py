"""`qmdctl context add|list|rm`."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from qmdd.protocol.errors import ErrorCode, QmddError

if TYPE_CHECKING:
    from qmdctl.invocation import Invocation
    from qmdctl.render import Output


def add(inv: Invocation) -> int:
    words: list[str] = inv.args["args"]
    if len(words) == 1:
        target, text = ".", words[0]
    elif len(words) == 2:
        target, text = words
    else:
        raise QmddError(ErrorCode.USAGE_ERROR, "usage: qmdctl context add [TARGET] TEXT (quote the text)")
    answer = inv.client.call("context.add", {"target": target, "text": text, "cwd": os.getcwd()})
    inv.output.value(answer, lambda a: _added_text(inv.output, a))
    return 0


def _added_text(out: Output, answer: dict[str, Any]) -> None:
    """qmd's words (scripts grep "✓ Added context")."""
    target = answer["target"]
    if target == "/":
        out.line(f"{out.style('✓', 'green')} Set global context")
    else:
        root = " (collection root)" if target.endswith("/") and target.count("/") == 3 else ""
        out.line(f"{out.style('✓', 'green')} Added context for: {target}{root}")
    out.line(out.style(f"Context: {answer['text']}", "dim"))


def list_(inv: Invocation) -> int:
    rows: list[dict[str, Any]] = inv.client.call("context.list")
    out = inv.output
    if out.fmt == "text":
        if not rows:
            out.line("No contexts. Add one with: qmdctl context add qmd://collection/path \"description\"")
        for r in rows:
            out.line(f"{out.style(r['target'], 'cyan')}\n  {r['text']}")
    else:
        out.table(rows, ["target", "collection", "path", "text"])
    return 0


def remove(inv: Invocation) -> int:
    answer = inv.client.call("context.remove", {"target": inv.args["target"], "cwd": os.getcwd()})
    inv.output.value(answer, lambda a: inv.output.line(f"{inv.output.style('✓', 'green')} Removed context for: "
                                                       f"{a['target']}"))
    return 0
