//! `litestream snapshots`: every snapshot of each replica of a db.

use anyhow::Result;
use pico_args::Arguments;

use crate::cli::common::{format_time, listing_args, table};

const USAGE: &str = "The snapshots command lists all snapshots available for a database or replica.

Usage:

	litestream snapshots [arguments] DB_PATH

	litestream snapshots [arguments] REPLICA_URL

Arguments:

	-config PATH
	    Specifies the configuration file.
	    Defaults to $LITESTREAM_CONFIG, else /etc/litestream.yml

	-no-expand-env
	    Disables environment variable expansion in configuration file.

	-replica NAME
	    Optional, filter by a specific replica.
";

/// `litestream snapshots`: the snapshots of a database or replica; see `USAGE`.
pub fn run(args: Arguments) -> Result<i32> {
    let Some(l) = listing_args(args, "snapshots", USAGE, false)? else {
        return Ok(0);
    };
    let mut rows = Vec::new();
    for (name, client) in &l.clients {
        for generation in client.generations()? {
            for s in client.snapshots(&generation)? {
                rows.push((s.created, s.index, name.clone(), s));
            }
        }
    }
    rows.sort_by_key(|r| (r.0, r.1));
    let rows: Vec<Vec<String>> = rows
        .into_iter()
        .map(|(created, index, name, s)| {
            vec![
                name,
                s.generation,
                index.to_string(),
                s.size.to_string(),
                format_time(created),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &["replica", "generation", "index", "size", "created"],
            &rows
        )
    );
    Ok(0)
}
