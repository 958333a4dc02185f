"""A full /dev/shm is an error, never damage: the host-local library path (LocalNode, which the
CLI runs for blocks of its host) on a private 16 MiB tmpfs.

Two ways to be full. The node's own blocks fill it: allocations leave room for the catalogs,
so every catalog change still goes through. Something else takes the last byte: each operation
completes or raises StoreFull in one line and leaves the catalog as it was; reads go on; a
deallocate frees the block's memory first, so it completes when that memory makes room, and
when it does not, the block stays listed (no segment is ever left unlisted). Afterwards every
key whose bytes were not being rewritten reads back byte for byte.
"""

from __future__ import annotations

import json
import textwrap

from helpers.small_shm import needs_small_shm, run_on_small_shm

COMMON = textwrap.dedent("""
    import json, os, sqlite3, subprocess, sys
    from distributed_grid.errors import StoreFull
    from distributed_grid.memory.shm import segment as seg
    from distributed_grid.memory.io import sinks, sources
    from distributed_grid.memory.node.local_node import LocalNode

    node = LocalNode("n1", "full")
    FILLER = "/dev/shm/filler"

    def free():
        st = os.statvfs("/dev/shm")
        return st.f_bavail * st.f_frsize

    def put(number, offset, data, key):
        # what MemoryPool._write does on this host (minus the key directory)
        block = node.prepare_write(number, offset, len(data), key)
        try:
            node.fill(block, offset, len(data), sources.BufferSource(memoryview(data)))
        except BaseException:
            node.abort_write(number, offset, key)
            raise
        node.commit_write(number, offset, len(data), key)

    def read(key):
        place = node.find_key(key)
        if place is None:
            return None
        out = bytearray()
        for offset, length in place.extents:
            node.drain(place.block, offset, length, sinks.CallableSink(out.extend))
        return bytes(out)

    def catalog_state():
        db = sqlite3.connect(node.catalog.path)
        try:
            return [db.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall()
                    for t in ("meta", "blocks", "extents", "key_meta", "leases")]
        finally:
            db.close()

    def listed():
        return {b.segment for b in node.list_blocks()}

    def on_host():
        return set(seg.list_segment_names(node.prefix))

    def fill_with_blocks():
        while True:
            try:
                node.allocate(2**20 if free() > 4 * 2**20 else 4096)
            except StoreFull as exc:
                return str(exc)

    def fill_to_the_last_byte():
        fd = os.open(FILLER, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        for chunk in (b"x" * 4096, b"x"):
            try:
                while True:
                    os.write(fd, chunk)
            except OSError:
                pass
        os.close(fd)
        assert free() == 0, free()

    def fresh_process_finds(key):
        code = ("import sys; from distributed_grid.memory.node.local_node import LocalNode; "
                "from distributed_grid.errors import GridError\\n"
                "try:\\n place = LocalNode('n1', 'full').find_key(sys.argv[1])\\n"
                " print(place.block_id if place else None)\\n"
                "except GridError as exc:\\n print(f'{type(exc).__name__}: {exc}')")
        out = subprocess.run([sys.executable, "-c", code, key], capture_output=True,
                             text=True, check=True)
        return out.stdout.strip()

    expected = {}
    blocks = []
    for i in range(4):
        blocks.append(node.allocate(64 * 1024).number)
        for j in range(2):
            data = os.urandom(5000 + i * 100 + j)
            put(blocks[i], j * 8192, data, f"k{i}{j}")
            expected[f"k{i}{j}"] = data
    tiny = node.allocate(1).number  # one page: freeing it makes too little room
""")

OWN_BLOCKS = COMMON + textwrap.dedent("""
    refused = fill_with_blocks()
    outcomes = {"refused": refused, "free": free()}
    data = os.urandom(3000)
    put(blocks[0], 20000, data, "new")
    expected["new"] = data
    data = os.urandom(5000)
    put(blocks[1], 0, data, "k10")
    expected["k10"] = data
    node.deallocate(blocks[3])
    del expected["k30"], expected["k31"]
    outcomes["fresh"] = fresh_process_finds("k20")
    for key, data in expected.items():
        assert read(key) == data, key
    assert listed() == on_host()
    db = sqlite3.connect(node.catalog.path)
    assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    print(json.dumps(outcomes))
""")

