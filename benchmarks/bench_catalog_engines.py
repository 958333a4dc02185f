"""SQLite (WAL) against LMDB for a node's catalog: the measurement behind the choice.

Both engines hold the same records the node catalog holds (blocks, keys with extents, the next
block number) in a file in /dev/shm, the way the catalog does, and run the catalog's
transactions: allocate (spend a number, insert a block), block_info (read one block), prepare
(check the key's block and the range's overlaps, add a pending extent), commit (mark it
complete, move the high-water mark), deallocate (drop the block and its extents), and open (a
new process's first look: open the file and check the schema version).

Each is timed per operation at 100 and at 10,000 existing blocks, in one run. SQLite is in the
standard library; LMDB needs ``pip install lmdb`` (the script says so and measures SQLite alone
when it is missing).

    python benchmarks/bench_catalog_engines.py [--repeat 2000] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time

SIZES = (100, 10_000)

SCHEMA = """
CREATE TABLE meta (name TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE blocks (number INTEGER PRIMARY KEY, size INTEGER NOT NULL, segment TEXT NOT NULL,
                     token BLOB NOT NULL, created REAL NOT NULL, high_water INTEGER NOT NULL);
CREATE TABLE extents (id INTEGER PRIMARY KEY, block INTEGER NOT NULL, key TEXT NOT NULL,
                      offset INTEGER NOT NULL, length INTEGER NOT NULL, complete INTEGER NOT NULL);
CREATE INDEX extents_block ON extents(block, offset);
CREATE INDEX extents_key ON extents(key);
INSERT INTO meta VALUES ('schema_version', 1), ('next_number', 0);
"""


class SqliteCatalog:
    def __init__(self, path: str) -> None:
        self.path = path
        self.db = self.open()

    def open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA busy_timeout=10000")
        if db.execute("SELECT name FROM sqlite_master WHERE name='meta'").fetchone() is None:
            db.executescript(SCHEMA)
        (version,) = db.execute("SELECT value FROM meta WHERE name='schema_version'").fetchone()
        assert version == 1
        return db

    def reopen(self) -> None:
        self.db.close()
        self.db = self.open()

    def allocate(self, size: int) -> int:
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        (n,) = db.execute("SELECT value FROM meta WHERE name='next_number'").fetchone()
        db.execute("UPDATE meta SET value=? WHERE name='next_number'", (n + 1,))
        db.execute("INSERT INTO blocks VALUES (?,?,?,?,?,0)",
                   (n, size, f"/dg.x.n.{n}", os.urandom(16), time.time()))
        db.execute("COMMIT")
        return n

    def info(self, n: int) -> tuple:
        row = self.db.execute("SELECT * FROM blocks WHERE number=?", (n,)).fetchone()
        keys = self.db.execute("SELECT key, offset, length, complete FROM extents WHERE block=?",
                               (n,)).fetchall()
        return row, keys

    def prepare(self, n: int, key: str, offset: int, length: int) -> None:
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        (size,) = db.execute("SELECT size FROM blocks WHERE number=?", (n,)).fetchone()
        assert offset + length <= size
        other = db.execute("SELECT block FROM extents WHERE key=? AND block!=? LIMIT 1",
                           (key, n)).fetchone()
        assert other is None
        clash = db.execute("SELECT key FROM extents WHERE block=? AND offset<? AND offset+length>?"
                           " AND NOT (key=? AND offset=?) LIMIT 1",
                           (n, offset + length, offset, key, offset)).fetchone()
        assert clash is None
        db.execute("DELETE FROM extents WHERE block=? AND key=? AND offset=?", (n, key, offset))
        db.execute("INSERT INTO extents (block, key, offset, length, complete) VALUES (?,?,?,?,0)",
                   (n, key, offset, length))
        db.execute("COMMIT")

    def commit(self, n: int, key: str, offset: int, length: int) -> None:
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        db.execute("UPDATE extents SET complete=1 WHERE block=? AND key=? AND offset=?",
                   (n, key, offset))
        db.execute("UPDATE blocks SET high_water=max(high_water, ?) WHERE number=?",
                   (offset + length, n))
        db.execute("COMMIT")

    def deallocate(self, n: int) -> None:
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        db.execute("DELETE FROM extents WHERE block=?", (n,))
        db.execute("DELETE FROM blocks WHERE number=?", (n,))
        db.execute("COMMIT")


class LmdbCatalog:
    """The same records in LMDB: one JSON value per block (with its extents), a key index."""

    def __init__(self, path: str) -> None:
        import lmdb

        self.lmdb = lmdb
        self.path = path
        self.env = self.open()

    def open(self):
        env = self.lmdb.open(self.path, map_size=1 << 30, subdir=False, max_dbs=0, lock=True,
                             sync=False, metasync=False)
        with env.begin(write=True) as txn:
            if txn.get(b"meta/schema_version") is None:
                txn.put(b"meta/schema_version", b"1")
                txn.put(b"meta/next_number", b"0")
        with env.begin() as txn:
            assert txn.get(b"meta/schema_version") == b"1"
        return env

    def reopen(self) -> None:
        self.env.close()  # LMDB allows one open environment per file and process
        self.env = self.open()

    def allocate(self, size: int) -> int:
        with self.env.begin(write=True) as txn:
            n = int(txn.get(b"meta/next_number"))
            txn.put(b"meta/next_number", str(n + 1).encode())
            record = {"size": size, "segment": f"/dg.x.n.{n}", "token": os.urandom(16).hex(),
                      "created": time.time(), "high_water": 0, "extents": []}
            txn.put(b"b/%d" % n, json.dumps(record).encode())
        return n

    def info(self, n: int) -> dict:
        with self.env.begin() as txn:
            return json.loads(txn.get(b"b/%d" % n))

    def prepare(self, n: int, key: str, offset: int, length: int) -> None:
        with self.env.begin(write=True) as txn:
            record = json.loads(txn.get(b"b/%d" % n))
            assert offset + length <= record["size"]
            owner = txn.get(b"k/" + key.encode())
            assert owner is None or int(owner) == n
            end = offset + length
            for k, o, ln, _ in record["extents"]:
                assert not (o < end and offset < o + ln and not (k == key and o == offset))
            record["extents"] = [e for e in record["extents"]
                                 if not (e[0] == key and e[1] == offset)]
            record["extents"].append([key, offset, length, False])
            txn.put(b"b/%d" % n, json.dumps(record).encode())
            txn.put(b"k/" + key.encode(), b"%d" % n)

    def commit(self, n: int, key: str, offset: int, length: int) -> None:
        with self.env.begin(write=True) as txn:
            record = json.loads(txn.get(b"b/%d" % n))
            for e in record["extents"]:
                if e[0] == key and e[1] == offset:
                    e[3] = True
            record["high_water"] = max(record["high_water"], offset + length)
            txn.put(b"b/%d" % n, json.dumps(record).encode())

    def deallocate(self, n: int) -> None:
        with self.env.begin(write=True) as txn:
            record = json.loads(txn.get(b"b/%d" % n))
            for k, *_ in record["extents"]:
                txn.delete(b"k/" + k.encode())
            txn.delete(b"b/%d" % n)


def _per_op_us(fn, repeat: int) -> float:
    samples = []
    for i in range(repeat):
        start = time.perf_counter()
        fn(i)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1e6


def measure(catalog, existing: int, repeat: int) -> dict[str, float]:
    numbers = []
    for i in range(existing):
        n = catalog.allocate(4096)
        catalog.prepare(n, f"filler{i}", 0, 100)
        catalog.commit(n, f"filler{i}", 0, 100)
        numbers.append(n)
    fresh: list[int] = []
    result = {
        "open": _per_op_us(lambda i: catalog.reopen(), min(repeat, 500)),
        "allocate": _per_op_us(lambda i: fresh.append(catalog.allocate(4096)), repeat),
        "block_info": _per_op_us(lambda i: catalog.info(numbers[(i * 7919) % existing]), repeat),
        "prepare": _per_op_us(lambda i: catalog.prepare(fresh[i], f"key{i}", 0, 10), repeat),
        "commit": _per_op_us(lambda i: catalog.commit(fresh[i], f"key{i}", 0, 10), repeat),
        "deallocate": _per_op_us(lambda i: catalog.deallocate(fresh[i]), repeat),
    }
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=2000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    engines = {"sqlite": SqliteCatalog}
    try:
        import lmdb  # noqa: F401

        engines["lmdb"] = LmdbCatalog
    except ImportError:
        print("lmdb is not installed (pip install lmdb): measuring SQLite alone", file=sys.stderr)
    tmp = tempfile.mkdtemp(prefix="dgcat.", dir="/dev/shm")
    results: dict[str, dict[int, dict[str, float]]] = {}
    try:
        for name, cls in engines.items():
            results[name] = {}
            for existing in SIZES:
                path = os.path.join(tmp, f"{name}-{existing}.db")
                print(f"{name}: {existing} blocks ...", file=sys.stderr)
                results[name][existing] = measure(cls(path), existing, args.repeat)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    ops = list(next(iter(next(iter(results.values())).values())))
    print(f"median per operation, microseconds (machine: {os.cpu_count()} cores, "
          f"SQLite {sqlite3.sqlite_version}, files in /dev/shm)")
    header = f"{'operation':<11}" + "".join(
        f"{name + ' ' + str(n):>14}" for name in results for n in SIZES)
    ratios = "".join(f"{name + ' 10k/100':>16}" for name in results)
    print(header + ratios)
    for op in ops:
        cells = "".join(f"{results[name][n][op]:>14.1f}" for name in results for n in SIZES)
        rs = "".join(f"{results[name][SIZES[1]][op] / results[name][SIZES[0]][op]:>16.2f}"
                     for name in results)
        print(f"{op:<11}{cells}{rs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
