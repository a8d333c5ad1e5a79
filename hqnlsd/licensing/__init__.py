"""The licensing core: pure, event- and time-driven licence pools and policies."""
