//! Wiring: builds one db thread per database and one replica thread per replica, connects them
//! with bounded channels, starts the metrics server, runs the `-exec` child, waits for a
//! signal (or the child's exit), and shuts everything down in order (final db tick, then every
//! replica uploads what it has, bounded by the shutdown timeout).
//!
//! SIGHUP stops the daemon as SIGTERM does (a final sync, then exit): it is what a closed
//! terminal or a supervisor's stop sends, and the default action would kill us without the
//! final sync. It does not reload the config; nothing here re-reads it.
//!
//! This is the only place that spawns threads, child processes or handles signals. It holds no
//! replication logic of its own.

use std::io;
use std::process::Command;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use crossbeam_channel::{bounded, Receiver, Sender};
use signal_hook::consts::{SIGCHLD, SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::client::{self, ReplicaClient};
use crate::config::{Config, DbConfig};
use crate::db::{default_meta_dir, Db, DbShared, Notice};
use crate::logging;
use crate::metrics::{self, DbMetrics, Registry};
use crate::replica::Replica;
use crate::sync::Semaphore;
use crate::watch;

/// How long the shutdown may take after a stop signal, from the signal to the exit: the
/// final db ticks, every replica's last uploads (each request bounded by the time left) and
/// the abort of uploads cut short.
pub(crate) const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

/// Of `SHUTDOWN_TIMEOUT`, what is kept for the end: aborting the multipart uploads that did
/// not finish, and stopping the metrics server.
const SHUTDOWN_RESERVE: Duration = Duration::from_secs(2);

/// The exit code when the shutdown left changes that no replica holds (`EX_TEMPFAIL` of
/// sysexits.h): they stay in the shadow WAL, and the next start uploads them.
pub const EXIT_UNREPLICATED: i32 = 75;

/// The signals that stop the daemon (and are forwarded to an `-exec` child).
fn is_stop(sig: i32) -> bool {
    sig == SIGINT || sig == SIGTERM || sig == SIGHUP
}

/// Every db's replica clients, in config order; the first that cannot be opened is the error.
fn open_clients(config: &Config) -> Result<Vec<Vec<Arc<dyn ReplicaClient>>>> {
    config
        .dbs
        .iter()
        .map(|db| {
            db.replicas
                .iter()
                .map(|r| {
                    // `client::open` names the replica itself.
                    client::open(r).with_context(|| db.path.display().to_string())
                })
                .collect()
        })
        .collect()
}

/// A replica's stop channel (carrying the shutdown deadline) and thread, which returns
/// whether the replica holds everything at the end.
type ReplicaRuntime = (Sender<Instant>, JoinHandle<bool>);

/// Starts one thread per replica of a db; returns their wake-up senders, for the db thread.
fn start_replicas(
    db_cfg: &DbConfig,
    clients: Vec<Arc<dyn ReplicaClient>>,
    shared: &Arc<DbShared>,
    registry: &Registry,
    snapshots: &Arc<Semaphore>,
) -> Result<(Vec<Sender<Notice>>, Vec<ReplicaRuntime>)> {
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
        let raw = client.clone();
        let keys = Arc::new(crate::encryption::Keys::from_config(
            &r_cfg.name,
            r_cfg.age.as_ref(),
        )?);
        let replica = Replica::new(
            slot,
            r_cfg.clone(),
            client::counting::wrap(client, registry),
            keys,
            shared.clone(),
            snapshots.clone(),
        );
        let (db_path, name) = (db_cfg.path.clone(), r_cfg.name.clone());
        let thread = spawn(format!("replica-{}", r_cfg.name), move || {
            clean_up_stale_uploads(&*raw, &db_path, &name);
            replica.run(nrx, srx)
        })?;
        notices.push(ntx);
        replicas.push((stx, thread));
    }
    Ok((notices, replicas))
}

/// Aborts what an earlier process left of its uploads; a store that cannot list them only
/// gets a warning (its lifecycle rules are then the way to clean up).
fn clean_up_stale_uploads(client: &dyn ReplicaClient, db: &std::path::Path, name: &str) {
    match client.clean_up_stale_uploads() {
        Ok(0) => {}
        Ok(n) => logging::info(
            "stale multipart uploads aborted",
            &[("db", &db.display()), ("replica", &name), ("count", &n)],
        ),
        Err(err) => logging::warn(
            "cannot clean up stale multipart uploads (a lifecycle rule AbortIncompleteMultipartUpload on the bucket does it instead)",
            &[
                ("db", &db.display()),
                ("replica", &name),
                ("error", &format!("{err:#}")),
            ],
        ),
    }
}

