"""The admin changes of a product: ``policy``, ``crashout``, ``timeout``, ``kill``,
``addnode``/``rmnode``, ``ftol``/``ltof``, ``exhost``/``unexhost``,
``adduser``/``remuser`` and the access levels (``adduacc``, ``remuacc``,
``addgacc``, ``remgacc``).

Each goes through the licensing engine that holds the product, which expresses
it as events; the answer waits for their commit (`hqnlsd.admin.durability`),
so an admin never hears "done" of a change a crash could forget. A change on a
product of a multi-host domain this member is not the primary of raises
`hqnlsd.admin.targets.Forward` before anything changes. A query (``policy p``,
``crashout p``) reads the product's state and changes nothing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from twisted.internet.defer import Deferred

from hqnlsd.admin import wire
from hqnlsd.admin.context import AdminError, integer_arg, text_arg
from hqnlsd.admin.durability import Durability
from hqnlsd.admin.policywords import flag_names, plan_policy
from hqnlsd.admin.targets import Target, Targets
from hqnlsd.licensing.results import AdminDone, Denied, Outcome
from hqnlsd.permits.policy import Policy, describe


class Changes:
    """The product changes of one daemon (see the module docstring)."""

    def __init__(self, targets: Targets, durability: Durability) -> None:
        self.targets = targets
        self.durability = durability

    def change(
        self,
        target: Target,
        outcome: Outcome[AdminDone | Denied],
        command: str,
        who: str,
        label: str | None = None,
    ) -> Deferred[dict[str, Any]]:
        """`Durability.commit` a change to ``target``: through its journal or its domain."""
        return self.durability.commit(outcome, command, label or target.label, who, target.route)

    def policy(self, args: Mapping[str, Any], who: str) -> Any:
        """``policy p [words]``: show the product's policy flags, or change them (`plan_policy`)."""
        value = args.get("value")
        query = value is None or (isinstance(value, str) and not value.strip())
        target = self.targets.product(args, change=not query)
        status = self.targets.current(target)
        if query:
            return {
                "policy": status.policy,
                "policy_text": describe(status.policy),
                "admin_locked": flag_names(status.admin_locks),
            }
        if not isinstance(value, str):
            raise AdminError(wire.BAD_REQUEST, "the policy value must be text")
        plan = plan_policy(
            value, status.policy & 0xFFFF, status.policy >> 16, status.admin_locks
        )
        outcome = target.engine.set_policy(
            target.publisher, target.product, plan.flags, plan.lock
        )

        def add_word(answer: dict[str, Any]) -> dict[str, Any]:
            now = self.targets.current(target)
            answer.update(
                policy=now.policy,
                policy_text=describe(now.policy),
                admin_locked=flag_names(now.admin_locks),
                locked=flag_names(plan.lock),
                ignored=plan.ignored,
            )
            return answer

        return self.change(target, outcome, "policy", who).addCallback(add_word)

    def _seconds_setting(self, args: Mapping[str, Any], who: str, what: str) -> Any:
        query = not args.get("default") and "seconds" not in args
        target = self.targets.product(args, change=not query)
        status = self.targets.current(target)
        if query:
            return {what: getattr(status, what)}
        if args.get("default"):
            seconds: float | None = None
        else:
            raw = args["seconds"]
            if isinstance(raw, bool) or not isinstance(raw, int | float):
                raise AdminError(wire.BAD_REQUEST, f"the {what} must be a number of seconds")
            try:
                seconds = float(raw)
            except OverflowError:
                seconds = math.inf
            if not math.isfinite(seconds):
                raise AdminError(wire.BAD_REQUEST, f"the {what} must be a finite number of seconds")
        engine = target.engine
        setter = engine.set_crashout if what == "crashout" else engine.set_timeout
        outcome = setter(target.publisher, target.product, seconds)

        def add_value(answer: dict[str, Any]) -> dict[str, Any]:
            answer[what] = getattr(self.targets.current(target), what)
            return answer

        return self.change(target, outcome, what, who).addCallback(add_value)

    def crashout(self, args: Mapping[str, Any], who: str) -> Any:
        """``crashout p [seconds | default]``: show or set the GRAB crashout time."""
        return self._seconds_setting(args, who, "crashout")

    def timeout(self, args: Mapping[str, Any], who: str) -> Any:
        """``timeout p [seconds | default]``: show or set the TIML / LKNL timeout."""
        return self._seconds_setting(args, who, "timeout")

    def kill(self, args: Mapping[str, Any], who: str) -> Any:
        """``kill``: take a licence back, by its handle or by its number in ``listu``."""
        handle = args.get("handle")
        if isinstance(handle, str) and handle:
            domains = self.targets.root.domains
            route = domains.route_for_handle(handle) if domains is not None else None
            target = self.targets.checked(self.targets.target("", "", route), change=True)
            return self.change(target, target.engine.kill(handle), "kill", who, handle)
        target = self.targets.product(args)
        index = integer_arg(args, "index", "licence number")
        outcome = target.engine.kill_index(target.publisher, target.product, index)
        return self.change(target, outcome, "kill", who, f"{target.label} licence {index}")

    def _node(self, args: Mapping[str, Any], who: str, *, add: bool) -> Any:
        target = self.targets.product(args)
        address = text_arg(args, "address", "locked node's IPv4 address")
        engine = target.engine
        if add:
            unique_id = integer_arg(args, "unique_id", "unique id", 0)
            outcome = engine.add_node(target.publisher, target.product, address, unique_id)
        else:
            # rmnode HOST without an id: the host's listing that addnode added.
            given = integer_arg(args, "unique_id", "unique id") if "unique_id" in args else None
            outcome = engine.remove_node(target.publisher, target.product, address, given)
        return self.change(target, outcome, "addnode" if add else "rmnode", who)

    def addnode(self, args: Mapping[str, Any], who: str) -> Any:
        """``addnode p host [id]``: add a host to the product's locked-node list."""
        return self._node(args, who, add=True)

    def rmnode(self, args: Mapping[str, Any], who: str) -> Any:
        """``rmnode p host [id]``: take a host added with addnode off the locked-node list."""
        return self._node(args, who, add=False)

    def _pools(self, args: Mapping[str, Any], who: str, *, to_locked: bool) -> Any:
        target = self.targets.product(args)
        count = integer_arg(args, "count", "number of licences", 1)
        engine = target.engine
        method = engine.float_to_locked if to_locked else engine.locked_to_float
        outcome = method(target.publisher, target.product, count)
        return self.change(target, outcome, "ftol" if to_locked else "ltof", who)

    def ftol(self, args: Mapping[str, Any], who: str) -> Any:
        """``ftol p [count]``: make floating licences node-locked."""
        return self._pools(args, who, to_locked=True)

    def ltof(self, args: Mapping[str, Any], who: str) -> Any:
        """``ltof p [count]``: make licences that ftol converted floating again."""
        return self._pools(args, who, to_locked=False)

    def _named(self, args: Mapping[str, Any], who: str, command: str, key: str, what: str) -> Any:
        target = self.targets.product(args)
        name = text_arg(args, key, what)
        engine = target.engine
        methods: dict[str, Callable[[str, str, str], Outcome[AdminDone | Denied]]] = {
            "exhost": engine.exclude_host,
            "unexhost": engine.unexclude_host,
            "adduser": engine.add_named_user,
            "remuser": engine.remove_named_user,
            "remuacc": engine.remove_user_access,
            "remgacc": engine.remove_group_access,
        }
        outcome = methods[command](target.publisher, target.product, name)
        return self.change(target, outcome, command, who)

    def exhost(self, args: Mapping[str, Any], who: str) -> Any:
        """``exhost p host``: refuse the product to a host."""
        return self._named(args, who, "exhost", "host", "host name or address")

    def unexhost(self, args: Mapping[str, Any], who: str) -> Any:
        """``unexhost p host``: readmit an excluded host."""
        return self._named(args, who, "unexhost", "host", "host name or address")

    def adduser(self, args: Mapping[str, Any], who: str) -> Any:
        """``adduser p user``: add a named user (USRL), with a warning if USRL is off."""
        done = self._named(args, who, "adduser", "user", "user name")
        target = self.targets.product(args)
        return done.addCallback(self._warn_off, target, Policy.USRL, "named users")

    def _warn_off(
        self, answer: dict[str, Any], target: Target, flag: Policy, what: str
    ) -> dict[str, Any]:
        """Add a warning to ``answer`` if the policy that makes the change matter is off."""
        if not self.targets.current(target).policy & int(flag):
            answer["message"] = (
                f"{answer['message']} (warning: policy {flag.name} is off, so {what} have "
                f"no effect until it is turned on: policy PRODUCT {flag.name})"
            )
        return answer

    def remuser(self, args: Mapping[str, Any], who: str) -> Any:
        """``remuser p user``: take a named user off the USRL list."""
        return self._named(args, who, "remuser", "user", "user name")

    def remuacc(self, args: Mapping[str, Any], who: str) -> Any:
        """``remuacc p user``: remove a user's access level."""
        return self._named(args, who, "remuacc", "user", "user name")

    def remgacc(self, args: Mapping[str, Any], who: str) -> Any:
        """``remgacc p group``: remove a group's access level."""
        return self._named(args, who, "remgacc", "group", "group name")

    def _access(self, args: Mapping[str, Any], who: str, *, group: bool) -> Any:
        target = self.targets.product(args)
        key = "group" if group else "user"
        name = text_arg(args, key, f"{key} name")
        level = integer_arg(args, "level", "access level (0..8)")
        engine = target.engine
        method = engine.set_group_access if group else engine.set_user_access
        outcome = method(target.publisher, target.product, name, level)
        done = self.change(target, outcome, "addgacc" if group else "adduacc", who)
        return done.addCallback(self._warn_off, target, Policy.ACCL, "access levels")

    def adduacc(self, args: Mapping[str, Any], who: str) -> Any:
        """``adduacc p user level``: give a user an access level (ACCL)."""
        return self._access(args, who, group=False)

    def addgacc(self, args: Mapping[str, Any], who: str) -> Any:
        """``addgacc p group level``: give a group an access level (ACCL)."""
        return self._access(args, who, group=True)
