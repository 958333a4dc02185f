"""This host's shared memory: segments, the write guard, databases, kept mappings, capacity."""
