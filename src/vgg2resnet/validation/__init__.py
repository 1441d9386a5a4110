"""Great Expectations checks over the manifest: categories, integrity, balance, leakage."""
