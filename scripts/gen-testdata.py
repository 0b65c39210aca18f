#!/usr/bin/env python3
"""Writes the WAL fixtures in testdata/wal/ with real SQLite (python's sqlite3).

Each WAL is copied while its connection is still open, so SQLite has neither checkpointed
nor deleted it. Damaged variants are cut or flipped copies of real files. Re-running gives
files with the same shape (frame counts); salts differ run to run, so tests assert shapes and
counts, never bytes. The script checks those counts itself (with its own checksum code, not
ours) so that a SQLite whose page layout differs fails here instead of in `cargo test`.
See testdata/wal/README.md.
"""
import os
import shutil
import sqlite3
import struct
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


# name: (whole frames in the file, frames in the committed prefix). Mirrored in the tests in
# src/wal.rs and in testdata/wal/README.md.
EXPECTED = {
    "valid.wal": (7, 7),
    "torn.wal": (6, 3),
    "bad-checksum.wal": (7, 3),
    "uncommitted-tail.wal": (16, 3),
    "stale-salt.wal": (14, 1),
}


def committed_frames(path):
    """An independent reading of SPEC section 1: frames up to the last valid commit."""
    d = open(path, "rb").read()
    magic, _, page, _, salt1, salt2, c1, c2 = struct.unpack_from(">8I", d, 0)
    order = ">II" if magic & 1 else "<II"

    def cksum(data, s0, s1):
        for x0, x1 in struct.iter_unpack(order, data):
            s0 = (s0 + x0 + s1) & 0xFFFFFFFF
            s1 = (s1 + x1 + s0) & 0xFFFFFFFF
        return s0, s1

    assert cksum(d[:24], 0, 0) == (c1, c2), path
    size = 24 + page
    chain, n, committed, off = (c1, c2), 0, 0, 32
    while off + size <= len(d):
        _, db_size, s1, s2, k1, k2 = struct.unpack_from(">6I", d, off)
        if (s1, s2) != (salt1, salt2):
            break
        chain = cksum(d[off + 24 : off + size], *cksum(d[off : off + 8], *chain))
        if chain != (k1, k2):
            break
        n += 1
        if db_size:
            committed = n
        off += size
    return committed


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

        # bad-checksum.wal: one page byte flipped in the second of the last transaction's four
        # frames, so the valid frame before it must be dropped too (it never commits).
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
    ok = True
    for name, want in sorted(EXPECTED.items()):
        p = os.path.join(OUT, name)
        got = (frames(p), committed_frames(p))
        print(f"{name}: {os.path.getsize(p)} bytes, {got[0]} whole frames, {got[1]} committed")
        if got != want:
            print(f"{name}: expected {want[0]} whole frames, {want[1]} committed", file=sys.stderr)
            ok = False
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
