"""The errors distributed_grid raises.

Every public error derives from :class:`GridError`, so a caller (and the CLI) can catch one class::

    GridError
     ├── InvalidArgument (ValueError)       a size, offset, id or name that is not allowed
     │    └── OutOfBounds                   a range that does not fit inside a block
     ├── NotFound (LookupError)
     │    ├── BlockNotFound                 no block with that id
     │    ├── KeyNotFound                   no key with that name
     │    └── NodeNotFound                  no node with that name
     ├── KeyConflict                        a write onto bytes (or a key) that another key owns
     │    └── KeyBusy                       a write of a key while another write of it is running
     ├── WriteInProgress (TimeoutError)     a read waited too long for a write of its bytes to end
     ├── StoreFull (MemoryError)            the node's shared memory cannot hold the block
     ├── NodeUnavailable (ConnectionError)  the node or its store actor is gone
     ├── ClusterError (RuntimeError)        no cluster could be reached or started
     │    └── VersionMismatch               a store or database of another distributed_grid version
     └── FileError (OSError)                an input file unreadable, an output unwritable

Messages carry the numbers: what was asked, and what is allowed. The same facts are attributes
(``exc.block_id``, ``exc.node``, ``exc.offset``...), for code that handles the error. Every error
pickles with its class, message and facts (it must cross the actor boundary).
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "BlockNotFound",
    "ClusterError",
    "FileError",
    "GridError",
    "InvalidArgument",
    "KeyBusy",
    "KeyConflict",
    "KeyNotFound",
    "NodeNotFound",
    "NodeUnavailable",
    "CopiesChanged",
    "NotFound",
    "OutOfBounds",
    "StoreFull",
    "VersionMismatch",
    "WriteInProgress",
]


class GridError(Exception):
    """Base class of every error distributed_grid raises on purpose.

    Args:
        message: the one line a person reads.
        **facts: what the message names, kept as attributes (``block_id="block_0_gpu2"``).
    """

    def __init__(self, message: str, **facts: Any) -> None:
        super().__init__(message)
        self.message = message
        self.__dict__.update(facts)

    @property
    def facts(self) -> dict[str, Any]:
        """The error's facts by name (everything but the message)."""
        return {k: v for k, v in self.__dict__.items() if k != "message"}

    def __reduce__(self):  # keep the exact class and the facts across pickling (Ray)
        return (type(self), (self.message,), self.facts)

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __str__(self) -> str:
        return self.message


class InvalidArgument(GridError, ValueError):
    """An argument is outside what the operation allows (a size of 0, a malformed id...)."""


class OutOfBounds(InvalidArgument):
    """A read or write range does not fit inside the block (or the key's bytes)."""


class NotFound(GridError, LookupError):
    """Something named by the caller does not exist."""


class BlockNotFound(NotFound):
    """No block has the given id (never allocated, or deallocated)."""


class KeyNotFound(NotFound):
    """No block holds the given key."""


class NodeNotFound(NotFound):
    """No node of the cluster has the given name."""


class KeyConflict(GridError):
    """A write would overwrite bytes of another key, or put a key in a second block."""


class KeyBusy(KeyConflict):
    """A write of the key's bytes is in progress: each part of a key has one writer at a
    time."""


class CopiesChanged(KeyConflict):
    """A write of a replicated block knew an older set of its copies (one is being added): the
    pool asks for the set again and writes once more."""


class WriteInProgress(GridError, TimeoutError):
    """A read waited longer than its bound for a write of the same bytes to finish."""


class StoreFull(GridError, MemoryError):
    """The node's shared memory cannot hold a block of the requested size."""


class NodeUnavailable(GridError, ConnectionError):
    """The node that holds a block, or its store actor, cannot be reached."""


class ClusterError(GridError, RuntimeError):
    """No Ray cluster could be reached or started."""


class VersionMismatch(ClusterError):
    """A store actor or a node database was made by another version of distributed_grid."""


class FileError(GridError, OSError):
    """An input file cannot be read, or an output file cannot be written."""
