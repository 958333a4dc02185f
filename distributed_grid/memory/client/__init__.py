"""The client: routes block ids and keys to their nodes and moves the bytes."""
