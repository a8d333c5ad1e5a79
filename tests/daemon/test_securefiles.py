"""The rules of `hqnlsd.securefiles` and the start-up check that applies them
(issue 12: a state directory or keys file others could use against the daemon).

Another user is played by telling the check it runs as another uid (or, as
root, by giving a file to uid 54321), so the tests pass as root or not.
"""

from __future__ import annotations

import os
import re
import socket
import stat
from pathlib import Path

import pytest

from hqnlsd.config import DaemonConfig
from hqnlsd.securefiles import (
    UnsafePathError,
    check_secure_path,
    check_state_dir,
    check_state_entries,
    open_private,
    write_atomically,
)
from hqnlsd.service import StartupError, preflight
from tests.configs import daemon_config

ME = os.geteuid()
#: A uid that is neither ours nor root's (the check "runs as" it).
STRANGER = 54321 if ME != 54321 else 54322


def private_dir(path: Path, mode: int = 0o700) -> Path:
    """Make ``path`` (and parents) and give it ``mode`` whatever the umask."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, mode)
    return path


def test_private_state_dir_under_tmp_is_accepted(tmp_path: Path) -> None:
    """0700, ours, below pytest's 0700 directories and the sticky /tmp: no word."""
    assert check_state_dir(private_dir(tmp_path / "state")) == []


def test_readable_state_dir_is_a_warning(tmp_path: Path) -> None:
    """0755: accepted, with the line that says so and the chmod that ends it."""
    state = private_dir(tmp_path / "state", 0o755)
    assert check_state_dir(state) == [
        f"--state-dir {state}: others may read the directory (mode 0755); run: chmod 700 {state}"
    ]


@pytest.mark.parametrize(
    ("mode", "who"), [(0o777, "others"), (0o703, "others"), (0o770, "its group")]
)
def test_writable_state_dir_is_refused(tmp_path: Path, mode: int, who: str) -> None:
    """Writable by group or others: one line with the mode and the fix."""
    state = private_dir(tmp_path / "state", mode)
    with pytest.raises(UnsafePathError) as caught:
        check_state_dir(state)
    assert str(caught.value) == (
        f"--state-dir {state}: the directory is writable by {who} (mode {mode:04o}); "
        f"run: chmod 700 {state}"
    )


def test_sticky_world_writable_state_dir_is_still_refused(tmp_path: Path) -> None:
    """Sticky helps a directory above, not the state directory itself: others
    could still create the names the daemon is about to use."""
    state = private_dir(tmp_path / "state", 0o1777)
    with pytest.raises(UnsafePathError, match="writable by others"):
        check_state_dir(state)


def test_state_dir_of_another_user_is_refused(tmp_path: Path) -> None:
    """Owned by someone else than the daemon's user (root included): refused, chown."""
    state = private_dir(tmp_path / "state")
    with pytest.raises(UnsafePathError, match=f"owned by uid {ME}.*run: chown "):
        check_state_dir(state, uid=STRANGER)


def test_writable_directory_above_is_refused(tmp_path: Path) -> None:
    """A world-writable, not sticky, directory on the way up: named, with the fix."""
    top = private_dir(tmp_path / "top", 0o777)
    state = private_dir(top / "a" / "state")
    with pytest.raises(UnsafePathError) as caught:
        check_state_dir(state)
    assert f": {top} is writable by others (mode 0777) and not sticky" in str(caught.value)
    assert str(caught.value).endswith(f"run: chmod go-w {top}")


def test_sticky_directory_above_is_accepted(tmp_path: Path) -> None:
    """A sticky directory on the way (like /tmp) is accepted: others cannot
    rename or remove what is ours in it."""
    top = private_dir(tmp_path / "top", 0o1777)
    assert check_state_dir(private_dir(top / "state")) == []


def test_directory_above_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    """A directory above that neither root nor the daemon's user owns."""
    if ME == 0:
        top = private_dir(tmp_path / "top", 0o755)
        os.chown(top, STRANGER, -1)
        with pytest.raises(UnsafePathError, match=f"{top} is owned by uid {STRANGER}"):
            check_secure_path(top / "state", uid=0, what="--state-dir x")
    else:  # our own directories, seen by a check that runs as another user
        with pytest.raises(UnsafePathError, match=f"is owned by uid {ME}"):
            check_secure_path(tmp_path / "state", uid=STRANGER, what="--state-dir x")


def test_symlink_of_another_user_on_the_way_is_refused(tmp_path: Path) -> None:
    """A link on the path that someone else owns (and so may point elsewhere)."""
    real = private_dir(tmp_path / "real")
    link = tmp_path / "link"
    link.symlink_to(real)
    uid = ME
    if ME == 0:
        os.lchown(link, STRANGER, -1)
        with pytest.raises(UnsafePathError, match=f"{link} is a symbolic link owned by uid"):
            check_secure_path(link / "state", uid=uid, what="--state-dir x")
    else:
        with pytest.raises(UnsafePathError, match="owned by uid"):
            check_secure_path(link / "state", uid=STRANGER, what="--state-dir x")


