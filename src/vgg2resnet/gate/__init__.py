"""The promotion gate: what it reads (checked against each other), its policy of named checks,
each with its value, threshold and reason, and its Markdown and HTML reports."""
