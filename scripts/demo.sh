#!/usr/bin/env bash
# `make run`: replicate ./data/app.db to ./data/replica with the shipped example config while
# a writer commits one row a second, so a newcomer sees replication happen. Ctrl-C to stop;
# then try: target/release/litestream restore -config litestream.yml.example -o /tmp/restored.db "$PWD/data/app.db"
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p data
bin=target/release/litestream

python3 - <<'PY'
import sqlite3
c = sqlite3.connect("data/app.db")
c.execute("PRAGMA journal_mode=wal")
c.execute("CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY, at TEXT, note TEXT)")
c.commit()
c.close()
PY

python3 - <<'PY' &
import sqlite3, time, datetime
c = sqlite3.connect("data/app.db", timeout=5)
c.execute("PRAGMA journal_mode=wal")
while True:
    c.execute("INSERT INTO events (at, note) VALUES (?, ?)", (datetime.datetime.now(datetime.timezone.utc).isoformat(), "demo write"))
    c.commit()
    time.sleep(1)
PY
writer=$!
trap 'kill $writer 2>/dev/null || true' EXIT

echo "replicating ./data/app.db -> ./data/replica (Ctrl-C to stop)"
"$bin" replicate -config litestream.yml.example || true
echo
echo "replica tree:"
find data/replica -type f | sort | head -20
