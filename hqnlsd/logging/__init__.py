"""Logging: the `hqn_lsa loglevel` switches, the log filter and the usage report.

* `hqnlsd.logging.switches`: the eleven switches, six presets, `LogSwitches`;
* `hqnlsd.logging.observer`: the `twisted.logger` filter and licence lines;
* `hqnlsd.logging.usage`: the JSON-lines usage report;
* `hqnlsd.logging.feed`: licensing events -> licence lines + usage records.

(The package name shadows nothing: every hqnlsd module uses absolute imports,
so ``import logging`` still means the standard library.)
"""