SOMETHING_ELSE = COMMON + textwrap.dedent("""
    fill_with_blocks()
    outcomes = []
    uncertain = set()  # keys whose bytes a failed rewrite may have changed

    def make_full(wal):
        # /dev/shm full to the last byte, with the catalog's WAL "empty" (every change needs
        # new pages: the worst case), "reused" (checkpointed pages the next change rewrites),
        # or holding "unchecked" changes that grow the database when they are checkpointed
        if os.path.exists(FILLER):
            os.unlink(FILLER)
        if wal == "reused":
            for _ in range(3):
                node.prepare_write(blocks[2], 40000, 10, "warm")
                node.abort_write(blocks[2], 40000, "warm")
        db = sqlite3.connect(node.catalog.path)
        db.execute(f"PRAGMA wal_checkpoint({'PASSIVE' if wal == 'reused' else 'TRUNCATE'})")
        db.close()
        if wal == "unchecked":  # as if SQLite had not checkpointed them yet
            node.catalog._db.db.execute("PRAGMA wal_autocheckpoint=0")
            for k in range(80):  # pages enough that the database must grow by more than the
                data = os.urandom(10)  # slack of its last tmpfs page (catalog pages are 1 KiB)
                put(blocks[2], 20000 + 16 * k, data, f"small{k}" + "-" * 300)
                expected[f"small{k}" + "-" * 300] = data
            node.catalog._db.db.execute("PRAGMA wal_autocheckpoint=1024")
        fill_to_the_last_byte()

    def attempt(name, op, wal):
        make_full(wal)
        before = (catalog_state(), listed(), on_host())
        try:
            result = op()
        except StoreFull as exc:
            outcomes.append([name, wal, "StoreFull", str(exc)])
            after = (catalog_state(), listed(), on_host())
            if name.startswith("deallocate"):  # its segment may be gone: freeing made room
                assert after[:2] == before[:2], name
                assert after[2] <= after[1], "a segment is left unlisted"
            else:
                assert after == before, name
            return
        outcomes.append([name, wal, "ok", str(result)])

    def store_new(key, number, offset):
        data = os.urandom(700)
        put(number, offset, data, key)
        expected[key] = data

    def rewrite(key, number, offset):
        data = os.urandom(len(expected[key]))
        uncertain.add(key)
        put(number, offset, data, key)
        expected[key] = data
        uncertain.discard(key)

    def deallocate(number, keys):
        node.deallocate(number)
        for key in keys:
            del expected[key]

    def checkpoint():  # the library never checkpoints by hand; SQLite does after commits
        db = sqlite3.connect(node.catalog.path)
        try:
            return db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        except sqlite3.Error as exc:
            raise StoreFull(f"checkpoint: {exc}") from exc
        finally:
            db.close()

    for wal in ("empty", "reused"):
        attempt("allocate", lambda: node.allocate(1).block_id, wal)
        attempt("store into a block",
                lambda: store_new("s" + wal, blocks[0], 30000 + 1000 * len(wal)), wal)
        attempt("rewrite in place", lambda: rewrite("k11", blocks[1], 8192), wal)
        attempt("find a key", lambda: read("k20") == expected["k20"], wal)
        attempt("find a key, new process", lambda: fresh_process_finds("k21"), wal)
        attempt("list keys", lambda: len(node.list_keys()), wal)
    attempt("checkpoint", checkpoint, "unchecked")
    small = "small19" + "-" * 300
    attempt("find a key", lambda: read(small) == expected[small], "unchecked")
    attempt("deallocate a one-page block", lambda: deallocate(tiny, []), "empty")
    attempt("deallocate a 64 KiB block", lambda: deallocate(blocks[3], ["k30", "k31"]), "empty")

    os.unlink(FILLER)
    db = sqlite3.connect(node.catalog.path)
    assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    db.close()
    assert on_host() <= listed(), "a segment is left unlisted"
    for key, data in expected.items():
        if key not in uncertain:
            assert read(key) == data, key
    for key in uncertain:  # its bytes were being overwritten: found with the new, or not found
        assert read(key) in (None, expected[key]), key
    node.reconcile()  # a block whose memory a failed deallocate freed is missing now
    for block in node.list_blocks():
        if block.status == "missing":
            node.deallocate(block.number)  # and its deallocate finishes now
    assert listed() == on_host()
    print(json.dumps(outcomes))
""")


@needs_small_shm
def test_own_blocks_fill_shared_memory_and_the_catalog_still_works():
    result = run_on_small_shm(OWN_BLOCKS)
    assert result.returncode == 0, result.stderr
    done = json.loads(result.stdout)
    assert "kept for the node catalogs" in done["refused"], done
    assert done["free"] > 0  # the room the allocations left to the catalogs
    assert done["fresh"].startswith("block_"), done


@needs_small_shm
def test_full_to_the_last_byte_is_an_error_and_changes_nothing():
    result = run_on_small_shm(SOMETHING_ELSE)
    assert result.returncode == 0, result.stderr
    outcomes = {(name, wal): (outcome, text)
                for name, wal, outcome, text in json.loads(result.stdout)}
    for (name, wal), (outcome, text) in outcomes.items():
        assert outcome in ("ok", "StoreFull") and "\n" not in text, (name, wal, outcome, text)
    for wal in ("empty", "reused"):  # reads need no room
        assert outcomes[("find a key", wal)] == ("ok", "True")
        assert outcomes[("find a key, new process", wal)] == ("ok", "block_2_n1")
        assert outcomes[("list keys", wal)][0] == "ok"
        assert outcomes[("allocate", wal)][0] == "StoreFull"
    assert outcomes[("find a key", "unchecked")] == ("ok", "True")
    # a checkpoint that must grow the database fails; the changes stay in the WAL, found
    assert outcomes[("checkpoint", "unchecked")][0] == "StoreFull"
    # with no WAL page to reuse a change is refused; the pages of one it rewrote suffice
    assert outcomes[("store into a block", "empty")][0] == "StoreFull"
    assert outcomes[("store into a block", "reused")][0] == "ok"
    # a deallocate frees the block's memory for its own change: with 1 KiB catalog pages
    # even a one-page block's (its page and its header's) is room enough
    assert outcomes[("deallocate a one-page block", "empty")][0] == "ok"
    assert outcomes[("deallocate a 64 KiB block", "empty")][0] == "ok"
