"""twistd plugin for hqnlsd: only a lazy ServiceMaker, no heavy imports."""

from twisted.application.service import ServiceMaker

hqnlsd = ServiceMaker(
    "hqnlsd",
    "hqnlsd.tap",
    "Network licence server (Harlequin hqn_lsd compatible)",
    "hqnlsd",
)
