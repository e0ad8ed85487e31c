"""Model-version comparison: metrics the field quotes, a paired test, and a self-contained report."""
