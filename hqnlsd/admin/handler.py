"""Every ``hqn_lsa`` command, on the live daemon: listings, changes, reinit.

`AdminHandler.handle` takes a command name, its arguments (decoded JSON) and
who asked, and returns the result (JSON-safe values) or a Deferred of it. A
refusal raises `AdminError` with an error name (a licence status name such as
BADPRODUCT or ILLEGAL, or one of `hqnlsd.admin.wire`'s) and a clear message.

Changes go through the licensing engine, which expresses each as events; the
events are submitted to the journal and the answer waits for their commit, as
a REQUEST's does, so an admin never hears "done" of a change a crash could
forget. Every change is logged under the ADMIN log switch with who made it.

A product is named by its number in ``listp`` (``{"index": 1}``) or by
``{"publisher": ..., "product": ...}``. Products of a multi-host domain are read
but not served yet (issue 4): a change to one is refused with NOTVERIFIED, since
state-changing commands must act on the domain's acting primary.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

import hqnlsd
from hqnlsd.admin import wire
from hqnlsd.identity import HostsTable, format_unique_id
from hqnlsd.licensing.events import Event
from hqnlsd.licensing.policy import KNOWN_FLAGS, Policy, describe
from hqnlsd.licensing.results import AdminDone, Denied, Outcome, ProductStatus
from hqnlsd.logging.switches import LogLevelError, preset_name

if TYPE_CHECKING:
    from hqnlsd.service import HqnlsdService

#: Commands that change state (logged under ADMIN, answered after the commit).
CHANGES = frozenset(
    {
        "policy",
        "crashout",
        "timeout",
        "kill",
        "addnode",
        "rmnode",
        "ftol",
        "ltof",
        "exhost",
        "unexhost",
        "adduser",
        "remuser",
        "adduacc",
        "remuacc",
        "addgacc",
        "remgacc",
        "reinit",
        "loglevel",
    }
)

_POLICY_WORD = re.compile(r"^([A-Za-z]+)([+-]?)$")
_NUMBER = re.compile(r"^(0[xX][0-9a-fA-F]+|[0-9]+)$")


class AdminError(Exception):
    """A refused admin command: an error name and a message for the admin."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name}: {message}")
        self.name = name
        self.message = message


def parse_policy(text: str, current: int, locks: int) -> int:
    """The policy flags after ``policy`` text, relative to ``current`` flags.

    A number (``0x41``, ``65``) is the whole word: its low 16 bits are the flags;
    its high 16 bits, if any, must be the publisher's locks as they are. Names
    (``GRAB UVIS``) set exactly those flags when none has a sign; ``NAME+`` and
    ``NAME-`` turn one flag on or off and keep the others. Raises AdminError.
    """
    words = text.replace(",", " ").split()
    if not words:
        raise AdminError("ILLEGAL", "policy: give a number or flag names")
    if len(words) == 1 and _NUMBER.match(words[0]):
        number = int(words[0], 0)
        if number >> 32:
            raise AdminError("ILLEGAL", f"policy {words[0]} is more than 32 bits")
        high = number >> 16
        if high and high != locks:
            raise AdminError(
                "ILLEGAL",
                f"policy {words[0]}: the high 16 bits are the publisher's locks "
                f"(0x{locks:04x} for this product) and cannot be changed",
            )
        return number & 0xFFFF
    signed = any(word.endswith(("+", "-")) for word in words)
    flags = current if signed else 0
    known = {flag.name: int(flag) for flag in Policy if flag.name}
    for word in words:
        match = _POLICY_WORD.match(word)
        name = match.group(1).upper() if match else ""
        if match is None or name not in known:
            raise AdminError(
                "ILLEGAL",
                f"policy: {word!r} is not a policy flag; flags: {' '.join(known)} "
                "(NAME+ turns one on, NAME- off; bare names set exactly those)",
            )
        if match.group(2) == "-":
            flags &= ~known[name]
        else:
            flags |= known[name]
    return flags & KNOWN_FLAGS


def _status_dict(index: int, status: ProductStatus) -> dict[str, Any]:
    return {
        "index": index,
        "publisher": status.publisher,
        "product": status.product,
        "version": status.version,
        "policy": status.policy,
        "policy_text": describe(status.policy),
        "node_count": status.node_count,
        "floating_count": status.floating_count,
        "locked_used": status.locked_used,
        "floating_used": status.floating_used,
        "start": status.start.isoformat(),
        "expiry": status.expiry.isoformat(),
        "period": status.period,
        "crashout": status.crashout,
        "timeout": status.timeout,
        "locked_nodes": [[address, unique_id] for address, unique_id in status.locked_nodes],
        "excluded": list(status.excluded),
        "named_users": list(status.named_users),
        "user_access": dict(status.user_access),
        "group_access": dict(status.group_access),
    }


