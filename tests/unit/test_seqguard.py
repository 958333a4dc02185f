"""The write guard on real segments, real processes and real signals, for both implementations.

Every test runs against the C guard and the pure-Python twin (``impl``); the C one is skipped,
with the reason, only where the extension was not built. Processes are ``python -c WORKER``
children working on the same POSIX shared-memory segment; no Ray.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import struct
import subprocess
import sys
import textwrap
import time
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from distributed_grid.errors import InvalidArgument
from distributed_grid.memory.shm import layout, seqguard
from distributed_grid.memory.shm import segment as seg

MIB = 2**20
SLOTS = layout.GUARD_SLOT_COUNT
GO = MIB  # data offsets of two control bytes the parent sets for its workers
STOP = MIB + 1
WAIT = 300  # seconds any child may take before the test fails


@pytest.fixture(params=["c", "python"])
def impl(request) -> str:
    """The name of a guard implementation."""
    if request.param not in seqguard.IMPLEMENTATIONS:
        pytest.skip("the C guard is not built here (pip install -e . with a C compiler)")
    return request.param


class Block:
    """A real segment for one test: its name, token, size and a descriptor of it."""

    def __init__(self) -> None:
        self.name = f"/dg.{uuid.uuid4().hex[:12]}.t.0"
        self.token = secrets.token_bytes(layout.TOKEN_SIZE)
        self.size = MIB + 4096
        seg.create_segment(self.name, self.size, self.token)
        self.fd = seg.open_data(self.name, self.token, self.size)

    def args(self, **more: object) -> dict:
        return {"name": self.name, "token": self.token.hex(), "size": self.size, **more}

    def set_byte(self, offset: int, value: int) -> None:
        os.pwrite(self.fd, bytes([value]), layout.HEADER_SIZE + offset)

    def close(self) -> None:
        os.close(self.fd)
        seg.unlink_segment(self.name)


@pytest.fixture
def block():
    made = Block()
    try:
        yield made
    finally:
        made.close()
        assert not seg.segment_exists(made.name)


@pytest.fixture
def guard(impl, block):
    with seqguard.IMPLEMENTATIONS[impl](block.fd) as g:
        yield g


# -- children ---------------------------------------------------------------------------------

WORKER = textwrap.dedent(r'''
    import json, os, sys, time
    from distributed_grid.memory.shm import layout, seqguard
    from distributed_grid.memory.shm import segment as seg

    a = json.loads(sys.argv[1])
    fd = seg.open_data(a["name"], bytes.fromhex(a["token"]), a["size"])
    g = seqguard.IMPLEMENTATIONS[a["impl"]](fd)
    tag = seqguard.process_tag(os.getpid())
    H = layout.HEADER_SIZE

    def flag(offset):
        return os.pread(fd, 1, H + offset) != b"\0"

    def wait_for(offset):
        while not flag(offset):
            time.sleep(0.001)

    def report(**facts):
        print(json.dumps(facts), flush=True)

    mode = a["mode"]
    if mode == "contend":  # claim up to `hold` slots, check each is ours alone, free them
        mine, zero = tag.to_bytes(8, "little"), bytes(8)
        claims = fails = collisions = 0
        report(ready=True)
        wait_for(a["go"])
        for _ in range(a["rounds"]):
            held = []
            for k in range(a["hold"]):
                slot = g.claim(tag, k, k + 1)
                if slot < 0:
                    fails += 1
                    continue
                claims += 1
                if os.pread(fd, 8, H + slot * 8) != zero:
                    collisions += 1
                os.pwrite(fd, mine, H + slot * 8)
                held.append(slot)
            owners = {slot: owner for slot, owner, _, _ in g.occupied()}
            collisions += sum(owners.get(slot) != tag for slot in held)
            for slot in held:
                if os.pread(fd, 8, H + slot * 8) != mine:
                    collisions += 1
                os.pwrite(fd, zero, H + slot * 8)
                if not g.release(slot, tag):
                    collisions += 1
        report(claims=claims, fails=fails, collisions=collisions)
    elif mode == "write":  # rewrite [0, length) with 0xFF and 0x00 in turn until told to stop
        n = a["length"]
        patterns = (b"\xff" * n, bytes(n))
        writes = 0
        report(ready=True)
        wait_for(a["go"])
        while not flag(a["stop"]):
            if a["guarded"]:
                slot = g.claim(tag, 0, n)
                assert slot >= 0
            os.pwrite(fd, patterns[writes % 2], H)
            if a["guarded"]:
                assert g.release(slot, tag)
            writes += 1
            time.sleep(a["pause"])  # room for readers: a writer that never pauses starves them
        report(writes=writes)
    elif mode == "read":  # read [0, length) until `want` reads were accepted; classify them
        n = a["length"]
        ones, zeros = b"\xff" * n, bytes(n)
        ok = torn = retries = seen_ones = seen_zeros = 0
        report(ready=True)
        wait_for(a["go"])
        while ok < a["want"]:
            if a["guarded"]:
                seq, busy = g.begin_read(0, n)
                if busy:
                    retries += 1
                    time.sleep(0)
                    continue
            data = os.pread(fd, n, H)
            if a["guarded"] and not g.end_read(seq):
                retries += 1
                continue
            ok += 1
            if data == ones:
                seen_ones += 1
            elif data == zeros:
                seen_zeros += 1
            else:
                torn += 1
        report(ok=ok, torn=torn, retries=retries, ones=seen_ones, zeros=seen_zeros)
    elif mode == "hold":  # claim a range, say so, and wait to be killed
        slot = g.claim(tag, a["start"], a["end"])
        report(slot=slot, tag=tag)
        sys.stdin.read()
    elif mode == "release":  # the reaper's call for a dead owner
        report(held=g.release(a["slot"], a["tag"]), alive=seqguard.tag_alive(a["tag"]))
''')


class Children:
    """Worker processes of one test; any still running at its end are killed, by pid."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def start(self, args: dict) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-c", WORKER, json.dumps(args)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        self.procs.append(proc)
        return proc

    @staticmethod
    def line(proc: subprocess.Popen) -> dict:
        """The next report of a child (waits for it; a dead child fails the test)."""
        text = proc.stdout.readline()
        if not text:
            proc.wait(WAIT)
            raise AssertionError(f"child exited {proc.returncode}: {proc.stderr.read().decode()}")
        return json.loads(text)

    @staticmethod
    def result(proc: subprocess.Popen) -> dict:
        """The last report of a child that must exit 0."""
        out, err = proc.communicate(timeout=WAIT)
        assert proc.returncode == 0, err.decode()
        return json.loads(out.decode().splitlines()[-1])

    def end(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()


@pytest.fixture
def children():
    made = Children()
    try:
        yield made
    finally:
        made.end()


# -- unit semantics ---------------------------------------------------------------------------


def test_a_new_segment_is_an_idle_guard(guard):
    assert guard.sequence() == 0
    assert guard.occupied() == []
    assert guard.begin_read(0, MIB) == (0, 0)
    assert guard.end_read(0)


def test_claim_publishes_the_documented_words(guard, block):
    assert guard.claim(7, 100, 200) == 0
    assert guard.claim(8, 300, 400) == 1
    header = os.pread(block.fd, layout.HEADER_SIZE, 0)
    assert struct.unpack_from("<Q", header, layout.GUARD_SEQUENCE_OFFSET) == (2,)
    slots = struct.unpack_from("<8Q", header, layout.GUARD_SLOTS_OFFSET)
    assert slots == (7, 100, 200, 0, 8, 300, 400, 0)
    assert guard.occupied() == [(0, 7, 100, 200), (1, 8, 300, 400)]


def test_begin_read_names_an_overlapping_writer_only(guard):
    slot = guard.claim(7, 100, 200)
    assert guard.begin_read(150, 160) == (1, 7)
    assert guard.begin_read(0, 101) == (1, 7)
    assert guard.begin_read(199, 300) == (1, 7)
    assert guard.begin_read(0, 100) == (1, 0)  # ranges are half-open
    assert guard.begin_read(200, 300) == (1, 0)
    assert guard.release(slot, 7)
    assert guard.begin_read(150, 160) == (2, 0)


def test_end_read_fails_when_a_write_started_or_ended(guard):
    seq, busy = guard.begin_read(0, 10)
    assert busy == 0 and guard.end_read(seq)
    slot = guard.claim(9, 500, 600)  # a write elsewhere still moves the sequence
    assert not guard.end_read(seq)
    seq, _ = guard.begin_read(0, 10)
    assert guard.end_read(seq)
    guard.release(slot, 9)
    assert not guard.end_read(seq)


def test_release_frees_only_for_the_holder_and_always_bumps(guard):
    slot = guard.claim(7, 0, 10)
    assert not guard.release(slot, 8)
    assert guard.occupied() == [(slot, 7, 0, 10)]
    assert guard.release(slot, 7)
    assert not guard.release(slot, 7)
    assert guard.occupied() == []
    assert guard.sequence() == 4
    assert guard.claim(8, 5, 6) == slot  # a freed slot is taken again


def test_a_slot_being_published_overlaps_every_range(guard, block):
    # an owner without an end: what a writer killed inside claim leaves behind
    os.pwrite(block.fd, struct.pack("<Q", 42),
              layout.GUARD_SLOTS_OFFSET + 5 * layout.GUARD_SLOT_SIZE)
    assert guard.begin_read(10**9, 10**9 + 1) == (0, 42)
    assert guard.occupied() == [(5, 42, 0, 0)]
    assert guard.release(5, 42)
    assert guard.begin_read(10**9, 10**9 + 1) == (1, 0)


def test_all_slots_taken_gives_minus_one(guard):
    assert [guard.claim(1000 + i, i, i + 1) for i in range(SLOTS)] == list(range(SLOTS))
    sequence = guard.sequence()
    assert guard.claim(1, 0, 1) == -1
    assert guard.sequence() == sequence  # a failed claim changes nothing
    assert guard.release(17, 1017)
    assert guard.claim(1, 0, 1) == 17
    assert len(guard.occupied()) == SLOTS


@pytest.mark.parametrize("owner, start, end", [
    (0, 0, 1), (-1, 0, 1), (2**64, 0, 1), (1, -1, 1), (1, 5, 5), (1, 6, 5), (1, 0, 2**64),
    (1.0, 0, 1), (1, "0", 1),
])
def test_claim_refuses_bad_arguments(guard, owner, start, end):
    with pytest.raises(InvalidArgument) as caught:
        guard.claim(owner, start, end)
    assert isinstance(caught.value, ValueError)
    assert guard.sequence() == 0 and guard.occupied() == []


def test_other_calls_refuse_bad_arguments(guard):
    for slot, owner in [(-1, 1), (SLOTS, 1), (0, 0), (0, -5), (None, 1)]:
        with pytest.raises(InvalidArgument):
            guard.release(slot, owner)
    for start, end in [(5, 5), (-1, 3), (0, 2**64), (1, 0.5)]:
        with pytest.raises(InvalidArgument):
            guard.begin_read(start, end)
    for seq in [-1, 2**64, "1"]:
        with pytest.raises(InvalidArgument):
            guard.end_read(seq)
    assert guard.sequence() == 0


def test_both_implementations_read_the_same_words(impl, block):
    other = "python" if impl == "c" else "c"
    if other not in seqguard.IMPLEMENTATIONS:
        pytest.skip("the C guard is not built here")
    with seqguard.IMPLEMENTATIONS[impl](block.fd) as a, \
            seqguard.IMPLEMENTATIONS[other](block.fd) as b:
        slot = a.claim(77, 4, 8)
        assert b.occupied() == [(slot, 77, 4, 8)]
        assert b.begin_read(0, 5) == (1, 77)
        assert b.release(slot, 77)
        assert a.occupied() == [] and a.sequence() == 2


def test_a_closed_guard_refuses_calls(impl, block):
    g = seqguard.IMPLEMENTATIONS[impl](block.fd)
    g.close()
    g.close()
    with pytest.raises(ValueError):
        g.sequence()
    with pytest.raises(ValueError):
        g.claim(1, 0, 1)


def test_the_guard_keeps_its_own_hold_on_the_segment(impl, block):
    fd = os.dup(block.fd)
    g = seqguard.IMPLEMENTATIONS[impl](fd)
    os.close(fd)  # the caller's descriptor goes; the guard still works
    try:
        assert g.claim(3, 0, 1) == 0
        assert g.release(0, 3)
    finally:
        g.close()


def test_a_file_smaller_than_a_header_is_refused(impl, tmp_path):
    path = tmp_path / "small"
    path.write_bytes(bytes(100))
    fd = os.open(path, os.O_RDWR)
    try:
        with pytest.raises(ValueError):
            seqguard.IMPLEMENTATIONS[impl](fd)
    finally:
        os.close(fd)


def test_the_c_functions_check_their_buffer():
    native = pytest.importorskip("distributed_grid.memory.shm._seqguard")
    assert (native.SEQUENCE_OFFSET, native.SLOTS_OFFSET, native.SLOT_COUNT, native.SLOT_SIZE,
            native.GUARD_SIZE) == (layout.GUARD_SEQUENCE_OFFSET, layout.GUARD_SLOTS_OFFSET,
                                   layout.GUARD_SLOT_COUNT, layout.GUARD_SLOT_SIZE,
                                   layout.HEADER_SIZE)
    with pytest.raises(ValueError, match="4096 bytes"):
        native.sequence(bytearray(100))
    page = bytearray(8192)
    assert native.claim(page, 1, 0, 1) == 0
    misaligned = memoryview(page)[1 : 1 + 4096]
    with pytest.raises(ValueError, match="aligned"):
        native.sequence(misaligned)
    with pytest.raises((TypeError, BufferError)):
        native.sequence(bytes(4096))  # read-only


def test_owner_tags():
    tag = seqguard.owner_tag(1234, 2**40 + 99)
    assert tag == (1234 << 32) | 99
    assert seqguard.tag_pid(tag) == 1234
    assert seqguard.owner_tag(1, 0) != 0
    for pid, ticks in [(0, 1), (-3, 1), (2**32, 1), (5, None)]:
        with pytest.raises(InvalidArgument):
            seqguard.owner_tag(pid, ticks)
    mine = seqguard.process_tag(os.getpid())
    assert seqguard.tag_pid(mine) == os.getpid() and seqguard.tag_alive(mine)
    assert not seqguard.tag_alive(mine ^ 1)  # same pid, another start time
    assert not seqguard.tag_alive(5)  # names pid 0


def test_the_environment_chooses_the_twin():
    code = "from distributed_grid.memory.shm import seqguard; print(seqguard.IMPLEMENTATION)"
    env = dict(os.environ, DISTRIBUTED_GRID_PURE_PYTHON="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         check=True, timeout=WAIT).stdout.decode().strip()
    assert out == "python"
    env.pop("DISTRIBUTED_GRID_PURE_PYTHON")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         check=True, timeout=WAIT).stdout.decode().strip()
    assert out == ("c" if "c" in seqguard.IMPLEMENTATIONS else "python")
    assert seqguard.IMPLEMENTATION in seqguard.IMPLEMENTATIONS


# -- processes --------------------------------------------------------------------------------


def _start_all(children: Children, block: Block, args: list[dict]) -> list[subprocess.Popen]:
    procs = [children.start(block.args(go=GO, stop=STOP, **a)) for a in args]
    for proc in procs:
        assert children.line(proc) == {"ready": True}
    block.set_byte(GO, 1)
    return procs


def test_processes_never_share_a_slot_and_lose_no_increment(impl, block, children):
    rounds = 400 if impl == "c" else 100
    workers, hold = 4, 24  # 96 claims wanted at once, 64 slots
    procs = _start_all(children, block, [
        {"impl": impl, "mode": "contend", "rounds": rounds, "hold": hold}
    ] * workers)
    results = [children.result(p) for p in procs]
    print(f"\n[{impl}] contend: {results}")
    assert all(r["collisions"] == 0 for r in results), results
    assert all(r["claims"] + r["fails"] == rounds * hold for r in results), results
    claims = sum(r["claims"] for r in results)
    with seqguard.IMPLEMENTATIONS[impl](block.fd) as g:
        assert g.sequence() == 2 * claims  # one bump per claim, one per release: none lost
        assert g.occupied() == []
    assert os.pread(block.fd, SLOTS * 8, layout.HEADER_SIZE) == bytes(SLOTS * 8)


def _race(impl: str, block: Block, children: Children, guarded: bool) -> tuple[dict, list]:
    """A writer rewriting 1 MiB with 0xFF and 0x00 in turn, two readers of it."""
    want = 1000
    procs = _start_all(children, block, [
        {"impl": impl, "mode": "write", "length": MIB, "guarded": guarded, "pause": 0.0001},
        {"impl": impl, "mode": "read", "length": MIB, "guarded": guarded, "want": want},
        {"impl": impl, "mode": "read", "length": MIB, "guarded": guarded, "want": want},
    ])
    readers = [children.result(p) for p in procs[1:]]
    block.set_byte(STOP, 1)
    writer = children.result(procs[0])
    assert all(r["ok"] == want for r in readers)
    return writer, readers


def test_guarded_reads_are_never_torn(impl, block, children):
    writer, readers = _race(impl, block, children, guarded=True)
    print(f"\n[{impl}] guarded: writer {writer}, readers {readers}")
    assert [r["torn"] for r in readers] == [0, 0]
    assert writer["writes"] >= 2
    assert sum(r["ones"] for r in readers) > 0  # the readers saw the writer's bytes
    with seqguard.IMPLEMENTATIONS[impl](block.fd) as g:
        assert g.sequence() == 2 * writer["writes"]
        assert g.occupied() == []


def test_the_same_reads_without_the_guard(impl, block, children):
    """What the guard prevents: the same loop, unguarded, counted (not asserted: scheduling)."""
    writer, readers = _race(impl, block, children, guarded=False)
    print(f"\n[{impl}] unguarded: writer {writer}, torn reads "
          f"{[r['torn'] for r in readers]} of {[r['ok'] for r in readers]}")
    assert writer["writes"] >= 1


def test_a_killed_writer_stays_busy_until_reaped(impl, block, children):
    holder = children.start(block.args(impl=impl, mode="hold", start=1000, end=2000))
    held = children.line(holder)
    slot, tag = held["slot"], held["tag"]
    assert slot == 0 and seqguard.tag_pid(tag) == holder.pid
    holder.send_signal(signal.SIGKILL)
    holder.wait(WAIT)
    assert holder.returncode == -signal.SIGKILL
    assert not seqguard.tag_alive(tag)
    with seqguard.IMPLEMENTATIONS[impl](block.fd) as g:
        for _ in range(3):
            seq, busy = g.begin_read(1500, 1600)
            assert busy == tag
            time.sleep(0.01)
        assert g.begin_read(0, 1000)[1] == 0  # other bytes stay readable
        assert g.occupied() == [(slot, tag, 1000, 2000)]
        reaper = children.start(block.args(impl=impl, mode="release", slot=slot, tag=tag))
        assert children.result(reaper) == {"held": True, "alive": False}
        assert not g.end_read(seq)  # a reader that raced the reaper retries
        assert g.begin_read(1500, 1600)[1] == 0
        assert g.occupied() == []


# -- against a model --------------------------------------------------------------------------

OWNERS = st.integers(1, 4)
OPS = st.lists(st.one_of(
    st.tuples(st.just("claim"), OWNERS, st.integers(0, 40), st.integers(1, 8)),
    st.tuples(st.just("claim"), OWNERS, st.integers(0, 40), st.integers(1, 8)),
    st.tuples(st.just("release"), st.integers(0, SLOTS - 1), OWNERS),
    st.tuples(st.just("read"), st.integers(0, 40), st.integers(1, 8)),
), max_size=200)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS)
def test_claims_and_releases_follow_a_plain_model(impl, block, ops):
    os.pwrite(block.fd, bytes(layout.HEADER_SIZE - 40), 40)  # an idle guard for each example
    model: list[tuple[int, int, int] | None] = [None] * SLOTS
    seq = 0
    with seqguard.IMPLEMENTATIONS[impl](block.fd) as g:
        for op in ops:
            if op[0] == "claim":
                _, owner, start, length = op
                slot = g.claim(owner, start, start + length)
                if None in model:
                    assert 0 <= slot < SLOTS and model[slot] is None
                    model[slot] = (owner, start, start + length)
                    seq += 1
                else:
                    assert slot == -1
            elif op[0] == "release":
                _, slot, owner = op
                holds = model[slot] is not None and model[slot][0] == owner
                assert g.release(slot, owner) == holds
                seq += 1
                if holds:
                    model[slot] = None
            else:
                _, start, length = op
                busy = next((w[0] for w in model
                             if w is not None and w[1] < start + length and start < w[2]), 0)
                assert g.begin_read(start, start + length) == (seq, busy)
            assert g.sequence() == seq
            assert g.occupied() == [(i, *w) for i, w in enumerate(model) if w is not None]

