"""`kmemopt plan`: from a budget that is not met to a verified way to meet it (see strategy.py)."""
