"""Files and directories that another local user cannot turn against the daemon.

One place for the rules (README "Files and directories"):

- **The state directory** must be a directory owned by the daemon's user that
  neither its group nor others may write (`check_state_dir`). Others may not read
  it either: a readable one is started with, and said in the start-up log.
- **Every directory above it** (and above a file checked with `check_trusted_file`)
  up to ``/``, on the path as given and on its real path, must be owned by root
  or the daemon's user, and not writable by group or others unless it is sticky
  (like ``/tmp``: others may create entries there but never rename or remove
  ours). A symbolic link on the way must be owned by root or the daemon's user.
  This is OpenSSH's ``StrictModes`` walk (``auth_secure_path``), which stops at
  the user's home directory and knows no sticky exception; a daemon has no home,
  so the walk goes to ``/``, and a sticky ``/tmp`` is accepted.
- **A file in the state directory** is created and opened without following a
  symbolic link (``O_NOFOLLOW``; ``O_EXCL`` for new files), and must be a regular
  file: a symlink, FIFO or device where one of our files should be is refused
  with `UnsafePathError` and never followed (`open_private`, `require_regular`).

No Twisted here: plain functions, the euid to check for given as an argument
(tests pass another one instead of needing root).
"""

from __future__ import annotations

import contextlib
import errno
import os
import pwd
import stat
from collections.abc import Iterable
from pathlib import Path


class UnsafePathError(OSError):
    """A file or directory others could use against the daemon; the message (one
    line) says which, why and the command that fixes it."""

    def __str__(self) -> str:
        return self.strerror or (str(self.args[0]) if self.args else "unsafe path")


def _user(uid: int) -> str:
    """``uid N (name)`` for messages."""
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


def _owner_name(uid: int) -> str:
    """The name ``chown`` takes for ``uid`` (its number if it has no name)."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _writable_by(mode: int) -> str | None:
    if mode & stat.S_IWOTH:
        return "others"
    if mode & stat.S_IWGRP:
        return "its group"
    return None


def _mode(info: os.stat_result) -> str:
    return f"mode {stat.S_IMODE(info.st_mode):04o}"


def check_secure_path(path: Path, *, uid: int, what: str) -> None:
    """Refuse ``path`` if a directory above it lets someone other than root or
    ``uid`` replace what is below (see the module docstring for the rule).

    Both the directories of the path as given and those of its real path are
    checked: a symbolic link on the way makes the daemon go through both.
    ``what`` starts the message (``--state-dir /x``). Raises `UnsafePathError`.
    """
    lexical = Path(os.path.abspath(path))
    real = Path(os.path.realpath(path))
    for component in (lexical, *lexical.parents):
        try:
            info = os.lstat(component)
        except FileNotFoundError:
            continue  # not made yet: what is above it is checked all the same
        if stat.S_ISLNK(info.st_mode) and info.st_uid not in (0, uid):
            raise UnsafePathError(
                f"{what}: {component} is a symbolic link owned by {_user(info.st_uid)}, "
                f"not by root or this daemon's user; replace it with the real path "
                f"{os.path.realpath(component)}"
            )
    seen: set[tuple[int, int]] = set()
    for directory in (*lexical.parents, *real.parents):
        try:
            info = os.stat(directory)
        except FileNotFoundError:
            continue
        if (info.st_dev, info.st_ino) in seen:
            continue
        seen.add((info.st_dev, info.st_ino))
        if info.st_uid not in (0, uid):
            raise UnsafePathError(
                f"{what}: {directory} is owned by {_user(info.st_uid)}, not by "
                f"root or this daemon's user; run: chown root {directory}, or use "
                "another directory"
            )
        writable = _writable_by(info.st_mode)
        if writable is not None and not info.st_mode & stat.S_ISVTX:
            raise UnsafePathError(
                f"{what}: {directory} is writable by {writable} "
                f"({_mode(info)}) and not sticky; run: chmod go-w {directory}"
            )


def check_state_dir(path: Path, *, uid: int | None = None) -> list[str]:
    """Refuse a state directory others could use against the daemon (the module
    docstring's rules); the warnings to log for one that is merely readable.

    ``path`` must exist. ``uid`` is the user the daemon runs as (default: the
    effective uid). Raises `UnsafePathError` with the one line to show.
    """
    uid = os.geteuid() if uid is None else uid
    what = f"--state-dir {path}"
    info = os.stat(path)
    if not stat.S_ISDIR(info.st_mode):
        raise UnsafePathError(f"{what}: not a directory (a file of that name is there)")
    if info.st_uid != uid:
        raise UnsafePathError(
            f"{what}: the directory is owned by {_user(info.st_uid)}, not by this daemon's "
            f"user, {_user(uid)}; run: chown {_owner_name(uid)} {path}"
        )
    writable = _writable_by(info.st_mode)
    if writable is not None:
        raise UnsafePathError(
            f"{what}: the directory is writable by {writable} ({_mode(info)}); "
            f"run: chmod 700 {path}"
        )
    check_secure_path(path, uid=uid, what=what)
    if info.st_mode & 0o007:
        return [f"{what}: others may read the directory ({_mode(info)}); run: chmod 700 {path}"]
    return []


def check_trusted_file(path: Path, *, uid: int | None = None, what: str) -> os.stat_result:
    """OpenSSH's ``StrictModes`` for a file the daemon trusts (the manhole's
    authorized_keys): a regular file owned by ``uid`` or root, not writable by
    group or others, in a path that `check_secure_path` accepts. Returns the
    file's stat (of its real path). Raises `UnsafePathError`; OSError if missing.
    """
    uid = os.geteuid() if uid is None else uid
    real = Path(os.path.realpath(path))
    info = os.lstat(real)
    if not stat.S_ISREG(info.st_mode):
        raise UnsafePathError(f"{what} {path} is not a regular file")
    if info.st_uid not in (0, uid):
        raise UnsafePathError(
            f"{what} {path} is owned by {_user(info.st_uid)}, not by root or this daemon's "
            f"user; run: chown {_owner_name(uid)} {real}"
        )
    if info.st_mode & 0o022:
        raise UnsafePathError(
            f"{what} {path} is writable by group or others ({_mode(info)}); run: chmod go-w {real}"
        )
    check_secure_path(path, uid=uid, what=f"{what} {path}")
    return info


# -- files in the state directory ------------------------------------------------------


def _not_followed(path: Path) -> UnsafePathError:
    return UnsafePathError(
        errno.ELOOP,
        f"{path} is a symbolic link (or not a regular file); hqnlsd never follows one "
        f"in its state directory: remove it (rm {path})",
    )


def require_regular(path: Path) -> None:
    """Nothing at ``path``, or a regular file (never a symbolic link, FIFO, device,
    socket or directory). Raises `UnsafePathError`."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISREG(info.st_mode):
        raise _not_followed(path)


