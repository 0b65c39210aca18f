#!/usr/bin/env python3
"""Writes the fuzz seed corpora in testdata/fuzz/<target>/ and the base replica of the
`restore_segment` target in testdata/fuzz/restore_replica/.

The base replica is committed rather than built at fuzz time because SQLite draws WAL salts at
random: seeds only reach the frame checks when they carry the same salts as the replica they
are spliced into, so both must come from one run of this script. Re-running it rewrites both
(and invalidates fuzz/corpus/restore_segment/, which you should then delete).

Page size 512 keeps every frame at 536 bytes, so a whole segment is a few KB and each fuzz
execution stays fast. Needs python3 and the `lz4` CLI (both test prerequisites).
"""
import gzip
import os
import shutil
import sqlite3
import struct
import subprocess
import tempfile

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
TD = os.path.join(ROOT, "testdata")
OUT = os.path.join(TD, "fuzz")
PAGE = 512
FRAME = 24 + PAGE


def write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def lz4(data):
    return subprocess.run(["lz4", "-c", "-q"], input=data, stdout=subprocess.PIPE, check=True).stdout


def cksum(order, data, s0, s1):
    for x0, x1 in struct.iter_unpack(order, data):
        s0 = (s0 + x0 + s1) & 0xFFFFFFFF
        s1 = (s1 + x1 + s0) & 0xFFFFFFFF
    return s0, s1


def reorder(wal, big_endian):
    """The same WAL with its checksums recomputed in the other byte order (SQLite on x86 only
    writes little-endian ones; the big-endian path needs a seed too)."""
    d = bytearray(wal)
    magic = 0x377F0683 if big_endian else 0x377F0682
    order = ">II" if big_endian else "<II"
    struct.pack_into(">I", d, 0, magic)
    chain = cksum(order, bytes(d[:24]), 0, 0)
    struct.pack_into(">II", d, 24, *chain)
    page = struct.unpack_from(">I", d, 8)[0]
    size = 24 + page
    off = 32
    while off + size <= len(d):
        chain = cksum(order, bytes(d[off + 24 : off + size]), *cksum(order, bytes(d[off : off + 8]), *chain))
        struct.pack_into(">II", d, off + 16, *chain)
        off += size
    return bytes(d)


def first_commit_end(wal):
    off = 32
    while off + FRAME <= len(wal):
        off += FRAME
        if struct.unpack_from(">I", wal, off - FRAME + 4)[0]:
            return off
    raise SystemExit("no commit frame in index 0")


def make_replica(tmp):
    """snapshot.db: the db at the start of WAL index 0; 00000000.wal and 00000001.wal: two WAL
    lives (the second after a TRUNCATE checkpoint, so it has new salts)."""
    db = os.path.join(tmp, "app.db")
    c = sqlite3.connect(db, isolation_level=None)
    c.execute(f"PRAGMA page_size={PAGE}")
    assert c.execute("PRAGMA journal_mode=wal").fetchone()[0] == "wal"
    c.execute("PRAGMA wal_autocheckpoint=0")
    c.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT, b BLOB)")
    c.execute("CREATE INDEX t_v ON t (v)")
    for i in range(4):
        c.execute("INSERT INTO t (v, b) VALUES (?, ?)", (f"row{i}", bytes([i]) * 40))
    c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    shutil.copyfile(db, os.path.join(tmp, "snapshot.db"))
    # Index 0: one small commit (its own segment), then a blob with overflow pages and an
    # update in the second segment.
    c.execute("INSERT INTO t (v, b) VALUES ('small', x'01')")
    c.execute("INSERT INTO t (v, b) VALUES ('blob', zeroblob(1500))")
    c.execute("UPDATE t SET v = 'changed' WHERE id = 2")
    with open(db + "-wal", "rb") as f:
        wal0 = f.read()
    c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    c.execute("DELETE FROM t WHERE id = 1")
    c.execute("INSERT INTO t (v, b) VALUES ('last', randomblob(100))")
    with open(db + "-wal", "rb") as f:
        wal1 = f.read()
    with open(os.path.join(tmp, "snapshot.db"), "rb") as f:
        snap = f.read()
    c.close()
    return snap, wal0, wal1


