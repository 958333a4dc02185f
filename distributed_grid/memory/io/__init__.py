"""Moving bytes: inputs, sources, sinks, copies, spools, output files, extents."""
