"""The licence client library: take a licence from an hqnlsd server and keep it.

Two APIs on one implementation:

- `LicenceClient` (``hqnlsd.client.api``): Twisted, Deferred-based, with an
  injected reactor; for applications that run a reactor.
- `BlockingLicenceClient` (``hqnlsd.client.blocking``): plain calls that block,
  for every other program. It runs the Twisted API on a private reactor in a
  daemon thread (never the global reactor), so it works beside any program,
  including one that uses Twisted itself, and heartbeats run in the background.

See ``hqnlsd.client.api`` for the server search, redirects, heartbeats and
challenge/response, and ``hqnlsd.client.testing`` for fake servers.
"""

from hqnlsd.client.api import HeldLicence, LicenceClient, PingResult, Process, Product, Retry
from hqnlsd.client.blocking import BlockingLicence, BlockingLicenceClient
from hqnlsd.client.errors import (
    ClientError,
    LicenceDenied,
    NoServer,
    NotGenuineServer,
    ProtocolError,
)
from hqnlsd.client.servers import ServerAddress

__all__ = [
    "BlockingLicence",
    "BlockingLicenceClient",
    "ClientError",
    "HeldLicence",
    "LicenceClient",
    "LicenceDenied",
    "NoServer",
    "NotGenuineServer",
    "PingResult",
    "Process",
    "Product",
    "ProtocolError",
    "Retry",
    "ServerAddress",
]
