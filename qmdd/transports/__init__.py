"""The doors of the daemon: the socket RPC (framing, listener, systemd activation) and the MCP host."""
