"""Administration of a running daemon: what ``hqn_lsa`` talks to.

- `wire`: the admin protocol, JSON lines (one request object, one response object
  per line), versioned, bounded line length; shared by server and client.
- `handler`: `AdminHandler`, every admin command of SPEC 6 on the live daemon; a
  thin composition of the parts below.
- `table`: the one table of admin commands (what runs each, whether it changes
  state, whether a domain member forwards it); `context`: `AdminError`, the
  argument readers, the admin log, the command running now.
- `listings` (``id``, ``sinfo``, ``listhqn``, ``listp``, ``listu``) and `numbering`
  (the products' ``listp`` numbers); `targets`: the product or licence a command
  names, and the engine holding it.
- `changes` (a product's settings and licences, `policywords` for ``policy``) and
  `lifecycle` (``loglevel``, ``reread``, ``reinit``, ``recover``, ``down``);
  `durability`: a change answered only once committed (`hqnlsd.commit`).
- `forwarding`: a domain product's change made on the domain's acting primary.
- `protocol`: the Twisted protocol and factory (UNIX socket and mutual TLS).
- `service`: `make_admin_services`, the listeners the root service adds.
- `daemon`: `AdministeredDaemon`, all the handler and protocol use of the daemon
  (the root service is one; this package never imports `hqnlsd.service`).
- `client`: a small blocking client (stdlib sockets, every wait bounded) for
  ``hqn_lsa``; `commands` and `render`: its command table and its listings.
"""
