//! `litestream replicate`: run the daemon for every db in the config, or for one db given on
//! the command line with its replica URLs.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use pico_args::Arguments;

use crate::cli::{flag, opt_value, positionals, wants_help};
use crate::config::{default_config_path, Config, DbConfig, ReplicaConfig};
use crate::{daemon, logging};

const USAGE: &str = "The replicate command starts a server to monitor & replicate databases.
You can specify your database & replicas in a configuration file or you can
replicate a single database file by specifying its path and its replicas in the
command line arguments.

Usage:

	litestream replicate [arguments]

	litestream replicate [arguments] DB_PATH REPLICA_URL [REPLICA_URL...]

Arguments:

	-config PATH
	    Specifies the configuration file.
	    Defaults to $LITESTREAM_CONFIG, else /etc/litestream.yml

	-exec CMD
	    Executes a subcommand. Litestream will exit when the child
	    process exits. Useful for simple process management.

	-no-expand-env
	    Disables environment variable expansion in configuration file.
";

pub fn run(mut args: Arguments) -> Result<i32> {
    if wants_help(&mut args) {
        print!("{USAGE}");
        return Ok(0);
    }
    let config_flag = opt_value(&mut args, ["-config", "--config"])?;
    let exec = opt_value(&mut args, ["-exec", "--exec"])?;
    let no_expand_env = flag(&mut args, ["-no-expand-env", "--no-expand-env"]);
    let rest = positionals(args, "replicate")?;

    let config = if rest.is_empty() {
        let path = config_flag
            .map(PathBuf::from)
            .unwrap_or_else(default_config_path);
        let config = Config::load(&path, !no_expand_env)?;
        config.require_dbs()?;
        config
    } else {
        if config_flag.is_some() {
            bail!("replicate: cannot specify -config with a database path and replica URLs");
        }
        if rest.len() < 2 {
            bail!("replicate: a database path needs at least one replica URL (litestream replicate DB_PATH REPLICA_URL)");
        }
        let cwd = std::env::current_dir().context("cannot read the working directory")?;
        let db_path = cwd.join(&rest[0]);
        let mut db = DbConfig::with_defaults(db_path);
        for url in &rest[1..] {
            let r = ReplicaConfig::from_url(url, &cwd)
                .map_err(|e| anyhow::anyhow!("replicate: {url}: {e}"))?;
            db.replicas.push(r);
        }
        dedupe_names(&mut db.replicas);
        Config::with_dbs(vec![db])
    };
    if exec.is_some() || config.exec.is_some() {
        bail!("replicate: -exec is not supported by this build yet");
    }
    logging::init(
        config.logging.level,
        config.logging.json,
        config.logging.stderr,
    );
    check_databases(&config)?;
    logging::info(
        "litestream",
        &[("version", &format!("v{}", env!("CARGO_PKG_VERSION")))],
    );
    daemon::run(&config)
}

/// Ad-hoc replicas all default to their type as name; number the repeats so each is unique.
fn dedupe_names(replicas: &mut [ReplicaConfig]) {
    for i in 1..replicas.len() {
        if replicas[..i].iter().any(|r| r.name == replicas[i].name) {
            replicas[i].name = format!("{}{}", replicas[i].name, i + 1);
        }
    }
}

/// A db may not exist yet (we wait for it), but its directory must.
fn check_databases(config: &Config) -> Result<()> {
    for db in &config.dbs {
        let dir = db
            .path
            .parent()
            .unwrap_or_else(|| std::path::Path::new("/"));
        if !dir.is_dir() {
            bail!(
                "database directory does not exist: {} (create it, or fix the path of {} in the config)",
                dir.display(),
                db.path.display()
            );
        }
    }
    Ok(())
}
