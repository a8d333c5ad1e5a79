"""Who asks for a licence, or holds one: the one record of a client process.

A REQUEST names its process (user, host, pid, uid, group, hostid, its client
token) and arrives from an address; the same facts follow the licence through
its ``Granted`` event, the holder in the pools, the usage report and the log.
They are spelled out once, here. The journal and the domain still store them
as flat fields of ``Granted`` (its dict form is unchanged), converted at that
edge by ``Granted.requester`` and ``Granted.to``.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True, slots=True)
class Requester:
    """A client process as the server knows it.

    ``address`` is the IPv4 address of its connection (never what the client
    claims); ``hostid`` its unique id (matched against locked-node listings);
    ``client`` its idempotency token. Values a source does not know are None.
    """

    user: str
    host: str
    address: str
    pid: int
    uid: int | None = None
    group: str | None = None
    hostid: int | None = None
    client: str | None = None

    def same_process(self, other: Requester) -> bool:
        """Whether ``other`` names the same process: everything but the client token.

        The address is compared, never a port: a client that reconnects repeats
        its REQUEST from a new one.
        """
        return (
            self.user == other.user
            and self.host == other.host
            and self.pid == other.pid
            and self.uid == other.uid
            and self.group == other.group
            and self.hostid == other.hostid
            and self.address == other.address
        )
