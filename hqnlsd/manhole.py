"""The SSH manhole: a live Python shell inside the running daemon.

Security model (SPEC 7):

- SSH only; there is no telnet listener and no password or keyboard-interactive
  login. The only credential accepted is an SSH public key listed in an OpenSSH
  ``authorized_keys`` file, which is re-read on every login attempt so that removing
  a line revokes that key at once. Any SSH user name is accepted; the key is what
  counts. Lines carrying OpenSSH options (``from="..."``, ``command="..."``...) are
  ignored with a logged warning, because honouring only part of them would be worse
  than refusing them. The keys file must pass OpenSSH's ``StrictModes`` checks
  (owned by the daemon's user or root, not writable by group or others, and so
  is every directory above it up to ``/``, a sticky root-owned one like ``/tmp``
  excepted), at start-up and at every login, or it authorizes nobody.
- The host key (Ed25519) is generated on the first start into the state directory
  (``manhole_host_key``, mode 0600, plus ``manhole_host_key.pub`` to pin in
  ``known_hosts``) and reused on every later start. A host key file that group or
  others may read is refused. No key ever lives in the source tree.
- The listener is a `hqnlsd.listeners.Listener`, so a failed bind stops start-up.
  A TCP description without ``interface=`` is bound to the loopback interface
  (``127.0.0.1``, or ``::1`` for ``tcp6``); listening anywhere else must be asked for
  explicitly. UNIX sockets are accepted (mode 0600 unless given); other endpoint
  types are refused because their reach cannot be checked.
- The namespace is built by calling the daemon's ``namespace()`` callable each time
  a session opens, so the shell sees the live objects, and a short help text on
  login lists the names it holds.
"""

# Twisted's conch, cred and application modules are largely unannotated; calling
# them is unavoidable here, so that one check is relaxed for this file only.

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, cast

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.application.service import MultiService
from twisted.conch import error as conch_error
from twisted.conch.checkers import IAuthorizedKeysDB, SSHPublicKeyChecker
from twisted.conch.insults.insults import ServerProtocol
from twisted.conch.interfaces import IConchUser, ISession
from twisted.conch.manhole import ColoredManhole, Manhole
from twisted.conch.manhole_ssh import TerminalUser
from twisted.conch.ssh import factory as ssh_factory
from twisted.conch.ssh import keys
from twisted.conch.ssh.session import SSHSessionProcessProtocol
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.portal import IRealm, Portal
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone, ProcessDone, ProcessTerminated
from twisted.internet.interfaces import IListeningPort, IProtocolFactory
from twisted.logger import Logger
from twisted.python import components
from twisted.python.failure import Failure
from zope.interface import implementer

from hqnlsd.listen import loopback_unless_named
from hqnlsd.listeners import Listener
from hqnlsd.securefiles import (
    UnsafePathError,
    check_trusted_file,
    open_private,
    read_private,
    write_atomically,
)

HOST_KEY_NAME = "manhole_host_key"
"""File name of the manhole's private host key inside the state directory."""

_KEY_TYPE_PREFIXES = (b"ssh-", b"ecdsa-", b"sk-")

_log = Logger(namespace="hqnlsd.manhole")


class ManholeError(Exception):
    """The manhole cannot be configured or started; the message says why."""


# -- listen description --------------------------------------------------------


def loopback_description(description: str) -> str:
    """Return the strports description the manhole will really listen on.

    A bare port number means TCP. A ``tcp``/``tcp6`` description without
    ``interface=`` gets the loopback interface; one that names an interface is kept
    as written. A ``unix`` description gets ``mode=600`` unless it sets a mode.
    Anything else raises ManholeError: its reach cannot be checked.
    """
    try:
        return loopback_unless_named(
            description, what="manhole", kinds=frozenset({"tcp", "tcp6", "unix"}), unix_mode="600"
        )
    except ValueError as error:
        raise ManholeError(str(error)) from None


# -- host key ------------------------------------------------------------------


def _check_private_mode(path: Path, what: str) -> None:
    """Refuse a private file that is not a regular file or that others may read."""
    info = path.lstat()
    if not stat.S_ISREG(info.st_mode):
        raise ManholeError(
            f"{what} {path} is not a regular file (a symbolic link is never followed); "
            f"remove it (rm {path})"
        )
    if info.st_mode & 0o077:
        raise ManholeError(
            f"{what} {path} is accessible by group or others "
            f"(mode {stat.S_IMODE(info.st_mode):04o}); run: chmod 600 {path}"
        )


