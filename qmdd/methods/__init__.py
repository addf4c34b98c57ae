"""The request layer: every method a client can call, built from the daemon's services, served alike by
every door (the socket RPC, MCP, and whatever comes next). No module here imports a transport."""
