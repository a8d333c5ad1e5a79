"""Command-line tools: hqn_mp (publisher), later hqn_lsa and hqnls."""
