"""`Listener`: the one way the daemon listens (client port, admin sockets, metrics,
manhole, domain peers).

A listener is a service around a server endpoint and a protocol factory that:

- binds in ``privilegedStartService`` (or ``startService`` when nothing called the
  former) and raises the bind error right there, so that a port in use or a socket
  path that cannot be made stops start-up, and the root service can explain the
  error in one line;
- records the port it bound (`port`, `address`): the start-up log says where each
  listener is, and tests that bind port 0 read the real port back;
- puts the factory under the wrappers it is given (`wrap`), innermost first, when it
  binds: the domain peers' TLS, then the daemon's connection limits outermost;
- stops listening when it stops (or cancels a bind still under way).

Twisted's ``StreamServerEndpointService`` (what ``strports.service`` builds) does the
first and last, but raises at start only through a private flag and records no port.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import (
    IAddress,
    IListeningPort,
    IProtocolFactory,
    IStreamServerEndpoint,
)
from twisted.logger import Logger
from twisted.python.failure import Failure

#: Puts a protocol factory under another (a TLS layer, connection limits...).
FactoryWrapper = Callable[[IProtocolFactory], IProtocolFactory]


class Listener(Service):
    """A service listening on ``endpoint`` with ``factory`` (see the module doc).

    :param endpoint: where to listen.
    :param factory: the protocol factory of accepted connections, before wrapping.
    :param requested: what the configuration asked for (a description or a port
        number), kept for messages and tests; the bound one is `port`.
    """

    log = Logger()

    def __init__(
        self,
        endpoint: IStreamServerEndpoint,
        factory: IProtocolFactory,
        *,
        requested: str | int | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.factory = factory
        self.requested = requested
        #: The connection limits its factory is put under (`hqnlsd.limits` label,
        #: ``"client"``, ``"peer"``...), set by whoever wraps it so; None: no cap.
        self.limit_label: str | None = None
        #: The bound port, from the bind until the listener stops (else None).
        self.port: IListeningPort | None = None
        self._wrappers: list[FactoryWrapper] = []
        self._binding: Deferred[IListeningPort] | None = None
        self._when_bound: list[Callable[[IListeningPort], object]] = []

    @classmethod
    def from_description(
        cls, reactor: Any, description: str, factory: IProtocolFactory
    ) -> Listener:
        """A listener on a strports ``description`` (``tcp:1234:interface=...``,
        ``unix:/path``...; a bare number is a TCP port on every interface)."""
        return cls(serverFromString(reactor, description), factory, requested=description)

    @property
    def address(self) -> IAddress | None:
        """The bound address (host and port, or the socket path); None unless bound."""
        return None if self.port is None else self.port.getHost()

    def wrap(self, wrapper: FactoryWrapper) -> None:
        """Put the factory under ``wrapper`` when binding, outside those given before."""
        self._wrappers.append(wrapper)

    def listening_factory(self) -> IProtocolFactory:
        """The factory with every wrapper applied: what the endpoint listens with."""
        factory = self.factory
        for wrapper in self._wrappers:
            factory = wrapper(factory)
        return factory

    def when_bound(self, callback: Callable[[IListeningPort], object]) -> None:
        """Call ``callback`` with the port once bound (now, if it is)."""
        if self.port is not None:
            callback(self.port)
        else:
            self._when_bound.append(callback)

    def privilegedStartService(self) -> None:
        """Bind (with root's privileges, if the daemon has them); a bind that fails
        at once raises here, and so stops start-up."""
        super().privilegedStartService()
        self._bind()

    def startService(self) -> None:
        """Bind, unless `privilegedStartService` has."""
        super().startService()
        if self.port is None and self._binding is None:
            self._bind()

    def stopService(self) -> Deferred[None]:
        """Stop listening (or give up a bind still under way)."""
        super().stopService()
        self._when_bound.clear()
        if self._binding is not None:
            self._binding.cancel()
        port, self.port = self.port, None
        if port is None:
            return succeed(None)
        stopping: Deferred[None] | None = port.stopListening()
        return stopping if stopping is not None else succeed(None)

    def _bind(self) -> None:
        failed_now: list[Failure] = []
        binding = True

        def bound(port: IListeningPort) -> None:
            self._binding = None
            self.port = port
            waiting, self._when_bound = self._when_bound, []
            for callback in waiting:
                callback(port)

        def not_bound(failure: Failure) -> None:
            self._binding = None
            if binding:
                failed_now.append(failure)
            elif not failure.check(CancelledError):
                self.log.failure("cannot listen on {requested}", failure,
                                 requested=self.requested)

        listening: Deferred[IListeningPort] = self.endpoint.listen(self.listening_factory())
        self._binding = listening
        listening.addCallbacks(bound, not_bound)
        binding = False
        if failed_now:
            failed_now[0].raiseException()
