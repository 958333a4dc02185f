"""Hosting: which cluster a command means; starting, joining and stopping clusters on this host;
the cluster as Ray shows it; auth, namespaces and the processes of worker nodes."""
