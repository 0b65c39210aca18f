//! `litestream restore`: rebuild a database from a replica (SPEC §6), latest or point in time.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, bail, Result};
use pico_args::Arguments;

use crate::cli::common::{format_time, open_clients, parse_timestamp, resolve_target};
use crate::cli::{flag, opt_value, positionals, wants_help};
use crate::config::LoggingConfig;
use crate::encryption::Keys;
use crate::metrics::{FollowMetrics, Registry};
use crate::position::is_generation;
use crate::restore::{self, Options, Source};
use crate::{follow, layout, logging};

const USAGE: &str = "The restore command recovers a database from a previous snapshot and WAL.

Usage:

	litestream restore [arguments] DB_PATH

	litestream restore [arguments] REPLICA_URL

Arguments:

	-config PATH
	    Specifies the configuration file.
	    Defaults to $LITESTREAM_CONFIG, else /etc/litestream.yml

	-no-expand-env
	    Disables environment variable expansion in configuration file.

	-replica NAME
	    Restore from a specific replica.
	    Defaults to the replica with the latest data.

	-generation NAME
	    Restore from a specific generation.
	    Defaults to the generation with the latest data.

	-index NUM
	    Restore up to a specific hex-encoded WAL index (inclusive).
	    Requires -generation. Defaults to the latest index.

	-o PATH
	    Output path of the restored database.
	    Defaults to the original DB path; required with a replica URL.

	-if-db-not-exists
	    Returns exit code of 0 if the database already exists.

	-if-replica-exists
	    Returns exit code of 0 if no backups are found.

	-parallelism NUM
	    Determines the number of WAL indexes downloaded in parallel.
	    Defaults to 8.

	-timestamp TIMESTAMP
	    Restore to a specific point-in-time (RFC 3339, e.g. 2020-01-01T00:00:00Z).
	    Defaults to the latest point in time.

	-f
	    Follow mode. After restoring, keep applying new WAL segments as they
	    appear on the replica, until SIGINT/SIGTERM. The database stays readable
	    (open it read-only); each replicated transaction appears whole.
	    Restarted on an output it followed before, it resumes from there.
	    Cannot be used with -index or -timestamp.

	-follow-interval DURATION
	    Polling interval for follow mode.
	    Defaults to 1s.

	-follow-list-interval DURATION
	    How long follow mode stays idle before it lists the replica to look
	    for a new generation (whose name only a listing can find); 0 never.
	    Defaults to 10m.

Examples:

	# Restore latest replica for database to original location.
	$ litestream restore /path/to/db

	# Restore replica for database to a given point in time.
	$ litestream restore -timestamp 2020-01-01T00:00:00Z /path/to/db

	# Restore latest replica for database to new /tmp directory
	$ litestream restore -o /tmp/db /path/to/db

	# Restore from a replica URL.
	$ litestream restore -o /tmp/db file:///backups/db

	# Keep a read replica following a replica.
	$ litestream restore -f -o /tmp/read-replica.db s3://mybucket/db
";

/// The restore command's flags, checked.
struct Flags {
    config: Option<String>,
    no_expand_env: bool,
    replica: Option<String>,
    generation: Option<String>,
    index: Option<u32>,
    output: Option<String>,
    if_db_not_exists: bool,
    if_replica_exists: bool,
    parallelism: usize,
    timestamp: Option<std::time::SystemTime>,
    /// `-f`: follow the replica after the restore, every `follow_interval`.
    follow: bool,
    follow_interval: std::time::Duration,
    /// `-follow-list-interval`: idle time between listings; zero: never.
    follow_list_interval: std::time::Duration,
    /// The database path or replica URL.
    target: String,
}

