//! `litestream wal`: every WAL segment of each replica of a db.

use anyhow::{bail, Result};
use pico_args::Arguments;

use crate::cli::common::{format_time, listing_args, table};

const USAGE: &str = "The wal command lists all wal segments available for a database.

Usage:

	litestream wal [arguments] DB_PATH

	litestream wal [arguments] REPLICA_URL

Arguments:

	-config PATH
	    Specifies the configuration file.
	    Defaults to $LITESTREAM_CONFIG, else /etc/litestream.yml

	-no-expand-env
	    Disables environment variable expansion in configuration file.

	-replica NAME
	    Optional, filter by a specific replica.

	-generation NAME
	    Optional, filter by a specific generation.
";

/// `litestream wal`: the WAL segments of a database or replica; see `USAGE`.
pub fn run(args: Arguments) -> Result<i32> {
    let Some(l) = listing_args(args, "wal", USAGE, true)? else {
        return Ok(0);
    };
    let mut rows = Vec::new();
    let mut found = false;
    for (name, client) in &l.clients {
        for generation in client.generations()? {
            if l.generation.as_deref().is_some_and(|g| g != generation) {
                continue;
            }
            found = true;
            for s in client.wal_segments(&generation)? {
                rows.push((s.created, s.index, s.offset, name.clone(), s));
            }
        }
    }
    if let (Some(g), false) = (&l.generation, found) {
        let names: Vec<&str> = l.clients.iter().map(|(n, _)| n.as_str()).collect();
        bail!(
            "wal: no generation {g} in replica {} (list the generations with `litestream generations`)",
            names.join(", ")
        );
    }
    rows.sort_by_key(|r| (r.0, r.1, r.2));
    let rows: Vec<Vec<String>> = rows
        .into_iter()
        .map(|(created, index, offset, name, s)| {
            vec![
                name,
                s.generation,
                index.to_string(),
                offset.to_string(),
                s.size.to_string(),
                format_time(created),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &[
                "replica",
                "generation",
                "index",
                "offset",
                "size",
                "created"
            ],
            &rows
        )
    );
    Ok(0)
}
