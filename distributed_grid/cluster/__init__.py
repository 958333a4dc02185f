"""Hosting: which cluster a command means (``target``); starting, joining and stopping clusters on
this host (``starting``, ``stopping``, with what runs here in ``hosted``); Ray's addresses,
environment and temp folder (``ray_env``); the cluster as Ray shows it (``connection``); auth,
node names (``config``), namespaces and the processes of worker nodes."""
