"""The daemon's service tree (issue 13): children of single concerns, built in
dependency order, the licence core started before and stopped after the listeners."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock

from hqnlsd.admin.handler import AdminHandler
from hqnlsd.config import DaemonConfig
from hqnlsd.daemon.adminview import AdminView
from hqnlsd.limits import client_connection_cap, soft_nofile
from hqnlsd.persistence.store import DATABASE_NAME, Journal, JournalError
from hqnlsd.service import HqnlsdService, build_service
from tests.configs import daemon_config


def config(tmp_path: Path, **changes: object) -> DaemonConfig:
    """A config on an ephemeral loopback port (an empty hosts file, no publisher
    keys: no permit is served); no signal handler, no log filter."""
    (tmp_path / "hosts").write_text("")
    (tmp_path / "keys").mkdir(exist_ok=True)
    found = daemon_config(tmp_path, client_listen="tcp:0:interface=127.0.0.1", **changes)
    return dataclasses.replace(found, handle_sighup=False, install_log_filter=False)


def client_limit(root: Any) -> float:
    """The client listener's connection cap, as the metrics publish it."""
    value = root.metrics.registry.get_sample_value(
        "hqnlsd_connection_limit", {"listener": "client"}
    )
    assert value is not None
    return float(value)


def test_children_start_in_dependency_order(tmp_path: Path) -> None:
    """Log filter, then the licence core, then reload, then the listeners (client
    first), the systemd notifier last."""
    root = build_service(config(tmp_path, metrics_listen="tcp:0"), MemoryReactorClock())
    names = [child.name for child in root]  # type: ignore[attr-defined]
    assert names[:4] == ["log-setup", "licence-core", "reload", "client-listener"]
    assert names[-1] == "systemd-notifier"
    assert "metrics" in names


def test_client_factory_dispatches_to_the_core_made_at_build(tmp_path: Path) -> None:
    """The client factory's dispatcher is the core's, made with its server before
    anything starts; the journal's database is created only when the core starts."""
    clock = MemoryReactorClock()
    root = HqnlsdService(config(tmp_path), clock)
    assert root.factory.dispatcher is root.core.dispatcher
    database = tmp_path / "state" / DATABASE_NAME
    assert not database.exists()
    root.startService()
    try:
        assert database.exists()
        assert root.core.running
    finally:
        root.stopService()


def test_listeners_stop_before_the_journal_closes(tmp_path: Path) -> None:
    """The core flushes and closes the journal only once every other child has stopped."""
    root = HqnlsdService(config(tmp_path), Clock())
    stopping: Deferred[None] = Deferred()

    class SlowToStop(Service):
        def stopService(self) -> Deferred[None]:
            super().stopService()
            return stopping

    SlowToStop().setServiceParent(root)
    root.startService()
    stopped = root.stopService()
    assert root.core.running
    root.journal.submit([])  # still open
    stopping.callback(None)
    assert not root.core.running
    with pytest.raises(JournalError, match="closed"):
        root.journal.submit([])
    assert stopped.called


def test_journal_is_made_unopened(tmp_path: Path) -> None:
    """A journal made without `open` touches no file and takes no events."""
    journal = Journal(tmp_path / "state" / DATABASE_NAME, Clock())
    assert not (tmp_path / "state").exists()
    with pytest.raises(JournalError, match="not open"):
        journal.submit([])
    journal.close()  # nothing to flush


def test_client_cap_counts_the_capped_listeners_built(tmp_path: Path) -> None:
    """Each other listener under a cap of its own (metrics here) takes its share of
    the descriptors from the client cap; the admin socket does not."""
    plain = config(tmp_path)
    with_metrics = dataclasses.replace(plain, metrics_listen="tcp:0")
    limits = plain.limits
    nofile = soft_nofile()
    alone = build_service(plain, MemoryReactorClock())
    assert client_limit(alone) == client_connection_cap(limits, other_listeners=0, nofile=nofile)
    beside = build_service(with_metrics, MemoryReactorClock())
    assert client_limit(beside) == client_connection_cap(limits, other_listeners=1, nofile=nofile)


def test_admin_handler_is_given_the_admin_view(tmp_path: Path) -> None:
    """The admin listeners' handler sees the daemon through an `AdminView`, not the root."""
    root = build_service(config(tmp_path), MemoryReactorClock())
    assert isinstance(root, HqnlsdService)
    admin = root.getServiceNamed("admin-socket")
    handler = admin.factory.handler  # type: ignore[attr-defined]
    assert isinstance(handler, AdminHandler)
    assert isinstance(handler.root, AdminView)
    view = handler.root
    assert view.engine is root.engine and view.journal is root.journal
    assert view.server is root.server and view.config is root.config


def test_metrics_show_the_journal_health(tmp_path: Path) -> None:
    """hqnlsd_journal_healthy and hqnlsd_journal_commit_failures_total follow the
    journal's own health and failure count at each scrape."""
    root = HqnlsdService(config(tmp_path), MemoryReactorClock())
    registry = root.metrics.registry
    assert registry.get_sample_value("hqnlsd_journal_healthy") == 1
    assert registry.get_sample_value("hqnlsd_journal_commit_failures_total") == 0
    root.journal.last_error = OSError("disk full")
    root.journal.stats.failures = 2
    assert registry.get_sample_value("hqnlsd_journal_healthy") == 0
    assert registry.get_sample_value("hqnlsd_journal_commit_failures_total") == 2
    root.journal.last_error = None
    assert registry.get_sample_value("hqnlsd_journal_healthy") == 1
