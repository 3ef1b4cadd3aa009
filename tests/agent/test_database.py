"""The agent's database on the standard library's sqlite3: a data directory written by the
earlier SQLAlchemy agent opens unchanged, sessions commit or roll back whole, and racing
writers (threads of the agent, a command-line process beside it) lose no update."""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path

import pytest

from edgefleet.agent.app.database import AgentDatabase
from edgefleet.agent.audit.log import AuditLog
from edgefleet.agent.registry.blobs import BlobStore
from edgefleet.agent.registry.registry import Registry
from edgefleet.errors import StorageError

# The schema exactly as SQLAlchemy's create_all wrote it (read back from sqlite_master of
# a database the SQLAlchemy agent created), and rows as it stored them.
SQLALCHEMY_SCHEMA = """
CREATE TABLE trust (\n\tname VARCHAR(32) NOT NULL, \n\tenvelopes BLOB NOT NULL, \n\t\
PRIMARY KEY (name)\n);
CREATE TABLE installed (\n\tname VARCHAR(64) NOT NULL, \n\tversion VARCHAR(64) NOT NULL, \
\n\tsha256 VARCHAR(64) NOT NULL, \n\tlength INTEGER NOT NULL, \n\tmanifest BLOB NOT NULL, \
\n\tinstalled_at DATETIME NOT NULL, \n\tPRIMARY KEY (name, version)\n);
CREATE TABLE active (\n\tname VARCHAR(64) NOT NULL, \n\tversion VARCHAR(64) NOT NULL, \
\n\tprevious_version VARCHAR(64), \n\tactivated_at DATETIME NOT NULL, \n\tPRIMARY KEY (name)\n);
CREATE TABLE audit (\n\tseq INTEGER NOT NULL, \n\tcanonical BLOB NOT NULL, \
\n\trecord_sha256 VARCHAR(64) NOT NULL, \n\tPRIMARY KEY (seq)\n);
CREATE TABLE checkpoints (\n\tseq INTEGER NOT NULL, \n\tenvelope BLOB NOT NULL, \
\n\tPRIMARY KEY (seq)\n);
CREATE TABLE state (\n\t"key" VARCHAR(64) NOT NULL, \n\tvalue VARCHAR(4096) NOT NULL, \
\n\tPRIMARY KEY ("key")\n);
"""
MANIFEST = {"name": "smollm2", "version": "2", "sha256": "ab" * 32, "length": 5}


def _sqlalchemy_era_database(path: Path) -> None:
    connection = sqlite3.connect(path)
    connection.executescript(SQLALCHEMY_SCHEMA)
    connection.execute(
        "INSERT INTO installed VALUES (?, ?, ?, ?, ?, ?)",
        ("smollm2", "2", "ab" * 32, 5, json.dumps(MANIFEST).encode(), "2026-11-01 10:00:00.000001"),
    )
    connection.execute(
        "INSERT INTO active VALUES ('smollm2', '2', '1', '2026-11-01 10:00:01.000000')"
    )
    connection.execute("INSERT INTO state VALUES ('audit_acked_seq', '7')")
    connection.commit()
    connection.close()


def test_a_database_the_sqlalchemy_agent_wrote_opens_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "agent.db"
    _sqlalchemy_era_database(path)
    schema_before = sqlite3.connect(path).execute("SELECT sql FROM sqlite_master").fetchall()
    db = AgentDatabase(path)
    registry = Registry(db, BlobStore(tmp_path / "blobs"), AuditLog(db, "dev-1"))
    assert registry.active_version("smollm2") == "2"
    assert [(m.name, m.version, m.active) for m in registry.installed()] == [("smollm2", "2", True)]
    assert db.get_state("audit_acked_seq") == "7"
    db.set_state("audit_acked_seq", "8")
    db.dispose()
    after = sqlite3.connect(path)
    assert after.execute("SELECT sql FROM sqlite_master").fetchall() == schema_before
    assert after.execute("SELECT value FROM state").fetchall() == [("8",)]


def test_a_failed_session_leaves_nothing_behind(tmp_path: Path) -> None:
    db = AgentDatabase(tmp_path / "agent.db")
    db.set_state("k", "before")
    with pytest.raises(RuntimeError), db.session() as session:
        session.execute("UPDATE state SET value = 'during' WHERE \"key\" = 'k'")
        raise RuntimeError("the caller failed half-way")
    with pytest.raises(StorageError, match="^local database error: "), db.session() as session:
        session.execute("UPDATE state SET value = 'during' WHERE \"key\" = 'k'")
        session.execute("INSERT INTO state VALUES ('k', 'duplicate key')")
    assert db.get_state("k") == "before"


def test_racing_writers_lose_no_update(tmp_path: Path) -> None:
    """16 threads on the agent's connection and 16 on a second one (a command-line process
    on the same data directory) each add 1 to one counter, read and written back in one
    session: every increment survives."""
    path = tmp_path / "agent.db"
    agent, command_line = AgentDatabase(path), AgentDatabase(path)
    agent.set_state("n", "0")
    start = threading.Barrier(32)

    def add_one(db: AgentDatabase) -> None:
        start.wait()
        with db.session() as session:
            (value,) = session.execute("SELECT value FROM state WHERE \"key\" = 'n'").fetchone()
            session.execute(
                "UPDATE state SET value = ? WHERE \"key\" = 'n'", (str(int(value) + 1),)
            )

    threads = [
        threading.Thread(target=add_one, args=(db,))
        for db in (agent, command_line)
        for _ in range(16)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert agent.get_state("n") == "32"


def test_a_database_that_cannot_be_opened_says_so_on_one_line(tmp_path: Path) -> None:
    (tmp_path / "agent.db").mkdir()  # a directory where the file should be
    with pytest.raises(StorageError) as raised:
        AgentDatabase(tmp_path / "agent.db")
    assert str(raised.value).startswith(f"cannot open {tmp_path / 'agent.db'}: ")
    assert "\n" not in str(raised.value)


def test_a_disposed_database_opens_again_when_used(tmp_path: Path) -> None:
    db = AgentDatabase(tmp_path / "agent.db")
    db.set_state("k", "v")
    db.dispose()
    db.dispose()  # twice is harmless
    assert db.get_state("k") == "v"