/// The db thread's wake-ups from the WAL watcher; `None` when its WAL cannot be watched, and
/// the db is polled at monitor-interval (a wake channel that never fires keeps its loop from
/// spinning on a disconnected one).
fn wake_channel(
    watcher: &io::Result<watch::WalWatcher>,
    db_cfg: &DbConfig,
) -> Option<Receiver<()>> {
    let (wake_tx, wake_rx): (Sender<()>, Receiver<()>) = bounded(1);
    let watched = match watcher {
        Ok(w) => w.watch(&db_cfg.path, wake_tx),
        Err(err) => Err(io::Error::new(err.kind(), err.to_string())),
    };
    match watched {
        Ok(()) => Some(wake_rx),
        Err(err) => {
            logging::warn(
                "cannot watch the wal file; polling at monitor-interval only",
                &[("db", &db_cfg.path.display()), ("error", &err)],
            );
            None
        }
    }
}

/// Small stacks: a thread per db and per replica must stay cheap for many databases.
const THREAD_STACK: usize = 256 * 1024;

struct DbRuntime {
    stop: Sender<()>,
    thread: JoinHandle<()>,
    replicas: Vec<ReplicaRuntime>,
}

/// A running daemon: every db and replica thread, and the metrics server.
pub(crate) struct Daemon {
    dbs: Vec<DbRuntime>,
    /// Every replica client (unwrapped), for the shutdown's deadline and aborts.
    clients: Vec<Arc<dyn ReplicaClient>>,
    registry: Arc<Registry>,
    server: Option<metrics::Server>,
    watcher: Option<watch::WalWatcher>,
}

impl Daemon {
    /// Opens every replica client, binds the metrics address (when set) and starts every
    /// thread.
    pub(crate) fn start(config: &Config) -> Result<Daemon> {
        limit_allocator_caches();
        let snapshots = Arc::new(Semaphore::new(config.snapshot_concurrency));
        // Every client first, so a bad replica stops start-up before any thread runs.
        let clients = open_clients(config)?;
        let all_clients: Vec<Arc<dyn ReplicaClient>> = clients.iter().flatten().cloned().collect();
        let db_metrics: Vec<Arc<DbMetrics>> = config
            .dbs
            .iter()
            .map(|db| {
                let names: Vec<String> = db.replicas.iter().map(|r| r.name.clone()).collect();
                Arc::new(DbMetrics::new(db.path.display().to_string(), &names))
            })
            .collect();
        let kinds: Vec<&'static str> = clients.iter().flatten().map(|c| c.kind()).collect();
        let registry = Arc::new(Registry::new(db_metrics.clone(), &kinds));
        // Bound before any thread starts: a taken port is a start-up error, not a late one.
        let server = match &config.addr {
            Some(addr) => Some(metrics::Server::start(
                addr,
                registry.clone(),
                config.health_max_lag,
            )?),
            None => None,
        };
        let watcher = watch::WalWatcher::start();
        let mut dbs = Vec::new();
        for ((db_cfg, clients), db_metrics) in config.dbs.iter().zip(clients).zip(db_metrics) {
            let meta = db_cfg
                .meta_path
                .clone()
                .unwrap_or_else(|| default_meta_dir(&db_cfg.path));
            let shared = Arc::new(DbShared::new(
                db_cfg.path.clone(),
                meta,
                db_cfg.replicas.len(),
                db_metrics,
            ));
            let (notices, replicas) =
                start_replicas(db_cfg, clients, &shared, &registry, &snapshots)?;
            let (stop_tx, stop_rx) = bounded(1);
            let wake_rx = wake_channel(&watcher, db_cfg);
            let db = Db::new(db_cfg.clone(), shared, notices);
            let thread = spawn("db".into(), move || db.run(stop_rx, wake_rx))?;
            dbs.push(DbRuntime {
                stop: stop_tx,
                thread,
                replicas,
            });
        }
        Ok(Daemon {
            dbs,
            clients: all_clients,
            registry,
            server,
            watcher: watcher.ok(),
        })
    }

    /// True once every db thread has run its first tick (initialised, or found the db file
    /// missing, or failed and will retry).
    pub(crate) fn first_ticks_done(&self) -> bool {
        self.registry.dbs.iter().all(|d| d.first_tick_done())
    }

