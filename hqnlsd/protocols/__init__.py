"""Wire protocols: thin adapters between sockets and the core.

The client text protocol is split along its seams: `quoting` (how a value is
written), `replies` (the reply model and its bytes), `tokenizer` (a line's
words), `grammar` (request lines into typed commands, and HELP), `client_side`
(what a client program writes and reads), `client` (the daemon's line protocol)
and `signing` (signed replies).
"""

#: The client protocol's TCP port: where daemons listen and clients ask, unless told.
DEFAULT_CLIENT_PORT = 1236
