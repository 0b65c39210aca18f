//! Wiring: builds one db thread per database and one replica thread per replica, connects them
//! with bounded channels, waits for a signal, and shuts everything down in order (final db
//! tick, then every replica uploads what it has, bounded by the shutdown timeout).
//!
//! This is the only place that spawns threads or handles signals. It holds no replication
//! logic of its own.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use crossbeam_channel::{bounded, Receiver, Sender};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::client;
use crate::config::Config;
use crate::db::{default_meta_dir, Db, DbShared};
use crate::logging;
use crate::replica::{Replica, Semaphore};
use crate::watch;

/// How long replicas may keep uploading after a stop signal.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

/// Small stacks: a thread per db and per replica must stay cheap for many databases.
const THREAD_STACK: usize = 256 * 1024;

struct DbRuntime {
    stop: Sender<()>,
    thread: JoinHandle<()>,
    replicas: Vec<(Sender<Instant>, JoinHandle<()>)>,
}

/// A running daemon: every db and replica thread.
pub struct Daemon {
    dbs: Vec<DbRuntime>,
}

impl Daemon {
    /// Opens every replica client and starts every thread.
    pub fn start(config: &Config) -> Result<Daemon> {
        let snapshots = Arc::new(Semaphore::new(config.snapshot_concurrency));
        // Build every client first, so a bad replica stops start-up before any thread runs.
        let mut clients = Vec::new();
        for db in &config.dbs {
            let mut list = Vec::new();
            for r in &db.replicas {
                let c = client::open(r)
                    .with_context(|| format!("{}: replica {}", db.path.display(), r.name))?;
                list.push(c);
            }
            clients.push(list);
        }
        let mut dbs = Vec::new();
        for (db_cfg, clients) in config.dbs.iter().zip(clients) {
            let meta = db_cfg
                .meta_path
                .clone()
                .unwrap_or_else(|| default_meta_dir(&db_cfg.path));
            let shared = Arc::new(DbShared::new(
                db_cfg.path.clone(),
                meta,
                db_cfg.replicas.len(),
            ));
            let mut notices = Vec::new();
            let mut replicas = Vec::new();
            for (slot, (r_cfg, client)) in db_cfg.replicas.iter().zip(clients).enumerate() {
                logging::info(
                    "replicating to",
                    &[
                        ("db", &db_cfg.path.display()),
                        ("name", &r_cfg.name),
                        ("type", &client.kind()),
                        ("target", &client.describe()),
                        ("sync-interval", &format!("{:?}", r_cfg.sync_interval)),
                    ],
                );
                // Capacity 1: one pending wake-up says all there is to say.
                let (ntx, nrx) = bounded(1);
                let (stx, srx) = bounded(1);
                let replica = Replica::new(
                    slot,
                    r_cfg.clone(),
                    client,
                    shared.clone(),
                    snapshots.clone(),
                );
                let thread = spawn(format!("replica-{}", r_cfg.name), move || {
                    replica.run(nrx, srx)
                })?;
                notices.push(ntx);
                replicas.push((stx, thread));
            }
            let (stop_tx, stop_rx) = bounded(1);
            let (wake_tx, wake_rx): (Sender<()>, Receiver<()>) = bounded(1);
            if let Err(err) = watch::watch_wal(&db_cfg.path, wake_tx) {
                logging::warn(
                    "cannot watch the wal file; polling at monitor-interval only",
                    &[("db", &db_cfg.path.display()), ("error", &err)],
                );
            }
            let db = Db::new(db_cfg.clone(), shared, notices);
            let thread = spawn("db".into(), move || db.run(stop_rx, wake_rx))?;
            dbs.push(DbRuntime {
                stop: stop_tx,
                thread,
                replicas,
            });
        }
        Ok(Daemon { dbs })
    }

    /// Stops every db thread (each runs a final tick), then lets replicas upload what is left
    /// until `timeout`.
    pub fn stop(self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        for db in &self.dbs {
            let _ = db.stop.send(());
        }
        let mut replicas = Vec::new();
        for db in self.dbs {
            let _ = db.thread.join();
            replicas.extend(db.replicas);
        }
        for (stop, _) in &replicas {
            let _ = stop.send(deadline);
        }
        for (_, thread) in replicas {
            let _ = thread.join();
        }
    }
}

fn spawn(name: String, f: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(name.clone())
        .stack_size(THREAD_STACK)
        .spawn(f)
        .with_context(|| format!("cannot start thread {name}"))
}

/// Runs the daemon until SIGINT or SIGTERM; a second signal exits at once.
pub fn run(config: &Config) -> Result<i32> {
    let mut signals = Signals::new([SIGINT, SIGTERM]).context("cannot install signal handlers")?;
    let daemon = Daemon::start(config)?;
    let first = signals.forever().next();
    logging::info(
        "signal received, litestream shutting down",
        &[("signal", &first.unwrap_or(0))],
    );
    let handle = signals.handle();
    std::thread::Builder::new()
        .name("signals".into())
        .stack_size(THREAD_STACK)
        .spawn(move || {
            if signals.forever().next().is_some() {
                logging::warn("second signal received, exiting immediately", &[]);
                std::process::exit(1);
            }
        })
        .context("cannot start signal thread")?;
    daemon.stop(SHUTDOWN_TIMEOUT);
    handle.close();
    logging::info("litestream shut down", &[]);
    Ok(0)
}
