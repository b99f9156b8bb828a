"""Hand-written async drivers; scripts/unasync.py generates resilience._sync from them."""
