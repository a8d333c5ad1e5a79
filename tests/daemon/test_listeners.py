"""`hqnlsd.listeners.Listener`: binds at start (a failed bind raises there), records
its port, wraps its factory, stops listening when stopped."""

from __future__ import annotations

import socket
from typing import Any

from twisted.application.service import MultiService
from twisted.internet import reactor as global_reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IStreamServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactor
from twisted.protocols.policies import WrappingFactory
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from hqnlsd.listeners import Listener


def plain_factory() -> Factory:
    """A factory of do-nothing protocols."""
    return Factory.forProtocol(Protocol)


@implementer(IStreamServerEndpoint)
class PendingEndpoint:
    """An endpoint whose bind finishes only when the test says so."""

    def __init__(self) -> None:
        self.binding: Deferred[Any] = Deferred()
        self.factories: list[IProtocolFactory] = []

    def listen(self, factory: IProtocolFactory) -> Deferred[Any]:
        """Remember the factory; the bind is `binding`."""
        self.factories.append(factory)
        return self.binding


class StoppablePort:
    """A bound port whose stopListening finishes when the test says so."""

    def __init__(self) -> None:
        self.stopped: Deferred[None] = Deferred()

    def stopListening(self) -> Deferred[None]:
        """The stop under way."""
        return self.stopped


class ListenerMemoryTests(TestCase):
    """With a MemoryReactor: what is bound, with which factory, and when."""

    def test_binds_in_privileged_start_and_records_the_port(self) -> None:
        """privilegedStartService binds; `port` and `address` are the bound ones,
        and startService does not bind again."""
        reactor = MemoryReactor()
        factory = plain_factory()
        listener = Listener.from_description(reactor, "tcp:1234:interface=127.0.0.1", factory)
        self.assertEqual(listener.requested, "tcp:1234:interface=127.0.0.1")
        self.assertIsNone(listener.port)
        self.assertIsNone(listener.address)
        listener.privilegedStartService()
        listener.startService()
        self.assertEqual(len(reactor.tcpServers), 1)
        port, bound_factory, _backlog, interface = reactor.tcpServers[0]
        self.assertEqual((port, interface), (1234, "127.0.0.1"))
        self.assertIs(bound_factory, factory)
        self.assertIsNotNone(listener.port)
        self.assertEqual(getattr(listener.address, "port", None), 1234)

    def test_start_alone_binds(self) -> None:
        """Without privilegedStartService, startService binds."""
        reactor = MemoryReactor()
        listener = Listener.from_description(reactor, "tcp:1234", plain_factory())
        listener.startService()
        self.assertEqual(len(reactor.tcpServers), 1)
        self.assertTrue(listener.running)

    def test_wrappers_apply_in_order_outermost_last(self) -> None:
        """The endpoint listens with the factory under every wrapper, the first given
        innermost; the unwrapped factory stays `factory`."""
        reactor = MemoryReactor()
        factory = plain_factory()
        listener = Listener.from_description(reactor, "tcp:1234", factory)
        listener.wrap(lambda inner: WrappingFactory(inner))
        outer_marks: list[IProtocolFactory] = []

        def outer(inner: IProtocolFactory) -> IProtocolFactory:
            outer_marks.append(inner)
            return WrappingFactory(inner)

        listener.wrap(outer)
        listener.privilegedStartService()
        bound = reactor.tcpServers[0][1]
        self.assertIsInstance(bound, WrappingFactory)
        self.assertIs(bound.wrappedFactory, outer_marks[0])
        self.assertIsInstance(outer_marks[0], WrappingFactory)
        self.assertIs(outer_marks[0].wrappedFactory, factory)  # type: ignore[attr-defined]
        self.assertIs(listener.factory, factory)

    def test_stop_stops_listening(self) -> None:
        """stopService stops the port (and waits for it) and forgets it; the listener
        can start again."""
        endpoint = PendingEndpoint()
        listener = Listener(endpoint, plain_factory())
        listener.startService()
        port = StoppablePort()
        endpoint.binding.callback(port)
        stopped = listener.stopService()
        self.assertNoResult(stopped)
        self.assertIsNone(listener.port)
        self.assertFalse(listener.running)
        port.stopped.callback(None)
        self.successResultOf(stopped)
        endpoint.binding = Deferred()
        listener.startService()
        self.assertEqual(len(endpoint.factories), 2)

    def test_stop_before_start(self) -> None:
        """A listener that never bound stops at once."""
        listener = Listener.from_description(MemoryReactor(), "tcp:1234", plain_factory())
        self.successResultOf(listener.stopService())

    def test_when_bound(self) -> None:
        """when_bound calls back at once if bound, else when the (late) bind is done;
        a bind still under way is cancelled by stopService, quietly."""
        endpoint = PendingEndpoint()
        listener = Listener(endpoint, plain_factory(), requested=4321)
        seen: list[object] = []
        listener.when_bound(seen.append)
        listener.privilegedStartService()
        listener.startService()
        self.assertEqual(len(endpoint.factories), 1)  # one bind, not two
        self.assertEqual(seen, [])
        port = object()
        endpoint.binding.callback(port)
        self.assertEqual(seen, [port])
        self.assertIs(listener.port, port)
        listener.when_bound(seen.append)
        self.assertEqual(seen, [port, port])

    def test_stop_cancels_a_bind_under_way(self) -> None:
        """stopService during a bind cancels it and logs nothing."""
        endpoint = PendingEndpoint()
        listener = Listener(endpoint, plain_factory())
        listener.startService()
        self.successResultOf(listener.stopService())
        self.assertIsNone(listener.port)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_bind_failing_later_is_logged(self) -> None:
        """A bind that fails after start cannot stop start-up: it is logged."""
        endpoint = PendingEndpoint()
        listener = Listener(endpoint, plain_factory(), requested="tcp:1")
        listener.startService()
        endpoint.binding.errback(CannotListenError("127.0.0.1", 1, OSError("busy")))
        self.assertEqual(len(self.flushLoggedErrors(CannotListenError)), 1)
        self.assertIsNone(listener.port)


