"""The web console (`twisted.web`, off by default): read-only pages and a JSON API.

- `hqnlsd.web.recent`: a bounded ring of the latest denials and reclaims, fed by
  the same calls the usage report gets;
- `hqnlsd.web.view`: the figures each page shows, read through the admin
  handler's read-only view of the daemon and its listings (pure);
- `hqnlsd.web.pages`: those figures as escaped HTML (pure);
- `hqnlsd.web.site`: the thin `twisted.web` resources, the bounded HTTP channel
  and the listener (plain HTTP on loopback, or mutual TLS with an admin certificate).
"""
