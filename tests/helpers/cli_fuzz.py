"""Random command lines for ``grid``, drawn from its own grammar, and the oracle that judges a run.

Shared by the suite's short fuzz test (``tests/cluster/test_cli_fuzz.py``) and the long run
(``benchmarks/fuzz_cli.py``). The grammar is the CLI's own: every group of
:class:`~distributed_grid.cli.main.Grid`, every command and option read by
:func:`~distributed_grid.cli.grammar.commands_of`, so a command added to the CLI is fuzzed with
no change here. Only the kinds of value a parameter takes (a size, a block id, a path) are
named here, by parameter name; a parameter not named gets values of every kind.

A command line names things of the store it runs against through :class:`Ref` placeholders (the
known block, its id with leading zeros, the known key, an empty file, a directory, a dangling
link, cluster configs valid and not...), which a :class:`World` resolves when the command runs:
the known blocks get new ids each time the world is rebuilt.

The oracle (:meth:`World.run`): the command ends within the timeout (a timeout is a hang), shows
no traceback, exits 0, 1, 2, 130 or 141; exit 1 and 2 end stderr with its one ``error:`` line,
and exit 2 is exactly the usage line and the error line, for the command lines the grammar
refuses (and only those). A command that failed, and a command that only reads, changed nothing:
not the listing (``list-objects --json``), the key directory, any block's bytes (sha256), nor the
files the command line named. A successful ``allocate`` added one block and ``deallocate``
removed one, and nothing else changed. After a command that changed the store the world is
rebuilt, so every run starts from the same known contents.

Never run: command lines that would start or stop a cluster, ``gc`` without ``--dry-run`` (it
removes what dead clusters of other users of this host left, which their tests may be looking
at), and any with a size between 64 MiB and four times /dev/shm (a size that big would be
allocated: /dev/shm is not the fuzzer's to fill; a bigger one must be refused and is run).
A FIFO that nobody writes or reads is drawn too: the world runs commands with a short bound on
the wait for one (``DISTRIBUTED_GRID_INPUT_WAIT_SECONDS``), so it must end in one error line.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from distributed_grid.cli import main as cli
from distributed_grid.cli.grammar import (
    HELP_FLAGS,
    Command,
    Param,
    UsageError,
    check,
    commands_of,
)
from distributed_grid.sizes import parse_size

GRID = os.path.join(os.path.dirname(sys.executable), "grid")
GROUPS: dict[str, Any] = dict(vars(cli.Grid()))
GRAMMAR: dict[str, dict[str, Command]] = commands_of(GROUPS, cli.METAVARS)
ALLOWED_CODES = (0, 1, 2, 130, 141)
TIMEOUT = 60.0
MAX_ALLOCATED = 64 * 2**20

# What each parameter takes, by name; a parameter not named here takes values of every kind.
KIND_OF = {
    "size_in_bytes": "size", "size": "size", "offset": "size", "port": "size",
    "num_cpus": "size", "block_id": "target", "key": "key", "file_path": "path",
    "output": "path", "config": "path", "node": "node", "name": "node", "nodes": "node",
    "address": "address",
}
# Commands that only read: they change nothing even when they succeed.
READ_ONLY = {("memory", "list-objects"), ("memory", "retrieve"), ("memory", "gc"),
             ("cluster", "status")}
NEVER_RUN = {("cluster", "start"), ("cluster", "stop")}  # they would start or stop clusters


@dataclass(frozen=True)
class Ref:
    """A value naming a thing of the world (``block``, ``key``, ``empty``...), resolved when
    the command runs; see :meth:`World.resolve`."""

    name: str
    prefix: str = ""  # text before it in the same argument (``--block-id=``)

    def __repr__(self) -> str:
        return f"{self.prefix}<{self.name}>"


# -- values -----------------------------------------------------------------------------------

SIZES = ["1", "4096", "4KiB", "10MB", "1.5KiB", "64MiB", "0", "-0", "-1", "-1e3", "", " ",
         "1e3", "0x10", "huge", "1e30", "10" * 15, "1" + "0" * 30, "1TiB", "1.5", "+5", ".5",
         "5.", "1_000", "12 MB", " 12 ", "nan", "inf", "-inf", "\u0661\u0662", "\uff11\uff10",
         "1KiB\n", "4KB", "4kib", "4 k", "k4", "True", "None", "[1]", "0b11"]
BLOCK_IDS = ["block_-1_gpu1", "block_0_gpu3", "block_999999_gpu1", "block__gpu1",
             "block_1e3_gpu1", "block_0x1_gpu1", "block_1", "block_1_", "block_1_gpu1 ",
             "block_1_gpu1\n", "Block_1_gpu1", "block_+1_gpu1", "block_1_gpu1_gpu2",
             "block_\u0661_gpu1", "block_1_gpu1\x1b[2K", "block_0_gpu1", "block_0_head"]
BLOCK_REFS = [Ref("block"), Ref("block2"), Ref("empty_block"), Ref("block_zeros"),
              Ref("block_plus"), Ref("block_wrong_node"), Ref("block_upper")]
KEYS = ["k\nv", "k\r\nerror: forged", "\x1b[31mred", "tab\tkey", "\u043a\u043b\u044e\u0447",
        "\U0001f511", "-", "--x", "-5", "0x10", "1e3", "007", "True", "None", "", " ",
        "a" * 300, "block_0_gpu1", "k=v", "--json", "[1,2]", "{}", "\u200b", "\\n"]
KEY_REFS = [Ref("key"), Ref("key2"), Ref("key3"), Ref("fresh_key"), Ref("fresh_key")]
PATHS = ["/proc/self/status", "/dev/null", "", ".", "-", "/dev/stdin", "..", "nowhere/f",
         "/dev/zero"]
PATH_REFS = [Ref("file"), Ref("file"), Ref("empty"), Ref("dir"), Ref("missing"),
             Ref("dangling"), Ref("config"), Ref("bad_config"), Ref("config_fields"),
             Ref("config_elsewhere"), Ref("fifo")]
NODES = ["gpu1", "gpu2", "head", "None", "", "gpu3", "GPU1", "gpu1,gpu2", " gpu1", "gpu1\n",
         "-", "*", "gpu1 ", "none", "null"]
ADDRESSES = [Ref("address"), "127.0.0.1:1", "", "127.0.0.1", "host:port", "[::1]:x", "auto"]
SWITCH_VALUES = ["true", "false", "yes", "no", "0", "1", "", "TRUE", "False", "on", "None"]


def _text() -> st.SearchStrategy[str]:
    """Any short text that can be an argument (no NUL) and names no path outside the run's
    directory (no leading ``/``, no ``..``): an ``--output`` of it may be written."""
    chars = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")
    return st.text(chars, max_size=12).filter(lambda s: not s.startswith("/") and ".." not in s)


def values(kind: str) -> st.SearchStrategy[str | Ref]:
    """Values of one kind, valid and not; sometimes of any kind."""
    by_kind: dict[str, st.SearchStrategy[Any]] = {
        "size": st.sampled_from(SIZES) | st.integers(-2**70, 2**70).map(str),
        "target": st.sampled_from(BLOCK_REFS + BLOCK_IDS + KEY_REFS + KEYS),
        "key": st.sampled_from(KEY_REFS * 3 + KEYS),
        "path": st.sampled_from(PATH_REFS * 2 + PATHS),
        "node": st.sampled_from(NODES),
        "address": st.sampled_from(ADDRESSES),
    }
    if kind in by_kind:
        return st.one_of(by_kind[kind], by_kind[kind], by_kind[kind], by_kind[kind], _any())
    return _any()


def _any() -> st.SearchStrategy[str | Ref]:
    return st.one_of(st.sampled_from(SIZES + BLOCK_IDS + KEYS + PATHS + NODES), _text(),
                     st.sampled_from(BLOCK_REFS + KEY_REFS + PATH_REFS))


def misspellings(word: str) -> list[str]:
    """Near misses of a command or option word: a letter dropped, doubled or swapped, another
    case, another separator."""
    body = word.lstrip("-")
    dashes = word[:len(word) - len(body)]
    out = {dashes + body[:-1], dashes + body[1:], dashes + body + body[-1:],
           dashes + body.upper(), dashes + body.replace("-", "_"), dashes + body.title(),
           dashes + body.replace("-", ""), dashes + body + "s"}
    if len(body) > 2:
        out.add(dashes + body[1] + body[0] + body[2:])
    if dashes:
        out |= {"-" + body, "---" + body, body}
    out.discard(word)
    out.discard("")
    return sorted(out)


# -- command lines ----------------------------------------------------------------------------

def _rarely(draw: st.DrawFn, one_in: int) -> bool:
    """True once in ``one_in`` draws (the simplest draw is False: the common path)."""
    return draw(st.integers(0, one_in - 1)) == one_in - 1


def _wrong_word(draw: st.DrawFn, word: str, others: Sequence[str]) -> str:
    """Instead of a command word: a misspelling of it, another word of the grammar, or any
    text."""
    return draw(st.one_of(st.sampled_from(misspellings(word)),
                          st.sampled_from(sorted(others) or ["x"]), _text()))


def _kind(param_name: str) -> str:
    return KIND_OF.get(param_name, "any")


def _option(draw: st.DrawFn, command: Command, param: Param | None) -> list[str | Ref]:
    """One option of ``command`` as typed: ``--opt value``, ``--opt=value``, a switch, with
    or without a value, misspelt; or (``param`` None) another command's."""
    if param is None:
        others = sorted({p.option for g in GRAMMAR.values() for c in g.values()
                         for p in c.params} - {p.option for p in command.params})
        name = draw(st.sampled_from(others or ["--nope"]))
        return [name, draw(_any())] if draw(st.booleans()) else [name]
    spelling = param.option
    if _rarely(draw, 16):
        spelling = draw(st.sampled_from(misspellings(param.option)))
    if param.switch:
        value = draw(st.sampled_from(SWITCH_VALUES))
        form = draw(st.sampled_from(["plain"] * 6 + ["=", "=", "value", "no", "no="]))
        if form == "=":
            return [f"{spelling}={value}"]
        if form == "value":
            return [spelling, value]
        if form.startswith("no"):
            return ["--no" + spelling.lstrip("-") + ("=" + value if form == "no=" else "")]
        return [spelling]
    value = draw(values(_kind(param.name)))
    form = draw(st.sampled_from(["space", "="] * 8 + ["missing"]))
    if form == "missing":
        return [spelling]
    if form == "=":
        return [Ref(value.name, f"{spelling}=") if isinstance(value, Ref) else
                f"{spelling}={value}"]
    return [spelling, value]


