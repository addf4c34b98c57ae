"""The JSON Schemas (draft 2020-12) of what qmdd answers, one file per qmdctl command, named by its slug
(`collection-add.json`): the method it calls (`rpc`), the shape of its `--format json` output, the error
codes it can return, and for the search commands the method's own reply (`reply`: the socket and HTTP
answer, before qmdctl reshapes it into qmd's). `_problem.json` and `_ndjson.json` are shared by all;
`_embeddings.json` is the `embeddings` method's, which no command calls: OpenAI's request, reply and error
object, as the HTTP door's POST /v1/embeddings takes and gives them.

They live with the protocol because both sides read them: `qmdctl CMD --emit-spec` and the HTTP door's
OpenAPI document (`qmdd.transports.openapi`), so the two cannot drift apart. Standard library only.
"""

from __future__ import annotations

import json
import os

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~10 ms in qmdctl
if TYPE_CHECKING:
    from typing import Any

SCHEMA_DIR = os.path.dirname(os.path.abspath(__file__))


def load_schema(name: str) -> dict[str, Any]:
    """`name`.json, freshly parsed: callers fill in parts of their copy."""
    with open(os.path.join(SCHEMA_DIR, f"{name}.json"), encoding="utf-8") as f:
        doc: dict[str, Any] = json.load(f)
    return doc
