"""What the HTTP door's search routes accept, kept apart from the door so that its OpenAPI description
(`qmdd.transports.openapi`) reads the very rules the door applies instead of a copy of them.

A search body is a JSON object of the method's parameters (`wire.METHODS`, checked by `validate_params`
once the method is called), where qmd's HTTP field names are accepted beside ours.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from qmdd.protocol.errors import ErrorCode, QmddError
from qmdd.protocol.wire import METHODS

SEARCH_METHODS = ("search", "vsearch", "query")
"""Each is served as POST /<method>."""
QMD_ALIASES = {"minScore": "min_score", "collection": "collections"}
"""qmd's HTTP field names, accepted beside ours: qmd's field -> our parameter."""
ONE_OR_A_LIST = frozenset({"collection"})
"""qmd aliases of a list parameter that also take a single value, meaning a list of one."""


def qmd_renamed(where: str, body: Mapping[str, Any], aliases: Mapping[str, str] = QMD_ALIASES) -> dict[str, Any]:
    """`body` with qmd's names (`aliases`: qmd's -> ours) renamed to ours, a single value of a list
    alias made a list of one. A value given under both names is refused: one would be dropped unchecked."""
    params: dict[str, Any] = {}
    for key, value in body.items():
        name = aliases.get(key, key)
        if name in params:
            raise QmddError(ErrorCode.INVALID_INPUT, f"{where}: {name!r} is given twice, under two names; "
                            "send one of them")
        params[name] = [value] if key in ONE_OR_A_LIST and isinstance(value, str) else value
    return params


def search_params(method: str, body: dict[str, Any]) -> dict[str, Any]:
    """The method's parameters from a request body: aliases renamed, unknown fields refused here (with
    the HTTP field names the caller used); types and defaults are the method call's to check."""
    params = qmd_renamed(method, body)
    unknown = set(params) - set(METHODS[method])
    if unknown:
        raise QmddError(ErrorCode.INVALID_INPUT, f"unknown field(s) for {method}: {sorted(unknown)}; it takes "
                        f"{sorted(METHODS[method])}", hints=("`GET /openapi.json` describes every endpoint's fields.",))
    return params
