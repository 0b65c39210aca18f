#!/usr/bin/env python3
"""Writes the WAL fixtures in testdata/wal/ with real SQLite (python's sqlite3).

Each WAL is copied while its connection is still open, so SQLite has neither checkpointed
nor deleted it. Damaged variants are cut or flipped copies of real files. Re-running gives
files with the same shape (frame counts); salts differ run to run, so tests assert shapes,
never bytes. See testdata/wal/README.md.
"""
import os
import shutil
import sqlite3
import sys
import tempfile

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "testdata", "wal")
PAGE = 4096
FRAME = 24 + PAGE


def open_db(path):
    c = sqlite3.connect(path, isolation_level=None)
    c.execute(f"PRAGMA page_size={PAGE}")
    assert c.execute("PRAGMA journal_mode=wal").fetchone()[0] == "wal"
    c.execute("PRAGMA wal_autocheckpoint=0")
    return c


def copy_wal(db, name):
    shutil.copyfile(db + "-wal", os.path.join(OUT, name))
    return os.path.join(OUT, name)


def frames(path):
    return (os.path.getsize(path) - 32) // FRAME


def main():
    os.makedirs(OUT, exist_ok=True)
    tmp = tempfile.mkdtemp()
    try:
        # valid.wal: three committed transactions, one with a multi-page blob.
        db = os.path.join(tmp, "valid.db")
        c = open_db(db)
        c.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)")
        c.execute("INSERT INTO t (v) VALUES (?)", (b"a" * 100,))
        c.execute("INSERT INTO t (v) VALUES (?)", (bytes(range(256)) * 40,))  # 10 KiB: 3+ pages
        valid = copy_wal(db, "valid.wal")
        c.close()

        # torn.wal: the last frame cut in half.
        data = open(valid, "rb").read()
        torn = os.path.join(OUT, "torn.wal")
        open(torn, "wb").write(data[: len(data) - FRAME // 2])

        # bad-checksum.wal: one page byte flipped in the last transaction's first frame.
        n = frames(valid)
        b = bytearray(data)
        b[32 + (n - 3) * FRAME + 24 + 1000] ^= 0xFF
        open(os.path.join(OUT, "bad-checksum.wal"), "wb").write(bytes(b))

        # uncommitted-tail.wal: a transaction bigger than the page cache spills frames into
        # the WAL before its commit; copy the WAL mid-transaction, then roll back.
        db = os.path.join(tmp, "spill.db")
        c = open_db(db)
        c.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)")
        c.execute("INSERT INTO t (v) VALUES (x'00')")
        c.execute("PRAGMA cache_size=10")
        c.execute("BEGIN")
        for i in range(20):
            c.execute("INSERT INTO t (v) VALUES (?)", (bytes([i]) * 3000,))
        copy_wal(db, "uncommitted-tail.wal")
        c.execute("ROLLBACK")
        c.close()

        # stale-salt.wal: a life of many frames, checkpointed; the next write restarts the
        # WAL at offset 32 with new salts and leaves the old life's later frames behind.
        db = os.path.join(tmp, "stale.db")
        c = open_db(db)
        c.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)")
        for i in range(4):
            c.execute("INSERT INTO t (v) VALUES (?)", (bytes([i]) * 5000,))
        c.execute("PRAGMA wal_checkpoint(PASSIVE)")
        c.execute("INSERT INTO t (v) VALUES (x'01')")
        copy_wal(db, "stale-salt.wal")
        c.close()
    finally:
        shutil.rmtree(tmp)
    for name in sorted(os.listdir(OUT)):
        if name.endswith(".wal"):
            p = os.path.join(OUT, name)
            print(f"{name}: {os.path.getsize(p)} bytes, {frames(p)} whole frames")


if __name__ == "__main__":
    sys.exit(main())
