"""twistd's ``--logfile``: private, and capped in rotated files.

twistd writes ``--logfile`` through `twisted.python.logfile.LogFile`, which
rotates at 1 MB (``twistd.log`` -> ``twistd.log.1`` -> ...) but keeps every old
file for ever (``maxRotatedFiles=None``) and creates the file with the process
umask (0644 under the usual 022). hqnlsd fixes both, without replacing twistd's
logging:

* `prepare_log_file`, from the plugin's ``makeService`` (which twistd runs
  *before* it opens the log), creates the file 0600, or narrows an existing
  regular file to 0600, so that the log never exists readable by others;
* `cap_log_files`, when the daemon starts, finds the `LogFile` behind every
  observer of the global log publisher (twistd registered its file observer by
  then) and sets ``maxRotatedFiles`` (`MAX_ROTATED_FILES`) and ``defaultMode``
  (0600: each new file after a rotation is created with no permissions and
  then given 0600, never readable by others in between); the file and the old
  ones an earlier daemon left are narrowed to 0600.

So the log takes at most ``(MAX_ROTATED_FILES + 1) * 1 MB`` of disk.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterable

from twisted.logger import FileLogObserver, LogPublisher, globalLogPublisher
from twisted.python.logfile import BaseLogFile, LogFile

#: The mode of the log file and its rotated copies.
LOG_FILE_MODE = 0o600
#: Rotated files kept beside the log (``twistd.log.1`` .. ``twistd.log.N``).
MAX_ROTATED_FILES = 10


def prepare_log_file(path: str) -> None:
    """Create ``path`` with mode 0600, or narrow an existing regular file to 0600.

    Anything but a regular file (``/dev/null``, a pipe) is left alone. Errors are
    left for twistd, which reports them when it opens the file.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, LOG_FILE_MODE)
    except OSError:
        return
    try:
        info = os.fstat(fd)
        if stat.S_ISREG(info.st_mode) and stat.S_IMODE(info.st_mode) & ~LOG_FILE_MODE:
            with contextlib.suppress(OSError):  # not ours: twistd will say so
                os.fchmod(fd, LOG_FILE_MODE)
    finally:
        os.close(fd)


def twistd_log_path(options: object) -> str | None:
    """The file twistd will log to, from its ``ServerOptions``; None for stdout or syslog.

    Mirrors `twisted.scripts._twistd_unix.UnixAppLogger`: ``--syslog`` wins, ``-``
    or no ``--logfile`` with ``--nodaemon`` is stdout, no ``--logfile`` otherwise
    is ``twistd.log``. A ``--logger`` of one's own is not ours to touch.
    """
    get = getattr(options, "get", None)
    if get is None:
        return None
    if get("syslog") or get("logger"):
        return None
    name = get("logfile")
    if name == "-" or (not name and get("nodaemon")):
        return None
    return os.path.abspath(name or "twistd.log")


def _log_files(observers: Iterable[object]) -> list[BaseLogFile]:
    found: list[BaseLogFile] = []
    for observer in observers:
        inner = getattr(observer, "observer", observer)  # a SwitchedObserver's
        if isinstance(inner, FileLogObserver):
            target = getattr(inner, "_outFile", None)
            if isinstance(target, BaseLogFile) and target not in found:
                found.append(target)
    return found


def cap_log_files(publisher: LogPublisher | None = None) -> list[BaseLogFile]:
    """Cap and protect the log files behind ``publisher``'s file observers.

    ``publisher`` defaults to `globalLogPublisher`. Returns the log files found.
    """
    target = globalLogPublisher if publisher is None else publisher
    observers = getattr(target, "_observers", None)  # see observer._registered
    if not isinstance(observers, list):
        return []
    found = _log_files(observers)
    for logfile in found:
        paths = [logfile.path]
        if isinstance(logfile, LogFile):
            logfile.maxRotatedFiles = MAX_ROTATED_FILES
            with contextlib.suppress(OSError):
                paths += [f"{logfile.path}.{n}" for n in logfile.listLogs()]
        logfile.defaultMode = LOG_FILE_MODE
        for path in paths:  # files left by an older daemon may be wider
            _narrow(path)
    return found


def _narrow(path: str) -> None:
    with contextlib.suppress(OSError):
        info = os.lstat(path)
        if stat.S_ISREG(info.st_mode) and stat.S_IMODE(info.st_mode) & ~LOG_FILE_MODE:
            os.chmod(path, LOG_FILE_MODE)
