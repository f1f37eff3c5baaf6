"""Examples: a small shop application and its integration tests, written three ways."""
