"""What a user reads from the store: report, serve, show, compare."""
