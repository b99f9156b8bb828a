"""Tests written once, in async form; scripts/unasync.py generates tests._sync from them."""
