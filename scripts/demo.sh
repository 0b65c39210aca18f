#!/usr/bin/env bash
# `make run`: replicate ./data/app.db to ./data/replica with the shipped example config while
# a writer commits one row a second, printing each replica file as it appears, so a newcomer
# sees replication happen. Ctrl-C stops it; it then prints the replica tree and the commands
# to try next. Run it again and the daemon resumes its generation (no new full snapshot).
#
# Background jobs of a script ignore SIGINT, so Ctrl-C reaches only the daemon (in the
# foreground): it syncs, records its clean stop and exits; then the writer is killed (SIGTERM:
# no close, so no checkpoint of frames the daemon did not see) and the next run's daemon
# continues where this one stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p data
bin=target/release/litestream
cfg=litestream.yml.example
db="$PWD/data/app.db"

if [ ! -e data/app.db ]; then
    # Only on the first run: opening and closing the db before the daemon starts would
    # checkpoint the WAL the last run left, and the daemon could not continue its generation.
    python3 - <<'PY'
import sqlite3
c = sqlite3.connect("data/app.db")
c.execute("PRAGMA journal_mode=wal")
c.execute("CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY, at TEXT, note TEXT)")
c.commit()
c.close()
PY
fi

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

# Each new or grown replica file, as the daemon writes it (sync-interval 1s).
(
    seen=$(mktemp)
    trap 'rm -f "$seen"' EXIT
    find data/replica -type f 2>/dev/null | sort >"$seen" || true
    while sleep 0.5; do
        now=$(find data/replica -type f -printf '%p %s\n' 2>/dev/null | sort || true)
        comm -13 "$seen" <(printf '%s\n' "$now" | cut -d' ' -f1) | while read -r f; do
            [ -n "$f" ] && echo "  uploaded $f ($(stat -c %s "$f") bytes)"
        done
        printf '%s\n' "$now" | cut -d' ' -f1 >"$seen"
    done
) &
watcher=$!
trap 'kill $writer $watcher 2>/dev/null || true' EXIT

echo "replicating ./data/app.db -> ./data/replica, one row a second (Ctrl-C to stop)"
"$bin" replicate -config "$cfg" || true
kill $writer $watcher 2>/dev/null || true
wait 2>/dev/null || true

echo
echo "replica tree ($(find data/replica -type f | wc -l) files):"
find data/replica -type f -printf '  %p  %s bytes\n' | sort
cat <<EOF

Try next:
  $bin generations -config $cfg $db
  $bin snapshots   -config $cfg $db
  $bin wal         -config $cfg $db
  $bin restore     -config $cfg -o /tmp/restored.db $db
  sqlite3 /tmp/restored.db 'SELECT count(*), max(at) FROM events'
Run \`make run\` again: the daemon resumes this generation ("resuming generation ...").
EOF