@st.composite
def command_lines(draw: st.DrawFn) -> list[str | Ref]:
    """A random ``grid`` command line (without ``grid``), built from the live grammar."""
    groups = sorted(GRAMMAR)
    every_command = sorted({n for g in GRAMMAR.values() for n in g})
    command = draw(st.sampled_from([c for g in groups for _, c in sorted(GRAMMAR[g].items())]))
    group, name = command.group, command.name
    if _rarely(draw, 20):
        group = _wrong_word(draw, group, every_command)
    if _rarely(draw, 20):
        name = _wrong_word(draw, name, [n for n in every_command if n not in GRAMMAR[command.group]]
                           + groups + [name.replace("-", "_")])
    params: list[Param | None] = list(draw(st.permutations(
        [p for p in command.params if not p.required])))
    if command.positionals and _rarely(draw, 6):  # a required argument given by name
        params.insert(0, draw(st.sampled_from(command.positionals)))
    if _rarely(draw, 16):
        params.append(None)  # an option the command does not have
    if params and _rarely(draw, 12):
        params.insert(0, params[-1])  # an option given twice
    params = params[:draw(st.sampled_from([0, 1, 1, 2, 2, 3]))]
    units: list[list[str | Ref]] = [_option(draw, command, p) for p in params]
    wanted = [p for p in command.positionals if p not in params]
    count = max(0, len(wanted) + draw(st.sampled_from([0] * 20 + [-1, 1, 2])))
    for i in range(count):
        kind = _kind(wanted[i].name) if i < len(wanted) else "any"
        units.insert(i, [draw(values(kind))])
    if _rarely(draw, 4):
        units = draw(st.permutations(units))
    argv: list[str | Ref] = [group, name] + [token for unit in units for token in unit]
    odd = draw(st.sampled_from(["none"] * 18 + ["cut", "help"]))
    if odd == "cut":
        argv = argv[:draw(st.integers(0, 2))]  # no group, or no command
    elif odd == "help":
        argv.insert(draw(st.integers(0, len(argv))), draw(st.sampled_from(HELP_FLAGS)))
    return argv