def _write_new_private_file(path: Path, data: bytes) -> bool:
    """Write data to a new file with mode 0600; False if the file already exists.

    The content goes to a temporary file first and is linked into place, so a crash
    never leaves a half-written key and a concurrent writer is never overwritten.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        return True
    finally:
        tmp.unlink(missing_ok=True)


def load_or_create_host_key(state_dir: Path) -> keys.Key:
    """Return the manhole host key, generating it on the first call for state_dir.

    The private key is ``state_dir/manhole_host_key`` (OpenSSH format, mode 0600);
    its public half is written next to it with ``.pub`` for ``known_hosts``.
    Raises ManholeError if the file is unreadable, unsafe or not a key.
    """
    try:
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as e:
        raise ManholeError(f"cannot create state directory {state_dir}: {e}") from None
    path = state_dir / HOST_KEY_NAME
    if not os.path.lexists(path):
        private = ed25519.Ed25519PrivateKey.generate()
        pem = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
        try:
            created = _write_new_private_file(path, pem)
        except OSError as e:
            raise ManholeError(f"cannot write manhole host key {path}: {e}") from None
        if created:
            public = keys.Key(private).public().toString("OPENSSH") + b" hqnlsd-manhole\n"
            pub_path = path.with_name(HOST_KEY_NAME + ".pub")
            try:
                write_atomically(pub_path, public, 0o644)
            except OSError as e:
                _log.warn("cannot write {path}: {error}", path=str(pub_path), error=str(e))
            _log.info("generated manhole host key {path}", path=str(path))
    try:
        _check_private_mode(path, "manhole host key")
        data = read_private(path)
    except UnsafePathError as e:
        raise ManholeError(f"manhole host key: {e}") from None
    except OSError as e:
        raise ManholeError(f"cannot read manhole host key {path}: {e}") from None
    try:
        key: keys.Key = keys.Key.fromString(data)
    except (keys.BadKeyError, ValueError) as e:
        raise ManholeError(f"manhole host key {path} is not a valid key: {e}") from None
    if not key.isPublic():
        return key
    raise ManholeError(f"manhole host key {path} holds a public key, not a private one")


# -- authorized keys -----------------------------------------------------------


def parse_authorized_keys(data: bytes, source: str = "authorized_keys") -> list[keys.Key]:
    """Parse OpenSSH authorized_keys text into keys.

    Blank lines and ``#`` comments are skipped; a line with OpenSSH options or one
    that does not parse is skipped with a logged warning (never accepted).
    """
    result: list[keys.Key] = []
    for number, raw in enumerate(data.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith(b"#"):
            continue
        fields = line.split()
        if not fields[0].startswith(_KEY_TYPE_PREFIXES):
            _log.warn(
                "{source}:{line}: key options are not supported; line ignored",
                source=source,
                line=number,
            )
            continue
        if len(fields) < 2:
            _log.warn("{source}:{line}: no key data; line ignored", source=source, line=number)
            continue
        try:
            result.append(keys.Key.fromString(fields[0] + b" " + fields[1]))
        except (keys.BadKeyError, ValueError) as e:
            _log.warn(
                "{source}:{line}: not a usable key ({error}); line ignored",
                source=source,
                line=number,
                error=str(e),
            )
    return result


def read_authorized_keys(path: Path, *, uid: int | None = None) -> list[keys.Key]:
    """Read an authorized_keys file under OpenSSH's ``StrictModes`` rules.

    The file must be a regular file owned by ``uid`` (default: the daemon's
    effective uid) or root that neither group nor others may write, and every
    directory above it must be owned by ``uid`` or root and not writable by group
    or others (a sticky one such as ``/tmp`` excepted): see
    `hqnlsd.securefiles.check_trusted_file`. The file checked is the file read
    (same device and inode, opened without following a link). Raises
    ManholeError when the file is missing, unreadable or unsafe.
    """
    real = Path(os.path.realpath(path))
    try:
        checked = check_trusted_file(path, uid=uid, what="manhole authorized keys")
        fd = open_private(real, os.O_RDONLY)
        with os.fdopen(fd, "rb") as source:
            opened = os.fstat(source.fileno())
            if (opened.st_dev, opened.st_ino) != (checked.st_dev, checked.st_ino):
                raise ManholeError(f"manhole authorized keys {path} changed while being read")
            data = source.read()
    except UnsafePathError as e:
        raise ManholeError(str(e)) from None
    except OSError as e:
        raise ManholeError(f"cannot read manhole authorized keys {path}: {e}") from None
    return parse_authorized_keys(data, str(path))


@implementer(IAuthorizedKeysDB)
class AuthorizedKeysFile:
    """The keys of one authorized_keys file, valid for any SSH user name.

    The file is read again on every lookup: edits (revocations) apply to the next
    login without a restart. An unreadable or unsafe file authorizes nobody.
    """

    def __init__(self, path: Path) -> None:
        """Serve the keys listed in path."""
        self.path = path

    def getAuthorizedKeys(self, avatarId: bytes) -> Iterable[keys.Key]:
        """Return the keys that may log in (as any user, so avatarId is unused)."""
        try:
            return read_authorized_keys(self.path)
        except ManholeError as e:
            _log.error("{error}; refusing manhole login", error=str(e))
            return []


# -- the shell -------------------------------------------------------------------


def describe_namespace(namespace: dict[str, object]) -> list[str]:
    """Return the login help text: one line per name with the type of its value."""
    lines = [
        "hqnlsd manhole: a Python shell inside the running daemon.",
        "Objects are live; whatever you change changes the daemon. Ctrl-D leaves.",
    ]
    if namespace:
        lines.append("Names:")
        width = max(len(name) for name in namespace)
        for name in sorted(namespace):
            value = namespace[name]
            doc = (getattr(value, "__doc__", None) or "").strip().splitlines()
            summary = f" - {doc[0]}" if doc and not isinstance(value, (int, float, str)) else ""
            lines.append(f"  {name.ljust(width)}  {type(value).__name__}{summary}")
    else:
        lines.append("The namespace is empty.")
    return lines


class PlainManholeShell(Manhole):
    """The interpreter of a session without a pty (``ssh host < script``).

    It greets the user with the help text; input is not syntax-coloured, so piped
    output stays readable.
    """

    def __init__(self, namespace: dict[str, object], banner: list[str]) -> None:
        """Interpret input in (a shallow copy of) namespace; show banner on login."""
        super().__init__(namespace)
        self._banner = banner

    def initializeScreen(self) -> None:
        """Clear the screen, show the help text, then the first prompt."""
        self.terminal.reset()
        for line in self._banner:
            self.terminal.write(line.encode("utf-8", "replace"))
            self.terminal.nextLine()
        self.terminal.write(self.ps[self.pn])
        self.setInsertMode()


class ManholeShell(PlainManholeShell, ColoredManhole):
    """The interpreter of an interactive session (with a pty): syntax-coloured."""


class _ClientInput:
    """Transport handed to the SSH side: client keystrokes go to the terminal."""

    def __init__(self, shell: _ShellConnection) -> None:
        self._shell = shell

    def write(self, data: bytes) -> None:
        self._shell.terminal.dataReceived(data)

    def loseConnection(self) -> None:
        self._shell.closed_by_client()


class _TerminalOutput:
    """Transport handed to the terminal: its output goes to the SSH client."""

    disconnecting = False

    def __init__(self, shell: _ShellConnection) -> None:
        self._shell = shell

    def write(self, data: bytes) -> None:
        self._shell.proto.write(data)

    def writeSequence(self, data: Iterable[bytes]) -> None:
        self._shell.proto.write(b"".join(data))

    def loseConnection(self) -> None:
        self._shell.end()


class _ShellConnection:
    """Joins one SSH session channel to one terminal running a ManholeShell."""

    def __init__(
        self,
        proto: SSHSessionProcessProtocol,
        terminal: ServerProtocol,
        width: int,
        height: int,
    ) -> None:
        self.proto = proto
        self.terminal = terminal
        self._ended = False
        proto.makeConnection(_ClientInput(self))
        terminal.makeConnection(_TerminalOutput(self))
        self.resize(width, height)

    def resize(self, width: int, height: int) -> None:
        """Record the client's window size (without redrawing the screen)."""
        shell = self.terminal.terminalProtocol
        if shell is not None:
            shell.width = width
            shell.height = height

    def end(self) -> None:
        """The shell ended (Ctrl-D, client EOF): exit status 0, close the channel."""
        if self._ended:
            return
        self._ended = True
        self.terminal.connectionLost(Failure(ConnectionDone()))
        self.proto.processEnded(Failure(ProcessDone(0)))

    def closed_by_client(self) -> None:
        """The channel closed from the client side: stop the shell."""
        if self._ended:
            return
        self._ended = True
        self.terminal.connectionLost(Failure(ConnectionDone()))


