"""A node's room for new blocks: spilling cold blocks to disk when memory runs short, and the
prefault, memory faulted in ahead that new blocks take."""
