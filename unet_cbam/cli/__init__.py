"""Command-line tools: argument parsing and logging set-up live here only."""
