"""The stages as plain functions over records; the CLI only parses options and prints."""
