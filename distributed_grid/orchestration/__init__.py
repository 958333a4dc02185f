"""Async entry points for orchestration code (the guide's ``DistributedMemoryPool``)."""