# -- the world a command line runs against ----------------------------------------------------

@dataclass(frozen=True)
class State:
    """What a command must not change: the listing, the key directory (key -> block id) and
    every block's bytes; and the files a command line may name."""

    blocks: dict[str, dict]
    keys: dict[str, str]
    digests: dict[str, str]
    files: dict[str, str]

    def store(self) -> tuple:
        return self.blocks, self.keys, self.digests


@dataclass
class Outcome:
    """One run: the command line as run, its exit code (None: it hung), its output, and what
    the oracle found wrong with it."""

    argv: list[str]
    code: int | None
    stdout: bytes
    stderr: str
    seconds: float
    problems: list[str] = field(default_factory=list)

    @property
    def command(self) -> str:
        """What the grammar makes of the command line: ``help``, ``refused``, or the command
        (``memory store``)."""
        if _asks_help(self.argv):
            return "help"
        checked = _checked(self.argv)
        return "refused" if checked is None else f"{checked[0]} {checked[1]}"

    def report(self) -> str:
        tail = "\n".join(self.stderr.splitlines()[-12:])
        return (f"grid {self.argv!r} exited {self.code} in {self.seconds:.1f} s:\n"
                + "".join(f"  - {p}\n" for p in self.problems) + f"stderr (tail):\n{tail}")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class World:
    """A store with known contents on a running cluster, and the files a command line may name.

    Known contents: ``block`` (64 KiB on gpu1) holding the keys ``key`` and ``key2``, ``block2``
    (4 KiB on gpu2) holding ``key3``, and ``empty_block`` (4 KiB on gpu1) with no key. Blocks that
    were there before the world was built are never freed by it.

    Args:
        pool: a MemoryPool of the cluster (the oracle's own view of the store).
        address: the cluster's address (``RAY_ADDRESS`` of every command).
        root: a private directory for the world's files; the commands run in ``root/cwd``.
    """

    KEY, KEY2, KEY3 = "fz-known", "fz known 2", "fz-three"

    def __init__(self, pool: Any, address: str, root: Path) -> None:
        self.pool = pool
        self.address = address
        self.root = Path(root)
        self.cwd = self.root / "cwd"
        self.env = dict(os.environ, RAY_ADDRESS=address,
                        DISTRIBUTED_GRID_INPUT_WAIT_SECONDS="0.3")
        self.foreign = {b.block_id for b in pool.list_blocks()}
        self.ids: dict[str, str] = {}
        self.fresh = 0
        self.rebuilds = 0
        self.paths = {name: str(self.root / name) for name in
                      ("file", "empty", "dir", "missing", "dangling", "config", "bad_config",
                       "config_fields", "config_elsewhere", "fifo")}
        self.refresh_files()
        self.reset()

    # -- contents --
    def build(self) -> None:
        """Free what the world's commands made, then make the known contents again."""
        for block in self.pool.list_blocks():
            if block.block_id not in self.foreign:
                self.pool.deallocate(block.block_id)
        block = self.pool.allocate(64 * 1024, node="gpu1").block_id
        self.pool.write(block, _pattern(1000, 1), 0, key=self.KEY)
        self.pool.write(block, _pattern(3000, 2), 4096, key=self.KEY2)
        block2 = self.pool.allocate(4096, node="gpu2").block_id
        self.pool.write(block2, _pattern(100, 3), 0, key=self.KEY3)
        empty = self.pool.allocate(4096, node="gpu1").block_id
        self.ids = {"block": block, "block2": block2, "empty_block": empty}
        self.rebuilds += 1

    def reset(self) -> None:
        """The known contents again, and the oracle's picture of them."""
        self.build()
        self.state = self.snapshot()

    def teardown(self) -> None:
        """Free every block the world made; remove its files."""
        for block in self.pool.list_blocks():
            if block.block_id not in self.foreign:
                self.pool.deallocate(block.block_id)
        shutil.rmtree(self.root, ignore_errors=True)

    def refresh_files(self) -> None:
        """The files as a command line expects them, and an empty working directory."""
        shutil.rmtree(self.cwd, ignore_errors=True)
        self.cwd.mkdir(parents=True)
        p = self.paths
        for name in ("missing", "dangling", "dir", "fifo"):
            if os.path.lexists(p[name]):
                shutil.rmtree(p[name]) if os.path.isdir(p[name]) and not \
                    os.path.islink(p[name]) else os.unlink(p[name])
        Path(p["file"]).write_bytes(_pattern(3000, 4))
        Path(p["empty"]).write_bytes(b"")
        os.mkdir(p["dir"])
        os.symlink(p["missing"], p["dangling"])
        os.mkfifo(p["fifo"])
        Path(p["config"]).write_text("nodes:\n  - name: gpu1\n    host: 10.255.255.1\n"
                                     "    role: worker\n    memory: 1MiB\n")
        Path(p["bad_config"]).write_text("nodes: [\n")
        Path(p["config_fields"]).write_text("nodes: [{1: 2, name: gpu1}]\n")
        Path(p["config_elsewhere"]).write_text("address: 127.0.0.1:1\nnodes: []\n")

    def resolve(self, token: str | Ref) -> str:
        """The text a token stands for now."""
        if isinstance(token, str):
            return token
        return token.prefix + self._value(token.name)

    def _value(self, name: str) -> str:
        if name == "fresh_key":
            self.fresh += 1
            return f"fz-new-{self.fresh}"
        if name in ("key", "key2", "key3"):
            return {"key": self.KEY, "key2": self.KEY2, "key3": self.KEY3}[name]
        if name == "address":
            return self.address
        if name in self.paths:
            return self.paths[name]
        if name in self.ids:
            return self.ids[name]
        _, number, node = self.ids["block"].split("_")
        return {"block_zeros": f"block_{int(number):05d}_{node}",
                "block_plus": f"block_+{number}_{node}",
                "block_wrong_node": f"block_{number}_gpu2",
                "block_upper": f"BLOCK_{number}_{node.upper()}"}[name]

    def snapshot(self) -> State:
        """The store's listing, key directory and bytes, and the named files, now."""
        blocks = {b.block_id: b.to_json() for b in self.pool.list_blocks()}
        digests = {block_id: _sha(self.pool.read(block_id, size=info["size"]))
                   for block_id, info in blocks.items() if info["status"] == "ok"}
        return State(blocks, dict(self.pool.keys()), digests, self.files())

    def files(self) -> dict[str, str]:
        """What each named file is (its sha256, ``dir``, ``link`` or ``absent``) and what the
        working directory holds."""
        files = {}
        for name, path in self.paths.items():
            if os.path.isfile(path):
                files[name] = _sha(Path(path).read_bytes())
            else:
                files[name] = "dir" if os.path.isdir(path) else \
                    ("link" if os.path.islink(path) else
                     "fifo" if stat.S_ISFIFO(os.lstat(path).st_mode) else "absent") \
                    if os.path.lexists(path) else "absent"
        files["cwd"] = ",".join(sorted(os.listdir(self.cwd))) if self.cwd.is_dir() else "absent"
        return files

    # -- running --
    def skip_reason(self, argv: list[str]) -> str | None:
        """Why a command line must not run here (see the module's docstring), or None."""
        checked = _checked(argv)
        if checked is not None:
            group, name, *rest = checked
            if (group, name) in NEVER_RUN:
                return f"grid {group} {name} would run"
            if (group, name) == ("memory", "gc") and "--dry-run" not in rest:
                return "gc without --dry-run would run"
        shm = os.statvfs("/dev/shm")
        too_big = 4 * shm.f_blocks * shm.f_frsize
        for arg in argv:
            for text in (arg, arg.partition("=")[2]):
                try:
                    size = parse_size(text)
                except Exception:
                    continue
                if MAX_ALLOCATED < size <= too_big:
                    return f"{text!r} is a size the fuzzer does not allocate"
        return None

    def run(self, tokens: list[str | Ref], timeout: float = TIMEOUT) -> Outcome | None:
        """Run ``grid`` on a command line and judge it; None when it must not run here."""
        argv = [self.resolve(t) for t in tokens]
        if self.skip_reason(argv) is not None:
            return None
        self.refresh_files()
        before = State(*self.state.store(), self.files())
        started = time.monotonic()
        proc = subprocess.Popen([GRID, *argv], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=self.env, cwd=self.cwd,
                                start_new_session=True)
        try:
            out, err = proc.communicate(timeout=timeout)
            code: int | None = proc.returncode
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            code = None
        outcome = Outcome(argv, code, out, err.decode(errors="replace"),
                          time.monotonic() - started)
        after = self.snapshot()
        outcome.problems = judge(outcome, before, after)
        self.state = after
        if after.store() != before.store():
            self.reset()  # every run starts from the known contents
        return outcome


