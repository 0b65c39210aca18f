//! litestream: streaming replication for SQLite, as a library behind the `litestream` binary.
//!
//! Pure modules (`wal`, `layout`, `position`, `config`, `backoff`, and `db::policy` and
//! `db::verdict`) hold the formats and rules; thin edges (`client::*`, `sqlite`, `files`) touch
//! stores, SQLite and files; `codec` streams compression (with its own worker threads) and
//! `encryption` age encryption over it; `db` and `replica` are the two kinds of threads;
//! `daemon` wires them; `follow` keeps a restored copy following its replica (`restore -f`);
//! `cli` holds one file per command.
//! See ARCHITECTURE.md for the code map.

#![warn(missing_docs)]

pub mod aws;
pub mod backoff;
pub mod cli;
pub mod client;
pub mod codec;
pub mod config;
pub mod daemon;
pub mod db;
pub mod encryption;
pub mod files;
pub mod follow;
pub mod layout;
pub mod logging;
pub mod metrics;
pub mod position;
pub mod replica;
pub mod restore;
pub mod sqlite;
pub mod sync;
pub mod validate;
pub mod wal;
pub mod watch;