def main():
    tmp = tempfile.mkdtemp()
    try:
        snap, wal0, wal1 = make_replica(tmp)
    finally:
        shutil.rmtree(tmp)
    base = os.path.join(OUT, "restore_replica")
    write(os.path.join(base, "snapshot.db"), snap)
    write(os.path.join(base, "00000000.wal"), wal0)
    write(os.path.join(base, "00000001.wal"), wal1)

    # wal_parser: the real-SQLite fixtures, the small WALs above, and a big-endian copy.
    seeds = os.path.join(OUT, "wal_parser")
    os.makedirs(seeds, exist_ok=True)
    for name in sorted(os.listdir(os.path.join(TD, "wal"))):
        if name.endswith(".wal"):
            shutil.copyfile(os.path.join(TD, "wal", name), os.path.join(seeds, name))
    write(os.path.join(seeds, "small-index0.wal"), wal0)
    write(os.path.join(seeds, "small-index1.wal"), wal1)
    write(os.path.join(seeds, "small-big-endian.wal"), reorder(wal0, True))
    write(os.path.join(seeds, "db-header.bin"), snap[:100])

    # restore_segment: input = selector byte + bytes; see fuzz/fuzz_targets/restore_segment.rs.
    split = first_commit_end(wal0)
    objects = [wal0[:split], wal0[split:], wal1, snap]
    seeds = os.path.join(OUT, "restore_segment")
    for k, raw in enumerate(objects):
        # mtime=0: gzip output that does not change from run to run.
        by_encoding = {
            0: gzip.compress(raw, mtime=0),
            1: lz4(raw),
            2: raw,
            3: raw,
            4: raw,
        }
        for enc, data in by_encoding.items():
            write(os.path.join(seeds, f"obj{k}-enc{enc}"), bytes([k | (enc << 2)]) + data)

    # replica_names and config_parser: small text seeds.
    names = {
        "snapshot": "00000003.snapshot.gz",
        "snapshot-lz4": "00000001.snapshot.lz4",
        "segment": "0000001a_00001038.wal.gz",
        "segment-wide": "00000001_100000000.wal.lz4",
        "url-file": "file:///var/lib/litestream/replica",
        "url-file-localhost": "file://localhost/srv/backup/%20x",
        "url-s3": "s3://my-bucket/prod/app?region=eu-west-1&endpoint=http://127.0.0.1:9000&force-path-style=true&skip-verify=false",
        "url-s3-host": "s3://bucket.s3.us-west-2.amazonaws.com/db/path/",
        "url-b2": "s3://bucket.s3.us-west-000.backblazeb2.com/x",
        "path-home": "~/backups/db",
        "path-rel": "./rel/../path/./x",
        "duration": "1h30m",
        "duration-frac": "1.5h",
        "duration-small": "500ms",
        "duration-micro": "10\u00b5s",
        "duration-neg": "-0s",
        "generation": "9b0ed7758f1927b6",
    }
    for k, v in names.items():
        write(os.path.join(OUT, "replica_names", k), v.encode())
    seeds = os.path.join(OUT, "config_parser")
    os.makedirs(seeds, exist_ok=True)
    shutil.copyfile(os.path.join(TD, "config", "full.yml"), os.path.join(seeds, "full.yml"))
    shutil.copyfile(os.path.join(ROOT, "litestream.yml.example"), os.path.join(seeds, "example.yml"))
    small = {
        "env.yml": "dbs:\n  - path: $HOME/${DB}.db\n    replicas:\n      - url: s3://$BUCKET/${}x$1$$\n",
        "minimal.yml": "dbs:\n  - path: /data/app.db\n    replicas:\n      - path: /backup\n",
        "anchors.yml": "x: &r {type: file, path: /b}\ndbs:\n  - path: a.db\n    replicas: [*r, *r]\n",
        "empty.yml": "",
    }
    for k, v in small.items():
        write(os.path.join(seeds, k), v.encode())


if __name__ == "__main__":
    main()