@implementer(ISession)
class ManholeSession(components.Adapter):
    """The session of one logged-in manhole user: a shell, nothing else.

    Unlike conch's TerminalSession it works without a pty (``ssh host < input``),
    follows window size changes, and ends the shell on the client's EOF with exit
    status 0. Remote commands (``ssh host cmd``) are refused.
    """

    width = 80
    height = 24

    def __init__(
        self,
        original: Any,
        open_terminal: Callable[[bool], ServerProtocol],
        reactor: Any,
    ) -> None:
        """Adapt the avatar's componentized object; open_terminal(pty) builds a shell."""
        super().__init__(original)
        self._open_terminal = open_terminal
        self._reactor = reactor
        self._pty = False
        self._shell: _ShellConnection | None = None

    def getPty(self, term: bytes, windowSize: Any, attrs: Any) -> None:
        """Remember that the client has a terminal, and its size."""
        self._pty = True
        self.height, self.width = windowSize[:2]

    def openShell(self, proto: SSHSessionProcessProtocol) -> None:
        """Start the shell; its namespace is built now, from the live objects."""
        terminal = self._open_terminal(self._pty)
        self._shell = _ShellConnection(proto, terminal, self.width, self.height)

    def execCommand(self, proto: SSHSessionProcessProtocol, cmd: bytes) -> None:
        """Refuse remote commands: a message on stderr and exit status 1.

        The refusal is sent after the exec request has been answered (next reactor
        turn), so the client sees an orderly end rather than a protocol error.
        """
        _log.warn("manhole: refused a remote command")

        def refuse() -> None:
            proto.errReceived(
                b"hqnlsd manhole: remote commands are not run; log in for a shell\r\n"
            )
            proto.processEnded(Failure(ProcessTerminated(exitCode=1)))

        self._reactor.callLater(0, refuse)

    def windowChanged(self, newWindowSize: Any) -> None:
        """Follow the client's window size."""
        self.height, self.width = newWindowSize[:2]
        if self._shell is not None:
            self._shell.resize(self.width, self.height)

    def eofReceived(self) -> None:
        """The client sent EOF (end of piped input): end the shell."""
        if self._shell is not None:
            self._shell.end()

    def closed(self) -> None:
        """The channel is closed; nothing more to release."""


