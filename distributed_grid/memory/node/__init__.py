"""A node: its block store and catalog (here), its room (``room/``: spilling, prefault), and the
store as a service to the cluster (``service/``: the actor, the key directory, repairs)."""
