"""Permit files: model, format, seals, reading and discovery."""
