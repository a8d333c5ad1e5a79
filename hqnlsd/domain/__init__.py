"""Server domains: membership, views and epochs, the per-member state machine.

The logic is pure (see `hqnlsd.domain.node.DomainNode`): the daemon wires it to
peer links, a clock and its state directory; tests wire it to a simulated
network. ``docs/domains.md`` explains the design and why it is safe.
"""

from hqnlsd.domain.membership import is_quorum, rank_from_alias, validate_ranks
from hqnlsd.domain.node import (
    AuthorityLost,
    DomainNode,
    NotServing,
    OutcomeUnknown,
    StateMachine,
    SubmitTimeout,
)
from hqnlsd.domain.role import Refusal, Role, RoleInfo
from hqnlsd.domain.storage import DomainStorage, Durable, MemoryStorage
from hqnlsd.domain.timing import DomainTimers
from hqnlsd.domain.view import Ballot, Value, View

__all__ = [
    "AuthorityLost",
    "Ballot",
    "DomainNode",
    "DomainStorage",
    "DomainTimers",
    "Durable",
    "MemoryStorage",
    "NotServing",
    "OutcomeUnknown",
    "Refusal",
    "Role",
    "RoleInfo",
    "StateMachine",
    "SubmitTimeout",
    "Value",
    "View",
    "is_quorum",
    "rank_from_alias",
    "validate_ranks",
]