/// `litestream restore`: see `USAGE`.
pub fn run(mut args: Arguments) -> Result<i32> {
    if wants_help(&mut args) {
        print!("{USAGE}");
        return Ok(0);
    }
    let flags = parse_flags(args)?;
    let target = resolve_target(&flags.target, flags.config.as_deref(), !flags.no_expand_env)?;
    let logging_cfg = target
        .config
        .as_ref()
        .map(|c| c.logging.clone())
        .unwrap_or_default();
    init_logging(&logging_cfg);

    let out = match (&flags.output, &target.db) {
        (Some(o), _) if o.is_empty() => {
            bail!("restore: -o needs a path for the restored database, got an empty one")
        }
        (Some(o), _) if o.ends_with('/') => bail!(
            "restore: -o {o:?} names a directory; give the path of the database file to create in it"
        ),
        (Some(o), _) => absolute(o)?,
        (None, Some(db)) => db.path.clone(),
        (None, None) => bail!("restore: -o PATH is required when restoring from a replica URL"),
    };
    if let Some(name) = &flags.replica {
        if !target.replicas.iter().any(|r| &r.name == name) {
            let names: Vec<&str> = target.replicas.iter().map(|r| r.name.as_str()).collect();
            bail!(
                "restore: replica not found: {name} (replicas: {})",
                names.join(", ")
            );
        }
    }
    if flags.follow {
        follow::apply::check_sqlite().map_err(|e| anyhow!("restore -f: {e:#}"))?;
    }
    // Follow mode resumes an output it followed before (its position file is beside it).
    let resume = flags.follow
        && std::fs::symlink_metadata(&out).is_ok()
        && std::fs::symlink_metadata(follow::position_path(&out)).is_ok();
    // An existing output is never touched, whatever else is wrong.
    if !resume && std::fs::symlink_metadata(&out).is_ok() && flags.if_db_not_exists {
        logging::info(
            "database already exists, skipping",
            &[("path", &out.display())],
        );
        return Ok(0);
    }
    if !resume {
        restore::check_output(&out)?;
    }

    // A follower with `addr` in its config serves its own metrics: position, lag and the
    // store operations it sends (bound now, so a taken port is a start-up error).
    let served = match (&target.config, flags.follow) {
        (Some(cfg), true) => cfg
            .addr
            .as_ref()
            .map(|addr| (addr.clone(), cfg.health_max_lag)),
        _ => None,
    };
    // Each replica's `age:` keys (none for one written in the clear).
    let opened: Vec<(String, _, Arc<Keys>)> = open_clients(&target.replicas)?
        .into_iter()
        .zip(&target.replicas)
        .map(|((name, client), cfg)| {
            let keys = Arc::new(Keys::from_config(&name, cfg.age.as_ref())?);
            Ok((name, client, keys))
        })
        .collect::<Result<_>>()?;
    let follow_metrics = served
        .as_ref()
        .map(|_| Arc::new(FollowMetrics::new(out.display().to_string())));
    let mut server = None;
    let sources: Vec<Source> = match (&served, &follow_metrics) {
        (Some((addr, max_lag)), Some(fm)) => {
            let kinds: Vec<&'static str> = opened.iter().map(|(_, c, _)| c.kind()).collect();
            let registry = Arc::new(Registry::new(Vec::new(), &kinds).with_follow(fm.clone()));
            server = Some(crate::metrics::Server::start(
                addr,
                registry.clone(),
                *max_lag,
            )?);
            opened
                .into_iter()
                .map(|(name, client, keys)| Source {
                    name,
                    client: crate::client::counting::wrap(client, &registry),
                    keys,
                })
                .collect()
        }
        _ => opened
            .into_iter()
            .map(|(name, client, keys)| Source { name, client, keys })
            .collect(),
    };
    let result = restore_and_follow(&flags, &target, &out, resume, &sources, follow_metrics);
    if let Some(s) = server {
        s.stop();
    }
    result
}

