"""Command-line entry points (`glmops`)."""