    /// Stops every db thread (each runs a final tick), then lets replicas upload what is left;
    /// returns within `timeout` (all but a moment), true when every replica holds everything.
    /// A replica still uploading at the deadline is left behind (the process is about to
    /// exit) and its multipart uploads are aborted. The metrics server answers until the end.
    pub(crate) fn stop(self, timeout: Duration) -> bool {
        let start = Instant::now();
        let deadline = start + timeout.saturating_sub(SHUTDOWN_RESERVE.min(timeout / 4));
        for c in &self.clients {
            c.set_deadline(Some(deadline));
        }
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
        // A replica thread returns by the deadline unless a request or a read ignores it:
        // wait a moment past it, never longer.
        let give_up = deadline + (start + timeout).saturating_duration_since(deadline) / 2;
        while replicas.iter().any(|(_, t)| !t.is_finished()) && Instant::now() < give_up {
            std::thread::sleep(Duration::from_millis(10));
        }
        let mut synced = true;
        let mut abandoned = 0;
        for (_, thread) in replicas {
            if thread.is_finished() {
                synced &= thread.join().unwrap_or(false);
            } else {
                synced = false;
                abandoned += 1;
            }
        }
        if abandoned > 0 {
            logging::error(
                "replica still uploading at the shutdown deadline; its upload is abandoned",
                &[
                    ("replicas", &abandoned),
                    ("timeout", &format!("{timeout:?}")),
                ],
            );
            abort_uploads(&self.clients, start + timeout);
        }
        drop(self.watcher);
        if let Some(server) = self.server {
            server.stop();
        }
        synced
    }
}

/// Aborts every client's uploads in progress, each request bounded by `deadline`.
fn abort_uploads(clients: &[Arc<dyn ReplicaClient>], deadline: Instant) {
    for c in clients {
        c.set_deadline(Some(deadline));
        c.abort_uploads();
    }
}

/// How long the abort of uploads may take when a second signal asks to exit at once.
const ABORT_ON_EXIT: Duration = Duration::from_secs(3);

/// Makes freed buffers go back to the kernel. glibc's defaults suit few threads: every thread
/// may get its own arena (up to 8 per core), and after the first large buffer is freed the
/// mmap threshold rises to its size, so later copy buffers and deflate states come from the
/// arenas and their pages stay resident once freed. With a db thread and a replica thread per
/// database, that kept about 1 MiB per database resident (100 dbs: 92 MiB after their first
/// snapshots, 34 MiB with these settings). Large buffers are now mmapped per operation and
/// unmapped on free, and only the pages touched count. Called before any thread starts.
fn limit_allocator_caches() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const LARGE: libc::c_int = 64 * 1024;
        // SAFETY: mallopt only sets allocator parameters; called before other threads run.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
            libc::mallopt(libc::M_MMAP_THRESHOLD, LARGE);
            libc::mallopt(libc::M_TRIM_THRESHOLD, LARGE);
        }
    }
}

fn spawn<T: Send + 'static>(
    name: String,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<JoinHandle<T>> {
    std::thread::Builder::new()
        .name(name.clone())
        .stack_size(THREAD_STACK)
        .spawn(f)
        .with_context(|| format!("cannot start thread {name}"))
}

/// Runs the daemon until SIGINT, SIGTERM or SIGHUP, or, with `exec` (an argv), until that
/// child exits (signals are forwarded to it). A second signal aborts the uploads in progress
/// and exits at once (1). Returns the exit code: 0, or the child's (128 + signal when a signal
/// killed it), or `EXIT_UNREPLICATED` instead of 0 when the shutdown left changes that no
/// replica holds.
pub(crate) fn run(config: &Config, exec: Option<Vec<String>>) -> Result<i32> {
    let mut signals = Signals::new([SIGINT, SIGTERM, SIGHUP, SIGCHLD])
        .context("cannot install signal handlers")?;
    let daemon = Daemon::start(config)?;
    let code = match exec {
        None => {
            let first = signals.forever().find(|s| is_stop(*s));
            logging::info(
                "signal received, litestream shutting down",
                &[("signal", &first.unwrap_or(0))],
            );
            0
        }
        Some(argv) => match supervise(&daemon, &mut signals, &argv) {
            Ok(code) => code,
            Err(err) => {
                // The child never ran: still stop cleanly (final sync) before reporting.
                let _ = daemon.stop(SHUTDOWN_TIMEOUT);
                return Err(err);
            }
        },
    };
    let handle = signals.handle();
    let clients = daemon.clients.clone();
    std::thread::Builder::new()
        .name("signals".into())
        .stack_size(THREAD_STACK)
        .spawn(move || {
            if signals.forever().any(is_stop) {
                exit_now(&clients);
            }
        })
        .context("cannot start signal thread")?;
    let synced = daemon.stop(SHUTDOWN_TIMEOUT);
    handle.close();
    let code = if !synced && code == 0 {
        logging::error(
            "changes left unreplicated at shutdown; the next start uploads them from the shadow wal",
            &[("exit_code", &EXIT_UNREPLICATED)],
        );
        EXIT_UNREPLICATED
    } else {
        code
    };
    logging::info("litestream shut down", &[("exit_code", &code)]);
    Ok(code)
}

