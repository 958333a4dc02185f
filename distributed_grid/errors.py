"""The errors distributed_grid raises.

Every public error derives from :class:`GridError`, so a caller (and the CLI) can catch one class::

    GridError
     ├── InvalidArgument (ValueError)       a size, offset, id or name that is not allowed
     │    └── OutOfBounds                   a range that does not fit inside a block
     ├── NotFound (LookupError)
     │    ├── BlockNotFound                 no block with that id
     │    ├── KeyNotFound                   no key with that name
     │    └── NodeNotFound                  no node with that name
     ├── KeyConflict                        a write onto bytes that another key owns
     ├── StoreFull (MemoryError)            the node's shared memory cannot hold the block
     ├── NodeUnavailable (ConnectionError)  the node or its store actor is gone
     ├── ClusterError (RuntimeError)        no cluster could be reached or started
     └── FileError (OSError)                an input file unreadable, an output unwritable

Messages carry the numbers: what was asked, and what is allowed. Every error pickles (it must
cross the actor boundary), which is why each one keeps its message as its only argument.
"""

from __future__ import annotations

__all__ = [
    "BlockNotFound",
    "ClusterError",
    "FileError",
    "GridError",
    "InvalidArgument",
    "KeyConflict",
    "KeyNotFound",
    "NodeNotFound",
    "NodeUnavailable",
    "NotFound",
    "OutOfBounds",
    "StoreFull",
]


class GridError(Exception):
    """Base class of every error distributed_grid raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __reduce__(self):  # keep the exact class across pickling (Ray, multiprocessing)
        return (type(self), (self.message,))

    def __str__(self) -> str:
        return self.message


class InvalidArgument(GridError, ValueError):
    """An argument is outside what the operation allows (a size of 0, a malformed id...)."""


class OutOfBounds(InvalidArgument):
    """A read or write range does not fit inside the block."""


class NotFound(GridError, LookupError):
    """Something named by the caller does not exist."""


class BlockNotFound(NotFound):
    """No block has the given id (never allocated, or deallocated)."""


class KeyNotFound(NotFound):
    """No block holds the given key."""


class NodeNotFound(NotFound):
    """No node of the cluster has the given name."""


class KeyConflict(GridError):
    """A write would overwrite bytes that belong to another key (or another extent)."""


class StoreFull(GridError, MemoryError):
    """The node's shared memory cannot hold a block of the requested size."""


class NodeUnavailable(GridError, ConnectionError):
    """The node that holds a block, or its store actor, cannot be reached."""


class ClusterError(GridError, RuntimeError):
    """No Ray cluster could be reached or started."""


class FileError(GridError, OSError):
    """An input file cannot be read, or an output file cannot be written."""