def _text(args: Mapping[str, Any], key: str, what: str) -> str:
    value = args.get(key)
    if not isinstance(value, str) or not value.strip():
        raise AdminError(wire.BAD_REQUEST, f"give the {what}")
    return value.strip()


def _integer(args: Mapping[str, Any], key: str, what: str, default: int | None = None) -> int:
    value = args.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise AdminError(wire.BAD_REQUEST, f"the {what} must be a whole number")
    return value


class AdminHandler:
    """The admin commands of one daemon (see the module docstring)."""

    log = Logger()

    def __init__(self, root: HqnlsdService) -> None:
        self.root = root
        self.started = root.reactor.seconds()
        self._commands: dict[str, Callable[[Mapping[str, Any], str], Any]] = {
            "id": self._id,
            "sinfo": self._sinfo,
            "listhqn": self._listhqn,
            "listp": self._listp,
            "listu": self._listu,
            "policy": self._policy,
            "loglevel": self._loglevel,
            "crashout": self._crashout,
            "timeout": self._timeout,
            "kill": self._kill,
            "addnode": self._addnode,
            "rmnode": self._rmnode,
            "ftol": self._ftol,
            "ltof": self._ltof,
            "exhost": self._exhost,
            "unexhost": self._unexhost,
            "adduser": self._adduser,
            "remuser": self._remuser,
            "adduacc": self._adduacc,
            "remuacc": self._remuacc,
            "addgacc": self._addgacc,
            "remgacc": self._remgacc,
            "reinit": self._reinit,
        }

    @property
    def commands(self) -> tuple[str, ...]:
        """The command names this handler answers."""
        return tuple(self._commands)

    def handle(self, command: str, args: Mapping[str, Any], who: str) -> Any:
        """Run one command; its result, or a Deferred of it; AdminError if refused."""
        method = self._commands.get(command)
        if method is None:
            raise AdminError(
                wire.UNKNOWN_COMMAND,
                f"no admin command {command!r}; commands: {', '.join(self._commands)}",
            )
        if self.root.server is None or self.root.journal is None:
            raise AdminError(wire.STARTING, "the server is starting up; try again shortly")
        return method(args, who)

    # -- helpers ------------------------------------------------------------------------

    @property
    def _engine(self) -> Any:
        return self.root.engine

    def _product(self, args: Mapping[str, Any]) -> tuple[str, str]:
        """(publisher, product) of the product a command names; AdminError if none."""
        ref = args.get("product")
        statuses = self._engine.status()
        if not isinstance(ref, Mapping):
            raise AdminError(
                wire.BAD_REQUEST,
                "name a product: its number in listp, or PUBLISHER PRODUCT",
            )
        if "index" in ref:
            index = ref["index"]
            if isinstance(index, bool) or not isinstance(index, int):
                raise AdminError(wire.BAD_REQUEST, "a product number must be a whole number")
            if not 1 <= index <= len(statuses):
                raise AdminError(
                    "BADPRODUCT",
                    f"there is no product {index}: this server serves {len(statuses)} "
                    "product(s); listp shows their numbers",
                )
            chosen = statuses[index - 1]
            return chosen.publisher, chosen.product
        publisher, product = ref.get("publisher"), ref.get("product")
        if not isinstance(publisher, str) or not isinstance(product, str):
            raise AdminError(wire.BAD_REQUEST, "name a product: PUBLISHER PRODUCT")
        if self._engine.product(publisher, product) is not None:
            return publisher, product
        server = self.root.server
        offer = server.catalogue.find(publisher, product) if server is not None else None
        if offer is not None:
            domain = " ".join(str(host.address) for host in offer.domain)
            if not offer.here:
                raise AdminError(
                    "TRY_DOMAIN",
                    f"{publisher} {product} is served by another server domain "
                    f"({domain}): administer it there",
                )
            if len(offer.domain) > 1:
                raise AdminError(
                    "NOTVERIFIED",
                    f"{publisher} {product} belongs to the multi-host domain {domain}; "
                    "changes must be made on its acting primary, and this server has not "
                    "been verified by that domain",
                )
        raise AdminError(
            "BADPRODUCT",
            f"{publisher} {product} is not served here; listp shows what is",
        )

    def _commit(
        self, outcome: Outcome[AdminDone | Denied], command: str, target: str, who: str
    ) -> Deferred[dict[str, Any]]:
        """Refuse a Denied; else answer once the change's events are durable, and log it."""
        result = outcome.result
        if isinstance(result, Denied):
            raise AdminError(result.status.name, result.message)
        answer = {"message": result.message, "revoked": result.revoked}
        return self._after(outcome.events, answer, command, target, who)

    def _after(
        self,
        events: Sequence[Event],
        answer: dict[str, Any],
        command: str,
        target: str,
        who: str,
    ) -> Deferred[dict[str, Any]]:
        assert self.root.journal is not None
        done: Deferred[Any] = self.root.journal.submit(events)

        def committed(_: object) -> dict[str, Any]:
            self.log.info(
                "admin {who}: {command} {target}: {message}",
                log_switch="ADMIN",
                who=who,
                command=command,
                target=target,
                message=answer.get("message", ""),
            )
            return answer

        def failed(failure: Failure) -> dict[str, Any]:
            self.log.failure("admin {command}: journal commit failed", failure, command=command)
            raise AdminError(
                wire.INTERNAL,
                "the change could not be recorded durably; it is queued and retried, "
                "check the daemon's log and the state directory",
            )

        done.addCallbacks(committed, failed)
        return done

    # -- listings -------------------------------------------------------------------------

    def _id(self, args: Mapping[str, Any], who: str) -> dict[str, Any]:
        me = self.root.me
        return {
            "address": str(me.address),
            "unique_id": me.unique_id,
            "unique_id_hex": format_unique_id(me.unique_id),
        }

    def _sinfo(self, args: Mapping[str, Any], who: str) -> dict[str, Any]:
        root = self.root
        server = root.server
        assert server is not None and root.journal is not None
        discovery = server.discovery
        files = []
        for report in server.catalogue.files:
            permit = report.file.permit
            error = report.file.error
            decision = report.decision
            condition = decision.condition if decision is not None else None
            files.append(
                {
                    "path": report.file.path,
                    "number": permit.number if permit is not None else None,
                    "servers": ([str(host.address) for host in permit.servers] if permit else []),
                    "products": [
                        f"{p.publisher} {p.product} {p.version}" for p in report.file.products
                    ],
                    "serving": decision.serving.value if decision is not None else None,
                    "error": str(error) if error is not None else None,
                    "condition": str(condition) if condition is not None else None,
                }
            )
        return {
            "version": hqnlsd.__version__,
            "address": str(root.me.address),
            "unique_id": root.me.unique_id,
            "unique_id_hex": format_unique_id(root.me.unique_id),
            "role": "single-host server (multi-host domains: not yet served)",
            "started": self.started,
            "now": root.reactor.seconds(),
            "state_dir": str(root.config.state_dir),
            "journal_healthy": root.journal.healthy,
            "permit_source": discovery.source if discovery is not None else None,
            "searched": [str(path) for path in discovery.searched] if discovery else [],
            "search_problems": list(discovery.problems) if discovery else [],
            "files": files,
            "served": len(self._engine.served()),
            "held": self._engine.held_count(),
            "log_switches": str(root.switches),
        }

    def _listhqn(self, args: Mapping[str, Any], who: str) -> dict[str, Any]:
        path = self.root.source.hosts_file
        try:
            table = HostsTable.load(path)
        except OSError as error:
            raise AdminError(wire.INTERNAL, f"cannot read the hosts file {path}: {error}") from None
        me = self.root.me.address
        servers = [
            {
                "rank": rank,
                "alias": f"hqnserver{rank}",
                "address": str(address),
                "this": address == me,
            }
            for rank, address in sorted(table.rank_addresses().items())
        ]
        return {"hosts_file": str(path), "servers": servers}

    def _listp(self, args: Mapping[str, Any], who: str) -> dict[str, Any]:
        return {
            "products": [
                _status_dict(index, status)
                for index, status in enumerate(self._engine.status(), start=1)
            ]
        }

    def _listu(self, args: Mapping[str, Any], who: str) -> dict[str, Any]:
        statuses = list(enumerate(self._engine.status(), start=1))
        if args.get("product") is not None:
            wanted = self._product(args)
            statuses = [(i, s) for i, s in statuses if (s.publisher, s.product) == wanted]
        products = []
        for index, status in statuses:
            holders = self._engine.holders(status.publisher, status.product)
            products.append(
                {
                    "index": index,
                    "publisher": status.publisher,
                    "product": status.product,
                    "version": status.version,
                    "holders": [
                        {
                            "handle": holder.handle,
                            "indices": list(holder.indices),
                            "type": holder.type,
                            "user": holder.user,
                            "host": holder.host,
                            "address": holder.address,
                            "pid": holder.pid,
                            "uid": holder.uid,
                            "group": holder.group,
                            "granted": holder.granted,
                            "last_update": holder.last_update,
                        }
                        for holder in holders
                    ],
                }
            )
        return {"products": products}

    # -- changes ------------------------------------------------------------------------

    def _current(self, publisher: str, product: str) -> ProductStatus:
        for status in self._engine.status():
            if (status.publisher, status.product) == (publisher, product):
                found: ProductStatus = status
                return found
        raise AdminError("BADPRODUCT", f"{publisher} {product} is not served here")

    def _policy(self, args: Mapping[str, Any], who: str) -> Any:
        publisher, product = self._product(args)
        status = self._current(publisher, product)
        value = args.get("value")
        if value is None or (isinstance(value, str) and not value.strip()):
            return {"policy": status.policy, "policy_text": describe(status.policy)}
        if not isinstance(value, str):
            raise AdminError(wire.BAD_REQUEST, "the policy value must be text")
        flags = parse_policy(value, status.policy & 0xFFFF, status.policy >> 16)
        outcome = self._engine.set_policy(publisher, product, flags)

        def add_word(answer: dict[str, Any]) -> dict[str, Any]:
            word = self._current(publisher, product).policy
            answer.update(policy=word, policy_text=describe(word))
            return answer

        return self._commit(outcome, "policy", f"{publisher} {product}", who).addCallback(add_word)

    def _seconds_setting(self, args: Mapping[str, Any], who: str, what: str) -> Any:
        publisher, product = self._product(args)
        status = self._current(publisher, product)
        if args.get("default"):
            seconds: float | None = None
        elif "seconds" in args:
            raw = args["seconds"]
            if isinstance(raw, bool) or not isinstance(raw, int | float):
                raise AdminError(wire.BAD_REQUEST, f"the {what} must be a number of seconds")
            seconds = float(raw)
        else:
            return {what: getattr(status, what)}
        setter = self._engine.set_crashout if what == "crashout" else self._engine.set_timeout
        outcome = setter(publisher, product, seconds)

        def add_value(answer: dict[str, Any]) -> dict[str, Any]:
            answer[what] = getattr(self._current(publisher, product), what)
            return answer

        return self._commit(outcome, what, f"{publisher} {product}", who).addCallback(add_value)

    def _crashout(self, args: Mapping[str, Any], who: str) -> Any:
        return self._seconds_setting(args, who, "crashout")

    def _timeout(self, args: Mapping[str, Any], who: str) -> Any:
        return self._seconds_setting(args, who, "timeout")

    def _kill(self, args: Mapping[str, Any], who: str) -> Any:
        handle = args.get("handle")
        if isinstance(handle, str) and handle:
            return self._commit(self._engine.kill(handle), "kill", handle, who)
        publisher, product = self._product(args)
        index = _integer(args, "index", "licence number")
        outcome = self._engine.kill_index(publisher, product, index)
        return self._commit(outcome, "kill", f"{publisher} {product} licence {index}", who)

    def _node(self, args: Mapping[str, Any], who: str, *, add: bool) -> Any:
        publisher, product = self._product(args)
        address = _text(args, "address", "locked node's IPv4 address")
        unique_id = _integer(args, "unique_id", "unique id", 0)
        method = self._engine.add_node if add else self._engine.remove_node
        outcome = method(publisher, product, address, unique_id)
        name = "addnode" if add else "rmnode"
        return self._commit(outcome, name, f"{publisher} {product}", who)

    def _addnode(self, args: Mapping[str, Any], who: str) -> Any:
        return self._node(args, who, add=True)

    def _rmnode(self, args: Mapping[str, Any], who: str) -> Any:
        return self._node(args, who, add=False)

    def _pools(self, args: Mapping[str, Any], who: str, *, to_locked: bool) -> Any:
        publisher, product = self._product(args)
        count = _integer(args, "count", "number of licences", 1)
        method = self._engine.float_to_locked if to_locked else self._engine.locked_to_float
        name = "ftol" if to_locked else "ltof"
        return self._commit(method(publisher, product, count), name, f"{publisher} {product}", who)

    def _ftol(self, args: Mapping[str, Any], who: str) -> Any:
        return self._pools(args, who, to_locked=True)

    def _ltof(self, args: Mapping[str, Any], who: str) -> Any:
        return self._pools(args, who, to_locked=False)

    def _named(self, args: Mapping[str, Any], who: str, command: str, key: str, what: str) -> Any:
        publisher, product = self._product(args)
        name = _text(args, key, what)
        methods: dict[str, Callable[[str, str, str], Outcome[AdminDone | Denied]]] = {
            "exhost": self._engine.exclude_host,
            "unexhost": self._engine.unexclude_host,
            "adduser": self._engine.add_named_user,
            "remuser": self._engine.remove_named_user,
            "remuacc": self._engine.remove_user_access,
            "remgacc": self._engine.remove_group_access,
        }
        outcome = methods[command](publisher, product, name)
        return self._commit(outcome, command, f"{publisher} {product}", who)

    def _exhost(self, args: Mapping[str, Any], who: str) -> Any:
        return self._named(args, who, "exhost", "host", "host name or address")

    def _unexhost(self, args: Mapping[str, Any], who: str) -> Any:
        return self._named(args, who, "unexhost", "host", "host name or address")

    def _adduser(self, args: Mapping[str, Any], who: str) -> Any:
        return self._named(args, who, "adduser", "user", "user name")

    def _remuser(self, args: Mapping[str, Any], who: str) -> Any:
        return self._named(args, who, "remuser", "user", "user name")

    def _remuacc(self, args: Mapping[str, Any], who: str) -> Any:
        return self._named(args, who, "remuacc", "user", "user name")

    def _remgacc(self, args: Mapping[str, Any], who: str) -> Any:
        return self._named(args, who, "remgacc", "group", "group name")

    def _access(self, args: Mapping[str, Any], who: str, *, group: bool) -> Any:
        publisher, product = self._product(args)
        key = "group" if group else "user"
        name = _text(args, key, f"{key} name")
        level = _integer(args, "level", "access level (0..8)")
        method = self._engine.set_group_access if group else self._engine.set_user_access
        command = "addgacc" if group else "adduacc"
        return self._commit(
            method(publisher, product, name, level), command, f"{publisher} {product}", who
        )

    def _adduacc(self, args: Mapping[str, Any], who: str) -> Any:
        return self._access(args, who, group=False)

    def _addgacc(self, args: Mapping[str, Any], who: str) -> Any:
        return self._access(args, who, group=True)

    def _loglevel(self, args: Mapping[str, Any], who: str) -> dict[str, Any]:
        switches = getattr(self.root, "switches", None) or getattr(self.root, "log_switches", None)
        if switches is None:
            raise AdminError(wire.NOT_AVAILABLE, "log switches are not available yet")
        text = args.get("text") or ""
        if not isinstance(text, str):
            raise AdminError(wire.BAD_REQUEST, "loglevel text must be text")
        before = str(switches)
        try:
            now = switches.apply(text)
        except LogLevelError as error:
            raise AdminError("ILLEGAL", str(error)) from None
        except OSError as error:
            raise AdminError(
                wire.INTERNAL, f"cannot save the log switches ({error}); nothing changed"
            ) from None
        if text.split() and now != before:
            self.log.info(
                "admin {who}: loglevel {text}: log switches now {switches}",
                log_switch="ADMIN",
                who=who,
                text=text,
                switches=now,
            )
        return {"switches": now, "preset": preset_name(switches.value)}

    def _reinit(self, args: Mapping[str, Any], who: str) -> Any:
        """Revoke every licence, forget the admin settings, re-read the permits."""
        root = self.root
        server = root.server
        assert server is not None and root.journal is not None
        # Serving no product first drops every product's state, so the settings
        # made with hqn_lsa go too: the permits' own values apply again.
        revoked = self._engine.reinit([])
        root.journal.submit(revoked.events).addErrback(lambda failure: None)
        try:
            loaded = server.load_permits()
        except Exception as problem:
            self.log.failure("reinit: reading the permits failed")
            raise AdminError(
                wire.INTERNAL,
                f"licences revoked, but the permits could not be re-read: {problem}",
            ) from None
        for permit_error in server.catalogue.errors:
            root.metrics.permit_read_error(int(permit_error.condition))
        switches = getattr(root, "switches", None) or getattr(root, "log_switches", None)
        if switches is not None:
            switches.reset()
        result = revoked.result
        served = len(self._engine.served())
        answer = {
            "message": f"{result.message}; {served} product(s) served",
            "revoked": result.revoked,
            "served": served,
            "errors": [str(error) for error in server.catalogue.errors],
        }
        done: Deferred[dict[str, Any]] = Deferred()

        def committed(_: object) -> None:
            self.log.info(
                "admin {who}: reinit: {message}",
                log_switch="ADMIN",
                who=who,
                message=answer["message"],
            )
            done.callback(answer)

        def failed(failure: Failure) -> None:
            self.log.failure("admin reinit: journal commit failed", failure)
            done.errback(
                AdminError(wire.INTERNAL, "the reinit could not be recorded durably; see the log")
            )

        loaded.addCallbacks(committed, failed)
        return done