@implementer(IRealm)
class ManholeRealm:
    """Gives every authenticated user a ManholeSession on a fresh namespace."""

    def __init__(self, namespace: Callable[[], dict[str, object]], reactor: Any) -> None:
        """namespace() is called once per session to collect the live objects."""
        self._namespace = namespace
        self._reactor = reactor

    def _snapshot(self) -> dict[str, object]:
        """Call namespace(); a failure is logged and leaves an explanatory namespace."""
        try:
            return dict(self._namespace())
        except Exception as e:
            _log.failure("building the manhole namespace failed")
            return {"namespace_error": f"building the namespace failed: {e!r}"}

    def open_terminal(self, pty: bool = True) -> ServerProtocol:
        """Build the terminal protocol of a new session, namespace taken now.

        With a pty the shell colours the input as it is typed; without one (piped
        input) it does not.
        """
        namespace = self._snapshot()
        shell = ManholeShell if pty else PlainManholeShell
        return ServerProtocol(shell, namespace, describe_namespace(namespace))

    def requestAvatar(
        self, avatarId: bytes | tuple[()], mind: object, *interfaces: Any
    ) -> tuple[Any, Any, Callable[[], None]]:
        """Return the SSH user object of avatarId (any user name; the key was checked)."""
        if not isinstance(avatarId, bytes):
            raise NotImplementedError("the manhole has no anonymous login")
        if IConchUser not in interfaces:
            raise NotImplementedError("the manhole only offers SSH sessions")
        comp = components.Componentized()
        user = TerminalUser(comp, avatarId)
        comp.setComponent(IConchUser, user)
        comp.setComponent(ISession, ManholeSession(comp, self.open_terminal, self._reactor))
        name = avatarId.decode("utf-8", "replace")
        _log.info("manhole login by {user}", user=name)

        def logout() -> None:
            _log.info("manhole logout by {user}", user=name)

        return IConchUser, user, logout


