"""A blocking admin client for ``hqn_lsa``: stdlib sockets, every wait bounded.

`AdminClient.unix(path)` talks to the local admin socket; `AdminClient.tls(...)`
to a remote daemon over mutual TLS with an admin certificate (the server's
certificate must be issued by the domain CA and name the address asked for).
Both read the server's greeting before anything else: over TLS 1.3 a refused
certificate shows only as the server's ``NOTADMIN`` line or a closed connection.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
from pathlib import Path
from typing import Any

from hqnlsd.admin import wire


class AdminClientError(Exception):
    """The server could not be reached, refused us, or did not answer in time."""


class AdminClient:
    """One connection to a daemon's admin service."""

    def __init__(self, sock: socket.socket, label: str, timeout: float) -> None:
        self._sock = sock
        self.label = label
        self.timeout = timeout
        self._buffer = b""
        self._next_id = 1
        self.greeting: dict[str, Any] = {}
        hello = self._read()
        if not hello.get("ok"):
            self.close()
            raise AdminClientError(
                f"{label}: {hello.get('error', 'refused')}: {hello.get('message', '')}"
            )
        self.greeting = hello.get("result") or {}
        if self.greeting.get("hello") != wire.HELLO:
            self.close()
            raise AdminClientError(f"{label} is not an hqnlsd admin service")
        if wire.PROTOCOL_VERSION not in self.greeting.get("versions", []):
            self.close()
            raise AdminClientError(
                f"{label} speaks admin protocol versions {self.greeting.get('versions')}, "
                f"not {wire.PROTOCOL_VERSION}: use the hqn_lsa of the daemon's release"
            )

    @classmethod
    def unix(cls, path: Path, *, timeout: float) -> AdminClient:
        """Connect to the local admin socket at ``path``."""
        label = f"admin socket {path}"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
        except PermissionError:
            sock.close()
            raise AdminClientError(
                f"{label}: permission denied: only the daemon's user and the admin "
                "group may administer it (ask for membership of the socket's group)"
            ) from None
        except FileNotFoundError:
            sock.close()
            raise AdminClientError(f"{label}: no such socket (is hqnlsd running here?)") from None
        except OSError as error:
            sock.close()
            raise AdminClientError(f"{label}: {error.strerror or error}") from None
        return cls(sock, label, timeout)

    @classmethod
    def tls(
        cls,
        address: str,
        port: int,
        *,
        ca: Path,
        cert: Path,
        key: Path,
        timeout: float,
    ) -> AdminClient:
        """Connect over mutual TLS to ``address:port`` with an admin certificate."""
        label = f"{address}:{port} (TLS)"
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.load_verify_locations(cafile=str(ca))
            context.load_cert_chain(str(cert), str(key))
        except (OSError, ssl.SSLError) as error:
            raise AdminClientError(f"cannot load the admin certificate files: {error}") from None
        raw: socket.socket | None = None
        try:
            raw = socket.create_connection((address, port), timeout=timeout)
            sock = context.wrap_socket(raw, server_hostname=address)
        except ssl.SSLCertVerificationError as error:
            if raw is not None:
                raw.close()
            raise AdminClientError(
                f"{label}: the server's certificate is not trusted: {error.verify_message}"
            ) from None
        except (OSError, ssl.SSLError) as error:
            if raw is not None:
                raw.close()
            raise AdminClientError(
                f"{label}: {getattr(error, 'strerror', None) or error}"
            ) from None
        sock.settimeout(timeout)
        try:
            return cls(sock, label, timeout)
        except (ssl.SSLError, ConnectionError) as error:
            sock.close()
            raise AdminClientError(
                f"{label}: the server refused this certificate ({error})"
            ) from None

    def call(self, command: str, args: dict[str, Any]) -> dict[str, Any]:
        """Send one request; the response message (``ok``, ``result`` or ``error``)."""
        request_id = self._next_id
        self._next_id += 1
        try:
            self._sock.sendall(wire.encode(wire.request(command, args, request_id)))
        except OSError as error:
            raise AdminClientError(f"{self.label}: send failed: {error}") from None
        answer = self._read()
        if answer.get("id") not in (None, request_id):
            raise AdminClientError(f"{self.label}: answer out of order")
        return answer

    def _read(self) -> dict[str, Any]:
        while b"\n" not in self._buffer:
            if len(self._buffer) > wire.MAX_LINE:
                raise AdminClientError(f"{self.label}: answer line too long")
            try:
                chunk = self._sock.recv(65536)
            except TimeoutError:
                raise AdminClientError(
                    f"{self.label}: no answer within {self.timeout:g} s (raise it with -w)"
                ) from None
            except OSError as error:
                raise AdminClientError(f"{self.label}: {error}") from None
            if not chunk:
                raise AdminClientError(f"{self.label}: the server closed the connection")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        try:
            return wire.decode(line)
        except wire.WireError as error:
            raise AdminClientError(f"{self.label}: bad answer: {error}") from None

    def close(self) -> None:
        """Close the connection."""
        with contextlib.suppress(OSError):
            self._sock.close()
