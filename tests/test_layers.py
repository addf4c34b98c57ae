"""The request layer's shape: every declared method is served, and the one private MCP SDK attribute
the MCP door relies on is still there."""

from __future__ import annotations

import inspect
from types import SimpleNamespace
from typing import cast

from qmdd.methods.services import Services
from qmdd.methods.table import SESSION_METHODS, method_table
from qmdd.protocol.wire import METHODS


def test_the_method_table_serves_exactly_the_declared_methods() -> None:
    table = method_table(cast(Services, SimpleNamespace()))  # binding touches no service
    assert set(table) | SESSION_METHODS == set(METHODS)
    assert not set(table) & SESSION_METHODS


def test_the_mcp_sdk_still_has_the_low_level_server_the_session_adapter_uses() -> None:
    from mcp.server.mcpserver import MCPServer

    from qmdd.transports.mcp_host import session_server

    lowlevel = session_server(MCPServer(name="probe"))
    parameters = list(inspect.signature(lowlevel.run).parameters)
    assert parameters[:3] == ["read_stream", "write_stream", "initialization_options"]
    assert callable(lowlevel.create_initialization_options)
    lowlevel.instructions = "probe"  # set per session from the collections
    assert lowlevel.create_initialization_options().instructions == "probe"


def test_the_frame_size_hint_names_the_wire_limit() -> None:
    from qmdd.protocol.errors import ErrorCode
    from qmdd.protocol.wire import MAX_FRAME_BYTES

    # The catalogue cannot import the wire (the wire imports it): the number is written out there.
    assert f" {MAX_FRAME_BYTES} bytes" in ErrorCode.FRAME_TOO_LARGE.spec.hints[0]
