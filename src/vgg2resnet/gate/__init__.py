"""The promotion gate: a policy of named checks, each with its value, threshold and reason."""
