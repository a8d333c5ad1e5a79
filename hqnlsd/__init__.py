"""hqnlsd: a network licence server daemon on Twisted.

The package layout is the architecture; see docs/architecture.md.
"""

__version__ = "0.1.0"
