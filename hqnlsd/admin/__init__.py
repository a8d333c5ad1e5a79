"""Administration of a running daemon: what ``hqn_lsa`` talks to.

- `wire`: the admin protocol, JSON lines (one request object, one response object
  per line), versioned, bounded line length; shared by server and client.
- `handler`: every admin command of SPEC 6 mapped onto the licensing engine, the
  permit server and the log switches; changes answered only after their commit.
- `protocol`: the Twisted protocol and factory (UNIX socket and mutual TLS).
- `service`: `make_admin_services`, the listeners the root service adds.
- `daemon`: `AdministeredDaemon`, all the handler and protocol use of the daemon
  (the root service is one; this package never imports `hqnlsd.service`).
- `client`: a small blocking client (stdlib sockets, every wait bounded) for
  ``hqn_lsa``; `commands` and `render`: its command table and its listings.
"""
