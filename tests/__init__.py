"""The tests of hqnlsd, arranged like the package (see tests/test_layout.py)."""