def test_symlink_into_a_writable_directory_is_refused(tmp_path: Path) -> None:
    """A state directory reached through our own link: the real path counts too."""
    open_dir = private_dir(tmp_path / "open", 0o777)
    private_dir(open_dir / "state")
    safe = private_dir(tmp_path / "safe")
    (safe / "state").symlink_to(open_dir / "state")
    with pytest.raises(UnsafePathError, match=f"{open_dir} is writable by others"):
        check_state_dir(safe / "state")


def test_state_entries_refuse_links_fifos_and_a_socket_impostor(tmp_path: Path) -> None:
    """Links (but twisted's pid locks), FIFOs, and a non-socket at the socket's path."""
    state = private_dir(tmp_path / "state")
    (state / "usage.jsonl").write_bytes(b"")
    os.symlink("4711", state / "admin.sock.lock")  # twisted's lock: a link to a pid
    check_state_entries(state, sockets=[state / "admin.sock"])
    (state / "usage.jsonl.1").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UnsafePathError, match=re.escape("usage.jsonl.1 is a symbolic link")):
        check_state_entries(state)
    (state / "usage.jsonl.1").unlink()
    os.mkfifo(state / "pipe")
    with pytest.raises(UnsafePathError, match=re.escape("pipe is a symbolic link (or not")):
        check_state_entries(state)
    (state / "pipe").unlink()
    impostor = tmp_path / "admin.sock"
    impostor.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UnsafePathError, match=re.escape("admin.sock is not a socket")):
        check_state_entries(state, sockets=[impostor])


def test_a_real_socket_is_accepted(tmp_path: Path) -> None:
    """A stale admin socket left by a previous run is fine (twisted replaces it)."""
    state = private_dir(tmp_path / "s")
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(state / "admin.sock"))
        check_state_entries(state, sockets=[state / "admin.sock"])


def test_open_private_refuses_a_link_and_creates_0600(tmp_path: Path) -> None:
    """Never through a link; a new file is 0600 whatever the umask."""
    target = tmp_path / "target"
    target.write_bytes(b"kept")
    (tmp_path / "link").symlink_to(target)
    with pytest.raises(UnsafePathError, match="symbolic link"):
        open_private(tmp_path / "link", os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    assert target.read_bytes() == b"kept"
    os.close(open_private(tmp_path / "new", os.O_WRONLY | os.O_CREAT))
    assert stat.S_IMODE((tmp_path / "new").stat().st_mode) == 0o600


def test_write_atomically_replaces_a_link_not_its_target(tmp_path: Path) -> None:
    """A link at the destination is replaced by the new file; its target is kept."""
    target = tmp_path / "target"
    target.write_bytes(b"kept")
    (tmp_path / "file").symlink_to(target)
    write_atomically(tmp_path / "file", b"new")
    assert target.read_bytes() == b"kept"
    assert (tmp_path / "file").read_bytes() == b"new"
    assert not (tmp_path / "file").is_symlink()


def config(tmp_path: Path, **changes: object) -> DaemonConfig:
    """A config with its state in ``tmp_path/state``; no TCP port (port 0)."""
    return daemon_config(tmp_path, **{"client_listen": "tcp:0:interface=127.0.0.1", **changes})  # type: ignore[arg-type]


def test_preflight_refuses_a_writable_state_dir(tmp_path: Path) -> None:
    """The start-up check turns the rule into its one line."""
    private_dir(tmp_path / "state", 0o777)
    with pytest.raises(StartupError, match=re.escape("others (mode 0777); run: chmod 700")):
        preflight(config(tmp_path))


def test_preflight_checks_for_the_user_twistd_switches_to(tmp_path: Path) -> None:
    """``twistd --uid``: the state directory must belong to that user."""
    private_dir(tmp_path / "state")
    with pytest.raises(StartupError, match=f"owned by uid {ME}"):
        preflight(config(tmp_path), uid=STRANGER)


def test_preflight_refuses_a_manhole_keys_file_in_a_writable_directory(tmp_path: Path) -> None:
    """The manhole's StrictModes at start-up: the admin learns at once, not at a login."""
    keys_dir = private_dir(tmp_path / "keys-dir", 0o777)
    keys = keys_dir / "authorized_keys"
    keys.write_bytes(b"")
    os.chmod(keys, 0o600)
    cfg = config(tmp_path, manhole_listen="tcp:0", manhole_keys=keys)
    with pytest.raises(StartupError, match=f"--manhole-keys {keys}: {keys_dir} is writable"):
        preflight(cfg)


def test_preflight_refuses_a_link_at_the_admin_socket(tmp_path: Path) -> None:
    """admin.sock -> elsewhere: one line, nothing removed or followed."""
    state = private_dir(tmp_path / "state")
    (state / "admin.sock").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(StartupError, match=re.escape("admin.sock is a symbolic link")):
        preflight(config(tmp_path))
    assert (state / "admin.sock").is_symlink()
