"""Durable state in the --state-dir (SQLite)."""
