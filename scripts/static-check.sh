#!/usr/bin/env bash
# `make static`'s proof: the binary is not dynamically linked, its size, `version`, and a
# file-replica round trip (replicate while a writer commits, graceful stop, restore, compare).
set -euo pipefail
bin=$(realpath "${1:-target/litestream-static}")
echo "ldd: $(ldd "$bin" 2>&1 | tr -d '\t' || true)"
size=$(stat -c %s "$bin")
echo "size: $size bytes ($(awk "BEGIN{printf \"%.2f\", $size/1048576}") MiB; target under 6 MB)"
"$bin" version

work=$(mktemp -d)
trap 'kill "$daemon" 2>/dev/null || true; rm -rf "$work"' EXIT
db="$work/app.db"
python3 - "$db" <<'PY'
import sqlite3, sys
c = sqlite3.connect(sys.argv[1])
c.execute("PRAGMA journal_mode=wal")
c.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
c.commit()
PY
"$bin" replicate "$db" "file://$work/replica" >"$work/log" 2>&1 &
daemon=$!
python3 - "$db" <<'PY'
import sqlite3, sys, time, os
c = sqlite3.connect(sys.argv[1], timeout=5)
for i in range(200):
    c.execute("INSERT INTO t (v) VALUES (?)", (os.urandom(300).hex(),))
    c.commit()
    if i % 50 == 0:
        time.sleep(0.5)
time.sleep(2)
PY
kill -TERM "$daemon"
wait "$daemon"
"$bin" restore -o "$work/restored.db" "file://$work/replica"
digest='import sqlite3,sys,hashlib
c=sqlite3.connect(sys.argv[1])
h=hashlib.sha256()
rows=c.execute("select id, v from t order by id").fetchall()
for r in rows: h.update(repr(r).encode())
print(c.execute("pragma integrity_check").fetchone()[0], len(rows), h.hexdigest()[:16])'
src=$(python3 -c "$digest" "$db")
dst=$(python3 -c "$digest" "$work/restored.db")
echo "source: $src  restored: $dst"
if [ "$dst" != "$src" ] || [ "${dst%% *}" != ok ]; then
  echo "static-check: round trip FAILED" >&2
  cat "$work/log" >&2
  exit 1
fi
echo "static-check: round trip ok"