def require_regular_all(paths: Iterable[Path]) -> None:
    """`require_regular` for each of ``paths``."""
    for path in paths:
        require_regular(path)


#: What SQLite keeps next to a database file (``NAME-wal``, ...).
SQLITE_COMPANIONS = ("-wal", "-shm", "-journal")


def sqlite_files(database: Path) -> list[Path]:
    """A database file and the files SQLite keeps next to it."""
    return [database, *(database.with_name(database.name + extra) for extra in SQLITE_COMPANIONS)]


def check_state_entries(directory: Path, *, sockets: Iterable[Path | None] = ()) -> None:
    """Refuse a state directory holding a symbolic link, a FIFO or a device: each
    would be followed (or block) where the daemon expects one of its files.

    The lock files twisted makes next to a UNIX socket (``NAME.lock``, a link to
    a process id) are the one kind of link allowed. Each of ``sockets`` (in the
    directory or not) must be a socket or absent. Raises `UnsafePathError`.
    """
    for entry in os.scandir(directory):
        path = Path(entry.path)
        if entry.is_symlink():
            if entry.name.endswith(".lock") and os.readlink(path).isdigit():
                continue
            raise _not_followed(path)
        kind = entry.stat(follow_symlinks=False).st_mode
        if stat.S_ISFIFO(kind) or stat.S_ISCHR(kind) or stat.S_ISBLK(kind):
            raise _not_followed(path)
    for socket_path in sockets:
        if socket_path is None:
            continue
        try:
            info = os.lstat(socket_path)
        except FileNotFoundError:
            continue
        if not stat.S_ISSOCK(info.st_mode):
            raise UnsafePathError(
                errno.EEXIST,
                f"{socket_path} is not a socket (a symbolic link or a file is there); "
                f"hqnlsd replaces only a stale socket: remove it (rm {socket_path})",
            )


def open_private(path: Path, flags: int, mode: int = 0o600) -> int:
    """``os.open`` that never follows a symbolic link and only opens a regular file
    (a FIFO planted there would not block it: opened non-blocking, then refused).

    New files get ``mode`` (0600). Raises `UnsafePathError` for a link or
    another kind of file, OSError as ``os.open`` otherwise.
    """
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, mode)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise _not_followed(path) from None
        if error.errno == errno.ENXIO:  # a FIFO with no reader
            raise _not_followed(path) from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise _not_followed(path)
    os.set_blocking(fd, True)
    return fd


def read_private(path: Path) -> bytes:
    """The content of the regular file ``path``, not following a symbolic link."""
    fd = open_private(path, os.O_RDONLY)
    with os.fdopen(fd, "rb") as source:
        return source.read()


def write_new(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Create ``path`` (which must not exist: FileExistsError) with ``data``."""
    fd = open_private(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise


def write_atomically(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace ``path`` with a file holding ``data`` so that a crash leaves the old
    or the new one; the temporary file is created afresh (``O_EXCL``), never
    through a link. A symbolic link at ``path`` itself is replaced, not followed."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(temporary)  # a leftover of a crash (or a planted link: removed, not followed)
    write_new(temporary, data, mode)
    try:
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
