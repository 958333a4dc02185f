"""The shared SQLite mechanism under catalogs and the key directory: a writer that meets another
process's transaction waits for it (this module's own short sleeps, not SQLite's), and many
processes changing one database at once lose no change."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from distributed_grid.memory.shm.database import Database

SCHEMA = "CREATE TABLE counts (name TEXT PRIMARY KEY, value INTEGER NOT NULL)"


def open_db(path) -> Database:
    return Database(str(path), SCHEMA, 1, "a test database")


def test_a_writer_waits_for_another_processes_transaction(tmp_path):
    db = open_db(tmp_path / "db")
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sqlite3, sys
        db = sqlite3.connect({str(tmp_path / "db")!r}, isolation_level=None)
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT INTO counts VALUES ('held', 1)")
        print("holding", flush=True)
        sys.stdin.readline()
        db.execute("COMMIT")
    """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "holding\n"
        holder.stdin.write("go\n")  # it commits while this process waits for the lock
        holder.stdin.flush()
        with db.transaction() as sql:
            sql.execute("INSERT INTO counts VALUES ('mine', 2)")
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    assert dict(db.rows("SELECT name, value FROM counts")) == {"held": 1, "mine": 2}
    db.close()


def test_processes_changing_one_database_at_once_lose_nothing(tmp_path):
    open_db(tmp_path / "db").close()
    child = textwrap.dedent(f"""
        import sys
        from distributed_grid.memory.shm.database import Database
        db = Database({str(tmp_path / "db")!r}, {SCHEMA!r}, 1, "a test database")
        for i in range(300):
            with db.transaction() as sql:
                sql.execute("INSERT INTO counts VALUES (?, 1) ON CONFLICT(name) "
                            "DO UPDATE SET value=value+1", ("total",))
                db.rows("SELECT value FROM counts")  # a read inside the change
            db.rows("SELECT value FROM counts")  # and outside one, while others write
    """)
    procs = [subprocess.Popen([sys.executable, "-c", child]) for _ in range(3)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0]
    db = open_db(tmp_path / "db")
    assert db.rows("SELECT value FROM counts WHERE name='total'") == [(900,)]
    db.close()