class ManholeSSHFactory(ssh_factory.SSHFactory):
    """SSH server factory whose host key is set by the service before listening."""

    def __init__(self, portal: Portal) -> None:
        """Authenticate through portal (public keys only)."""
        self.portal = portal
        self.host_key: keys.Key | None = None

    def getPublicKeys(self) -> dict[bytes, keys.Key]:
        """The public half of the host key, by SSH key type."""
        if self.host_key is None:
            raise conch_error.ConchError("the manhole host key was not loaded")
        return {self.host_key.sshType(): self.host_key.public()}

    def getPrivateKeys(self) -> dict[bytes, keys.Key]:
        """The host key, by SSH key type."""
        if self.host_key is None:
            raise conch_error.ConchError("the manhole host key was not loaded")
        return {self.host_key.sshType(): self.host_key}


class ManholeService(MultiService):
    """The manhole: checks its keys, then listens (an IService).

    The host key is loaded (or generated) and the authorized keys file checked at
    start, before the listener binds, in ``privilegedStartService`` or else in
    ``startService``; any problem raises and so stops the daemon's start-up, as does
    a failed bind.
    """

    def __init__(
        self,
        description: str,
        factory: ManholeSSHFactory,
        *,
        authorized_keys: Path,
        state_dir: Path,
        reactor: Any,
    ) -> None:
        """Prepare a listener on description (already made loopback-safe)."""
        super().__init__()
        self.setName("manhole")
        self.description = description
        self.factory = factory
        self.authorized_keys = authorized_keys
        self.state_dir = state_dir
        self.listener = Listener.from_description(
            reactor, description, cast(IProtocolFactory, factory)
        )
        self.listener.setServiceParent(self)

    @property
    def listening_port(self) -> IListeningPort | None:
        """The bound port (tests bind port 0 and read it here); None unless listening."""
        return self.listener.port

    def _prepare(self) -> None:
        """Load the host key and check the authorized keys, once."""
        if self.factory.host_key is not None:
            return
        if not read_authorized_keys(self.authorized_keys):
            _log.warn(
                "manhole authorized keys {path} lists no usable key: nobody can log in",
                path=str(self.authorized_keys),
            )
        self.factory.host_key = load_or_create_host_key(self.state_dir)

    def privilegedStartService(self) -> None:
        """Prepare the keys, then bind the listener."""
        self._prepare()
        super().privilegedStartService()

    def startService(self) -> None:
        """Prepare the keys (if not done yet), then start listening."""
        self._prepare()
        super().startService()
        _log.info("manhole (SSH) listening on {description}", description=self.description)

    def stopService(self) -> Deferred[None]:
        """Stop listening; sessions already open are not cut."""
        d: Deferred[None] = super().stopService()
        return d


def make_manhole_service(
    description: str,
    *,
    authorized_keys: Path,
    state_dir: Path,
    namespace: Callable[[], dict[str, object]],
    reactor: Any,
) -> ManholeService:
    """Build the SSH manhole service (an IService; not started).

    description is a strports description (``tcp:2222`` means 127.0.0.1 port 2222;
    ``tcp:2222:interface=0.0.0.0`` listens everywhere); authorized_keys an OpenSSH
    authorized_keys file; state_dir where the host key lives; namespace a callable
    returning the live objects for each new session; reactor the reactor to
    listen with. Raises ManholeError for a description that is not allowed.
    """
    listen = loopback_description(description)
    keys_db = cast(IAuthorizedKeysDB, AuthorizedKeysFile(authorized_keys))
    checker = cast(ICredentialsChecker, SSHPublicKeyChecker(keys_db))
    portal = Portal(cast(IRealm, ManholeRealm(namespace, reactor)), [checker])
    return ManholeService(
        listen,
        ManholeSSHFactory(portal),
        authorized_keys=authorized_keys,
        state_dir=state_dir,
        reactor=reactor,
    )
