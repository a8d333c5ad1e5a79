"""The parts of the daemon's service tree, each owning one concern.

`hqnlsd.service` composes them (`build_service`), in dependency order:

- `logsetup`: `LogSetup`, the log switch filter (first to start, last to stop);
- `core`: `LicenceCore`, the engine, its journal (opened at start, restored before
  any listener starts) and the `LicenceServer`, with the `TimedDispatcher` the client
  listener is given; periodic housekeeping;
- `reload`: `ReloadService`, SIGHUP re-reads the configuration file and the permits;
- `domains`: `make_domains`, the multi-host server domains wired to the feed and metrics;
- `adminview`: `AdminView`, all the admin handler is given of the daemon;
- `startup`: why the daemon cannot start, in one line (`preflight`, `StartupError`).
"""
