//! `litestream generations`: the generations of each replica of a db, with their time bounds.

use std::time::SystemTime;

use anyhow::Result;
use pico_args::Arguments;

use crate::cli::common::{format_time, listing_args, table};
use crate::config::go_duration;
use crate::restore::GenerationListing;

const USAGE: &str = "The generations command lists all generations for a database or replica.
It also lists stats about their lag behind the primary database and the time range they cover.

Usage:

	litestream generations [arguments] DB_PATH

	litestream generations [arguments] REPLICA_URL

Arguments:

	-config PATH
	    Specifies the configuration file.
	    Defaults to $LITESTREAM_CONFIG, else /etc/litestream.yml

	-no-expand-env
	    Disables environment variable expansion in configuration file.

	-replica NAME
	    Optional, filters by replica.
";

/// `litestream generations`: each replica's generations with their time span; see `USAGE`.
pub fn run(args: Arguments) -> Result<i32> {
    let Some(l) = listing_args(args, "generations", USAGE, false)? else {
        return Ok(0);
    };
    let now = SystemTime::now();
    let mut rows: Vec<(SystemTime, Vec<String>)> = Vec::new();
    for (name, client) in &l.clients {
        for generation in client.generations()? {
            let g = GenerationListing {
                replica: 0,
                snapshots: client.snapshots(&generation)?,
                segments: client.wal_segments(&generation)?,
                generation,
            };
            let Some((start, end)) = g.bounds() else {
                continue;
            };
            let lag = now.duration_since(end).unwrap_or_default();
            rows.push((
                start,
                vec![
                    name.clone(),
                    g.generation,
                    go_duration(lag),
                    format_time(start),
                    format_time(end),
                ],
            ));
        }
    }
    rows.sort_by_key(|(start, _)| *start);
    let rows: Vec<Vec<String>> = rows.into_iter().map(|(_, r)| r).collect();
    print!(
        "{}",
        table(&["name", "generation", "lag", "start", "end"], &rows)
    );
    Ok(0)
}
