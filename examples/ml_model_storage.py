"""ML model storage: park a weights file in a node's memory, then use its tensors zero-copy.

The guide's `grid memory store llama-7b weights`: a seeded 2-layer MLP saved as .npz (a zip of
.npy files, stored uncompressed) is stored as a file, and its tensors come back as numpy views of
the block itself: the zip directory and .npy headers are parsed in place, no tensor byte copied.

    python examples/ml_model_storage.py [--address HOST:PORT] [--node gpu2] [--keep]
"""

from __future__ import annotations

import argparse
import io
import os
import struct
import sys
import tempfile
import zipfile

import numpy as np

from distributed_grid.memory import GridError, MemoryPool, connect


class BufferFile(io.RawIOBase):
    """Enough of a read-only file over a buffer for zipfile and numpy to parse it in place."""

    def __init__(self, buf: memoryview) -> None:
        self.buf, self.pos = buf, 0

    def readinto(self, out: memoryview) -> int:  # type: ignore[override]
        n = max(0, min(len(out), len(self.buf) - self.pos))
        out[:n] = self.buf[self.pos : self.pos + n]
        self.pos += n
        return n

    def seek(self, pos: int, whence: int = 0) -> int:
        self.pos = [pos, self.pos + pos, len(self.buf) + pos][whence]
        return self.pos

    def tell(self) -> int:
        return self.pos


def make_model(seed: int = 0) -> dict[str, np.ndarray]:
    """A 2-layer MLP, 512 -> 1536 -> 64: about 3.2 MiB of float32 and float16 weights."""
    rng = np.random.default_rng(seed)
    return {"fc1.weight": rng.standard_normal((512, 1536), dtype=np.float32) * 0.05,
            "fc1.bias": rng.standard_normal(1536, dtype=np.float32) * 0.01,
            "fc2.weight": (rng.standard_normal((1536, 64)) * 0.05).astype(np.float16),
            "fc2.bias": np.zeros(64, dtype=np.float16)}


def forward(w: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    hidden = np.maximum(x @ w["fc1.weight"] + w["fc1.bias"], 0)
    return hidden @ w["fc2.weight"].astype(np.float32) + w["fc2.bias"].astype(np.float32)


def load_npz_in_place(data: np.ndarray) -> dict[str, np.ndarray]:
    """The arrays of an .npz held in ``data`` (uint8), each a view of ``data``'s memory."""
    tensors = {}
    with zipfile.ZipFile(BufferFile(memoryview(data))) as archive:  # reads the directory only
        for member in archive.infolist():
            if member.compress_type != zipfile.ZIP_STORED:
                raise ValueError(f"{member.filename} is compressed; save with np.savez")
            name_len, extra_len = struct.unpack_from("<HH", data, member.header_offset + 26)
            start = member.header_offset + 30 + name_len + extra_len  # the .npy file
            npy = BufferFile(memoryview(data)[start : start + member.file_size])
            version = np.lib.format.read_magic(npy)
            read_header = getattr(np.lib.format, f"read_array_header_{version[0]}_{version[1]}")
            shape, fortran, dtype = read_header(npy)
            flat = np.frombuffer(data, dtype, int(np.prod(shape)), offset=start + npy.tell())
            tensors[member.filename.removesuffix(".npy")] = flat.reshape(
                shape, order="F" if fortran else "C")
    return tensors


def run(pool: MemoryPool, node: str | None, keep: bool) -> int:
    weights = make_model()
    key = f"mlp-weights-{os.getpid()}"
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "mlp.npz")
        np.savez(path, **weights)
        size = os.path.getsize(path)
        print(f"saved {len(weights)} tensors to {os.path.basename(path)} ({size} bytes)")
        block_id = None if node is None else pool.allocate(size, node=node).block_id
        try:
            block_id = pool.store_file(key, path, block_id=block_id).block_id
            print(f"stored the file as {key!r} in {block_id} (local: {pool.is_local(block_id)})")
            [(start, length)] = pool.find_key(key).extents
            block = pool.view(block_id, dtype="uint8", shape=(length,), offset=start)
            how = "zero-copy view" if pool.is_local(block_id) else "view of a fetched copy"
            tensors = load_npz_in_place(block)
            for name, t in tensors.items():
                if not np.array_equal(t, weights[name]) or t.dtype != weights[name].dtype:
                    sys.exit(f"error: tensor {name} differs from the original")
                if not np.shares_memory(t, block):
                    sys.exit(f"error: tensor {name} is a copy, not a view of {block_id}")
                print(f"  {name:<11} {str(t.dtype):<8} {t.shape!s:<12} {how} "
                      f"at block offset {t.ctypes.data - block.ctypes.data + start}")
            x = np.random.default_rng(1).standard_normal((8, 512), dtype=np.float32)
            got, want = forward(tensors, x), forward(weights, x)
            if not np.allclose(got, want, rtol=1e-5, atol=1e-5):
                sys.exit(f"error: forward pass differs: max |diff| {np.abs(got - want).max()}")
            print(f"forward pass on the block's tensors: output {got.shape}, max |diff| vs "
                  f"originals {float(np.abs(got - want).max()):.2g}")
            print("model storage OK")
            return 0
        finally:
            if block_id is not None and not keep:
                pool.deallocate(block_id)
            if block_id is not None:
                print(f"{'kept' if keep else 'deallocated'} {block_id}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", help="HOST:PORT of the cluster (default: RAY_ADDRESS, "
                        "the host's cluster, or the embedded local one)")
    parser.add_argument("--node", help="the node to keep the weights on (default: library picks)")
    parser.add_argument("--keep", action="store_true", help="leave the block allocated")
    args = parser.parse_args()
    try:
        return run(connect(args.address), args.node, args.keep)
    except GridError as exc:
        sys.exit(f"error: {exc}")


if __name__ == "__main__":
    sys.exit(main())