class ListenerLoopbackTests(TestCase):
    """With the real reactor on loopback port 0."""

    @inlineCallbacks
    def test_port_zero_reads_back_the_bound_port(self) -> Any:
        """Bound to port 0, `port` says which port the system gave; it accepts."""
        listener = Listener.from_description(
            global_reactor, "tcp:0:interface=127.0.0.1", plain_factory()
        )
        listener.privilegedStartService()
        port: IListeningPort | None = listener.port
        assert port is not None
        number = port.getHost().port
        self.assertGreater(number, 0)
        probe = socket.create_connection(("127.0.0.1", number), timeout=5)
        probe.close()
        yield listener.stopService()
        with self.assertRaises(OSError):
            socket.create_connection(("127.0.0.1", number), timeout=5).close()

    @inlineCallbacks
    def test_bad_bind_raises_in_privileged_start(self) -> Any:
        """A port in use raises CannotListenError from privilegedStartService itself
        (also through a MultiService), so start-up stops; nothing is left bound."""
        first = Listener.from_description(
            global_reactor, "tcp:0:interface=127.0.0.1", plain_factory()
        )
        first.privilegedStartService()
        assert first.port is not None
        taken = first.port.getHost().port
        parent = MultiService()
        second = Listener.from_description(
            global_reactor, f"tcp:{taken}:interface=127.0.0.1", plain_factory()
        )
        second.setServiceParent(parent)
        with self.assertRaises(CannotListenError) as raised:
            parent.privilegedStartService()
        self.assertEqual(raised.exception.port, taken)
        self.assertIsNone(second.port)
        yield second.stopService()
        yield first.stopService()