/// The restore (unless a follower resumes), then, with `-f`, the follow.
fn restore_and_follow(
    flags: &Flags,
    target: &crate::cli::common::Target,
    out: &Path,
    resume: bool,
    sources: &[Source],
    metrics: Option<Arc<FollowMetrics>>,
) -> Result<i32> {
    let out = out.to_path_buf();
    if resume {
        return follow_resumed(flags, sources, &out, target_mode(target), metrics);
    }
    let opts = Options {
        replica: flags.replica.clone(),
        generation: flags.generation.clone(),
        index: flags.index,
        timestamp: flags.timestamp,
        parallelism: flags.parallelism,
    };
    let listings = restore::list(sources, &opts)?;
    let Some(plan) = restore::choose(&listings, &opts)? else {
        if flags.if_replica_exists {
            logging::info("no backups found, skipping", &[]);
            return Ok(0);
        }
        bail!(
            "restore: no matching backups found: {}",
            no_match(&listings, &opts, sources, &flags.target)
        );
    };
    let source = &sources[plan.replica];
    log_plan(&source.name, &plan, &out);
    // The restored copy is as private as the original db (when it is still there), else 0600.
    let mode = target_mode(target);
    // From here on the restore creates files: a signal removes them before the exit.
    restore::signal_cleanup::install()?;
    if flags.follow {
        // A first signal lets the restore finish and the follower record its position (then
        // it stops at once); only a second one aborts the restore. Otherwise a signal just
        // after the output appeared would leave it without its position file, and the next
        // `restore -f` would refuse it as someone else's.
        restore::signal_cleanup::graceful();
    }
    let restored = restore::apply(&source.client, &source.keys, &plan, &out, opts.parallelism, mode).map_err(|e| {
        // Which backup failed, and where to look for an older one that may be sound.
        let hint = if opts.generation.is_none() && listings.len() > 1 {
            format!(
                "; an older generation may restore: list them with `litestream generations {}` and pass one with -generation",
                flags.target
            )
        } else {
            String::new()
        };
        anyhow!(
            "restore: generation {} up to index {:08x} from replica {}: {e:#}{hint}",
            plan.generation,
            plan.last_index(),
            source.name
        )
    })?;
    logging::info(
        "restore complete",
        &[
            ("output", &out.display()),
            ("generation", &plan.generation),
            ("index", &format!("{:08x}", plan.last_index())),
        ],
    );
    if !flags.follow {
        return Ok(0);
    }
    let settings = follow::Settings {
        source: Source {
            name: source.name.clone(),
            client: source.client.clone(),
            keys: source.keys.clone(),
        },
        opts,
        interval: flags.follow_interval,
        list_interval: flags.follow_list_interval,
        mode: mode.unwrap_or(0o600),
        metrics,
    };
    let mut follower =
        follow::Follower::after_restore(settings, &out, &restored, plan.snapshot.compression)?;
    follower
        .run(&restore::signal_cleanup::stop_requested)
        .map_err(|e| anyhow!("restore -f: {e:#}"))?;
    Ok(0)
}

/// `restore -f` on an output it followed before: check its position file and go on.
fn follow_resumed(
    flags: &Flags,
    sources: &[Source],
    out: &Path,
    mode: Option<u32>,
    metrics: Option<Arc<FollowMetrics>>,
) -> Result<i32> {
    let source = match &flags.replica {
        Some(name) => sources.iter().find(|s| &s.name == name),
        None if sources.len() == 1 => sources.first(),
        None => bail!(
            "restore -f: {} is followed from one replica; name it with -replica ({})",
            out.display(),
            sources
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
    .ok_or_else(|| anyhow!("restore -f: no replica to follow"))?;
    let mode = mode.or_else(|| {
        std::fs::metadata(out)
            .ok()
            .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()))
    });
    restore::signal_cleanup::install()?;
    restore::signal_cleanup::graceful();
    let settings = follow::Settings {
        source: Source {
            name: source.name.clone(),
            client: source.client.clone(),
            keys: source.keys.clone(),
        },
        opts: Options {
            replica: Some(source.name.clone()),
            generation: flags.generation.clone(),
            index: None,
            timestamp: None,
            parallelism: flags.parallelism,
        },
        interval: flags.follow_interval,
        list_interval: flags.follow_list_interval,
        mode: mode.unwrap_or(0o600) & 0o7777,
        metrics,
    };
    let mut follower =
        follow::Follower::resume(settings, out).map_err(|e| anyhow!("restore -f: {e:#}"))?;
    follower
        .run(&restore::signal_cleanup::stop_requested)
        .map_err(|e| anyhow!("restore -f: {e:#}"))?;
    Ok(0)
}

