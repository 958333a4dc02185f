"""A node's store as a service to the cluster: the store actor (a plain class, with Ray at the
edge), its upkeep, the head's key directory and its repairs of replicated blocks."""
