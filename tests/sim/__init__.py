"""A deterministic simulated network for the server-domain logic (see harness.py)."""