/// The original db's mode, when the target names a db that is still there.
fn target_mode(target: &crate::cli::common::Target) -> Option<u32> {
    target
        .db
        .as_ref()
        .and_then(|db| std::fs::metadata(&db.path).ok())
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()))
}

/// Why nothing matched: no generation at all, not the one asked for, or no snapshot.
fn no_match(
    listings: &[restore::GenerationListing],
    opts: &Options,
    sources: &[Source],
    target: &str,
) -> String {
    let replicas: Vec<&str> = sources
        .iter()
        .filter(|s| opts.replica.as_deref().is_none_or(|r| r == s.name))
        .map(|s| s.name.as_str())
        .collect();
    let replicas = replicas.join(", ");
    if let Some(g) = &opts.generation {
        if listings.is_empty() {
            return format!(
                "no generation {g} in replica {replicas} (list them with `litestream generations {target}`)"
            );
        }
    }
    if listings.is_empty() {
        return format!("replica {replicas} holds no generation");
    }
    if listings.iter().all(|l| l.snapshots.is_empty()) {
        let gens: Vec<&str> = listings.iter().map(|l| l.generation.as_str()).collect();
        return format!(
            "no snapshot in generation {} of replica {replicas}: WAL segments alone cannot be restored (the replica is incomplete; a running daemon uploads a snapshot first)",
            gens.join(", ")
        );
    }
    match (opts.index, opts.timestamp) {
        (Some(i), _) => format!(
            "no snapshot at or before index {i:08x} in generation {} (list them with `litestream snapshots {target}`)",
            opts.generation.as_deref().unwrap_or("?")
        ),
        (_, Some(t)) => format!(
            "nothing at or before {} in replica {replicas} (list the snapshots with `litestream snapshots {target}`)",
            format_time(t)
        ),
        _ => format!("no usable snapshot in replica {replicas}"),
    }
}

/// The `restoring` log line: what will be restored from where.
fn log_plan(replica: &str, plan: &restore::Plan, out: &std::path::Path) {
    logging::info(
        "restoring",
        &[
            ("replica", &replica),
            ("generation", &plan.generation),
            (
                "snapshot",
                &layout::snapshot_name(plan.snapshot.index, plan.snapshot.compression),
            ),
            ("snapshot_created", &format_time(plan.snapshot.created)),
            ("last_index", &format!("{:08x}", plan.last_index())),
            ("output", &out.display()),
        ],
    );
}

