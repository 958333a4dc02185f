"""distributed_grid: a shared-memory object store for Ray clusters.

``import distributed_grid`` stays light (no Ray, no numpy); the working parts live in
:mod:`distributed_grid.memory` and are imported when used.
"""

__version__ = "0.1.0"
