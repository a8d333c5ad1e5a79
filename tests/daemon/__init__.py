"""Tests of one part of hqnlsd (see tests/test_layout.py for the arrangement)."""
