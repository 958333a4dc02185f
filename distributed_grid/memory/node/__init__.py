"""A node: its block store, catalog, key directory, and the actor that serves it."""