/// The second signal: abort the uploads in progress (briefly), then exit 1.
fn exit_now(clients: &[Arc<dyn ReplicaClient>]) -> ! {
    logging::warn("second signal received, exiting immediately", &[]);
    abort_uploads(clients, Instant::now() + ABORT_ON_EXIT);
    std::process::exit(1);
}

/// `-exec`: starts the child once every db has had its first tick, forwards SIGINT, SIGTERM
/// and SIGHUP to it, and returns its exit code when it ends. Only this thread reaps the child, so a signal
/// is never sent to a pid that was already reaped (and maybe reused).
fn supervise(daemon: &Daemon, signals: &mut Signals, argv: &[String]) -> Result<i32> {
    let Some((prog, args)) = argv.split_first() else {
        anyhow::bail!("-exec: empty command (give the program to run, e.g. -exec \"myapp serve\")");
    };
    // The application should find its db replicated from its first write on.
    while !daemon.first_ticks_done() {
        for sig in signals.pending() {
            if is_stop(sig) {
                logging::info(
                    "signal received before the subprocess started, litestream shutting down",
                    &[("signal", &sig)],
                );
                return Ok(0);
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut child = Command::new(prog).args(args).spawn().with_context(|| {
        format!("-exec: cannot start {prog:?} (check the command and that it is on PATH)")
    })?;
    logging::info(
        "subprocess started",
        &[("cmd", &prog), ("pid", &child.id())],
    );
    let mut forwarded = 0;
    loop {
        if let Some(status) = child
            .try_wait()
            .context("-exec: cannot wait for the subprocess")?
        {
            let code = exit_code(status);
            logging::info(
                "subprocess exited, litestream shutting down",
                &[("exit_code", &code)],
            );
            return Ok(code);
        }
        // SIGCHLD wakes us when the child ends; other signals are forwarded.
        let Some(sig) = signals.forever().next() else {
            // The iterator only ends when closed, which nothing here does; treat as an exit.
            let status = child
                .wait()
                .context("-exec: cannot wait for the subprocess")?;
            return Ok(exit_code(status));
        };
        if is_stop(sig) {
            forwarded += 1;
            if forwarded > 1 {
                // SAFETY: kill on the pid of our own unreaped child.
                unsafe {
                    libc::kill(child.id() as libc::pid_t, sig);
                }
                exit_now(&daemon.clients);
            }
            logging::info(
                "signal received, forwarding to the subprocess",
                &[("signal", &sig), ("pid", &child.id())],
            );
            // SAFETY: as above; the child is not reaped yet (only this loop reaps it).
            unsafe {
                libc::kill(child.id() as libc::pid_t, sig);
            }
        }
    }
}

/// The child's exit code; 128 + N when signal N killed it (as a shell reports it).
fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(sig)) => 128 + sig,
        (None, None) => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes() {
        use std::os::unix::process::ExitStatusExt;
        // Raw wait statuses: exit code in the high byte, signal number in the low bits.
        assert_eq!(exit_code(std::process::ExitStatus::from_raw(7 << 8)), 7);
        assert_eq!(exit_code(std::process::ExitStatus::from_raw(0)), 0);
        assert_eq!(
            exit_code(std::process::ExitStatus::from_raw(libc::SIGTERM)),
            143
        );
        assert_eq!(
            exit_code(std::process::ExitStatus::from_raw(libc::SIGKILL)),
            137
        );
    }
}