def _pattern(size: int, seed: int) -> bytes:
    return (hashlib.sha256(str(seed).encode()).digest() * (size // 32 + 1))[:size]


def _asks_help(argv: list[str]) -> bool:
    return argv == ["--version"] or not argv or any(a in HELP_FLAGS for a in argv)


def _checked(argv: list[str]) -> list[str] | None:
    """The command line fire is given, or None when the grammar refuses it (or it asks for
    help)."""
    if _asks_help(argv):
        return None
    try:
        return check(list(argv), GRAMMAR)
    except UsageError:
        return None


def _block_changes(before: State, after: State) -> list[str]:
    """What changed, block by block: ``B appeared``, ``B was freed``, ``B's facts changed``,
    ``B's bytes changed``."""
    out = []
    for block_id in sorted(set(before.blocks) | set(after.blocks)):
        if block_id not in after.blocks:
            out.append(f"{block_id} was freed")
        elif block_id not in before.blocks:
            out.append(f"{block_id} appeared")
        elif before.blocks[block_id] != after.blocks[block_id]:
            out.append(f"{block_id}'s facts changed")
        elif before.digests.get(block_id) != after.digests.get(block_id):
            out.append(f"{block_id}'s bytes changed")
    return out


def _key_changes(before: State, after: State) -> dict[str, tuple[str | None, str | None]]:
    """Each key whose block changed: key -> (block before, block after)."""
    return {key: (before.keys.get(key), after.keys.get(key))
            for key in sorted(set(before.keys) | set(after.keys))
            if before.keys.get(key) != after.keys.get(key)}


def _file_changes(before: State, after: State) -> list[str]:
    return [f"file {name}: {before.files[name]} -> {after.files.get(name)}"
            for name in sorted(before.files) if before.files[name] != after.files.get(name)]


def _store_verdict(command: tuple[str, str] | None, before: State, after: State) -> str | None:
    """What is wrong with the changes a successful command made to the store, or None."""
    blocks, keys = _block_changes(before, after), _key_changes(before, after)
    if not blocks and not keys:
        return None
    shown = "; ".join(blocks + [f"key {k!r}: {a} -> {b}" for k, (a, b) in keys.items()])
    if command is None or command in READ_ONLY:
        return "only reads, yet changed: " + shown
    if command == ("memory", "allocate"):
        if len(blocks) != 1 or not blocks[0].endswith(" appeared") or keys:
            return "allocate changed more than one new block: " + shown
    if command == ("memory", "deallocate"):
        freed = blocks[0].split()[0] if len(blocks) == 1 and blocks[0].endswith(" was freed") \
            else None
        if freed is None or any(a != freed or b is not None for a, b in keys.values()):
            return "deallocate changed more than the one block it freed: " + shown
    return None


def judge(outcome: Outcome, before: State, after: State) -> list[str]:
    """What is wrong with a run (empty: nothing); see the module's docstring."""
    problems = []
    code, err, argv = outcome.code, outcome.stderr, outcome.argv
    asks_help = _asks_help(argv)
    checked = None if asks_help else _checked(argv)
    refused = not asks_help and checked is None
    if code is None:
        problems.append(f"hang: no exit within {outcome.seconds:.0f} s")
    if "Traceback" in err:
        problems.append("a traceback on stderr")
    if code is not None and code not in ALLOWED_CODES:
        problems.append(f"exit code {code} (allowed: {ALLOWED_CODES})")
    lines = [line for line in err.splitlines() if line.strip()]
    if code in (1, 2):
        if not lines or not lines[-1].startswith("error: "):
            problems.append("stderr does not end with an 'error: ' line")
        elif sum(line.startswith("error") for line in lines) != 1:
            problems.append("more than one error line")
    if code == 2 and not (len(lines) == 2 and lines[0].startswith("usage: grid")):
        problems.append("exit 2 is not exactly a usage line and an error line")
    if asks_help and code != 0:
        problems.append(f"help or version exited {code}")
    if refused and code != 2:
        problems.append(f"the grammar refuses this command line, but it exited {code}")
    if code == 2 and not refused:
        problems.append("exit 2 for a command line the grammar accepts")
    if code != 0:
        changes = _block_changes(before, after) + [
            f"key {k!r}: {a} -> {b}" for k, (a, b) in _key_changes(before, after).items()]
        changes += _file_changes(before, after)
        if changes:
            problems.append("failed, yet changed: " + "; ".join(changes))
    else:
        wrong = _store_verdict(None if checked is None else (checked[0], checked[1]),
                               before, after)
        if wrong:
            problems.append(wrong)
    return problems