/// Reads and checks the flags; every problem is one line naming the flag.
fn parse_flags(mut args: Arguments) -> Result<Flags> {
    let config_flag = opt_value(&mut args, ["-config", "--config"])?;
    let no_expand_env = flag(&mut args, ["-no-expand-env", "--no-expand-env"]);
    let replica = opt_value(&mut args, ["-replica", "--replica"])?;
    let generation = opt_value(&mut args, ["-generation", "--generation"])?;
    let index = opt_value(&mut args, ["-index", "--index"])?;
    let output = opt_value(&mut args, ["-o", "--o"])?;
    let if_db_not_exists = flag(&mut args, ["-if-db-not-exists", "--if-db-not-exists"]);
    let if_replica_exists = flag(&mut args, ["-if-replica-exists", "--if-replica-exists"]);
    let parallelism = opt_value(&mut args, ["-parallelism", "--parallelism"])?;
    let timestamp = opt_value(&mut args, ["-timestamp", "--timestamp"])?;
    let follow = flag(&mut args, ["-f", "--f"]);
    let follow_interval = opt_value(&mut args, ["-follow-interval", "--follow-interval"])?;
    let follow_list_interval = opt_value(
        &mut args,
        ["-follow-list-interval", "--follow-list-interval"],
    )?;
    let rest = positionals(args, "restore")?;

    let arg = match rest.as_slice() {
        [one] => one.as_str(),
        [] => bail!(
            "restore: a database path or replica URL is required (see `litestream restore -h`)"
        ),
        _ => bail!("restore: too many arguments; give one database path or replica URL"),
    };
    if let Some(g) = &generation {
        if !is_generation(g) {
            bail!(
                "restore: -generation {g:?} is not a generation id (16 lowercase hex characters)"
            );
        }
    }
    let index = match index {
        None => None,
        Some(s) => {
            let v = u32::from_str_radix(s.trim_start_matches("0x"), 16).map_err(|_| {
                anyhow!("restore: -index {s:?} is not a hex WAL index (e.g. 0000000a)")
            })?;
            Some(v)
        }
    };
    if index.is_some() && generation.is_none() {
        bail!("restore: -index requires -generation (list them with `litestream generations`)");
    }
    let timestamp = timestamp
        .map(|t| parse_timestamp(&t).map_err(|e| anyhow!("restore: -timestamp: {e}")))
        .transpose()?;
    if index.is_some() && timestamp.is_some() {
        bail!("restore: cannot use -index and -timestamp together; choose one");
    }
    if follow && index.is_some() {
        bail!("restore: -f follows the replica's latest state and cannot be used with -index; drop one of them");
    }
    if follow && timestamp.is_some() {
        bail!("restore: -f follows the replica's latest state and cannot be used with -timestamp; drop one of them");
    }
    if follow_list_interval.is_some() && !follow {
        bail!("restore: -follow-list-interval needs -f");
    }
    let follow_list_interval = match follow_list_interval {
        None => std::time::Duration::from_secs(600),
        Some(s) => match crate::config::parse_duration(&s) {
            Ok(d) => d,
            _ => bail!(
                "restore: -follow-list-interval {s:?} must be a duration (e.g. 10m, or 0 for never)"
            ),
        },
    };
    if follow_interval.is_some() && !follow {
        bail!("restore: -follow-interval needs -f");
    }
    let follow_interval = match follow_interval {
        None => std::time::Duration::from_secs(1),
        Some(s) => match crate::config::parse_duration(&s) {
            Ok(d) if !d.is_zero() => d,
            _ => bail!(
                "restore: -follow-interval {s:?} must be a positive duration (e.g. 1s, 500ms)"
            ),
        },
    };
    let parallelism = match parallelism {
        None => 8,
        Some(s) => match s.parse::<usize>() {
            Ok(n) if (1..=1024).contains(&n) => n,
            _ => bail!("restore: -parallelism {s:?} must be a number from 1 to 1024"),
        },
    };

    Ok(Flags {
        config: config_flag,
        no_expand_env,
        replica,
        generation,
        index,
        output,
        if_db_not_exists,
        if_replica_exists,
        parallelism,
        timestamp,
        follow,
        follow_interval,
        follow_list_interval,
        target: arg.to_string(),
    })
}

/// Restore's progress goes to stderr whatever `logging.stderr` says: stdout is for what a
/// command outputs, and a restore outputs a file (a script piping stdout gets nothing
/// mixed in). The error line, when there is one, comes last.
fn init_logging(cfg: &LoggingConfig) {
    logging::init(cfg.level, cfg.json, true);
}

fn absolute(p: &str) -> Result<PathBuf> {
    let p = PathBuf::from(p);
    if p.is_absolute() {
        return Ok(p);
    }
    Ok(std::env::current_dir()
        .map_err(|e| anyhow!("cannot read the working directory: {e}"))?
        .join(p))
}
