"""Wire protocols: thin adapters between sockets and the core."""
