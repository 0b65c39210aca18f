//! What several commands share: loading the config, turning a `DB_PATH | REPLICA_URL`
//! argument into replicas, and RFC 3339 times.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, bail, Context, Result};

use crate::client::{self, ReplicaClient};
use crate::config::{
    default_config_path, is_url, redact_url, Config, DbConfig, ReplicaConfig, ReplicaTarget,
};

/// `-config` or the default path, parsed and validated.
pub fn load_config(config_flag: Option<&str>, expand_env: bool) -> Result<Config> {
    let path = config_flag
        .map(PathBuf::from)
        .unwrap_or_else(default_config_path);
    Config::load(&path, expand_env)
}

/// What a command's positional argument names.
pub struct Target {
    /// The configured db, when the argument was a db path.
    pub db: Option<DbConfig>,
    /// The replicas to read: the db's, or the one the URL names.
    pub replicas: Vec<ReplicaConfig>,
    /// The config the db came from (logging settings), if one was read.
    pub config: Option<Config>,
}

/// Resolves `DB_PATH | REPLICA_URL`. A db path must be in the config ("database not found in
/// config: PATH"); a plain directory that is not a configured db but holds a replica tree is
/// taken as a file replica, so `restore -o out.db /backups/app` works without a config.
pub fn resolve_target(arg: &str, config_flag: Option<&str>, expand_env: bool) -> Result<Target> {
    let cwd = std::env::current_dir().context("cannot read the working directory")?;
    if is_url(arg) {
        let replica =
            ReplicaConfig::from_url(arg, &cwd).map_err(|e| anyhow!("{}: {e}", redact_url(arg)))?;
        return Ok(Target {
            db: None,
            replicas: vec![replica],
            config: None,
        });
    }
    let path = absolute(&cwd, arg);
    let as_replica_dir = || -> Option<Target> {
        if path.join(crate::layout::GENERATIONS_DIR).is_dir() {
            let replica = ReplicaConfig::with_defaults(ReplicaTarget::File { path: path.clone() });
            Some(Target {
                db: None,
                replicas: vec![replica],
                config: None,
            })
        } else {
            None
        }
    };
    let config = match load_config(config_flag, expand_env) {
        Ok(c) => c,
        Err(e) => {
            // Without -config, a replica directory needs no config at all.
            if config_flag.is_none() {
                if let Some(t) = as_replica_dir() {
                    return Ok(t);
                }
                let default = default_config_path();
                if std::fs::symlink_metadata(&default).is_err() {
                    bail!(
                        "{} is not a replica URL or replica directory, and no config names it: {} does not exist (pass -config PATH naming this db, or a replica URL such as file:///backups/app or s3://bucket/path)",
                        path.display(),
                        default.display()
                    );
                }
            }
            return Err(e);
        }
    };
    match config.dbs.iter().find(|db| db.path == path) {
        Some(db) => Ok(Target {
            db: Some(db.clone()),
            replicas: db.replicas.clone(),
            config: Some(config.clone()),
        }),
        None => match as_replica_dir() {
            Some(mut t) => {
                t.config = Some(config);
                Ok(t)
            }
            None => bail!("database not found in config: {}", path.display()),
        },
    }
}

fn absolute(cwd: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    let joined = if p.is_absolute() {
        p.to_path_buf()
    } else {
        cwd.join(p)
    };
    // Lexical clean-up only: the db may not exist, and symlinks must match the config as given.
    let mut out = PathBuf::new();
    for c in joined.components() {
        match c {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// Opens a client for each replica, named.
pub fn open_clients(replicas: &[ReplicaConfig]) -> Result<Vec<(String, Arc<dyn ReplicaClient>)>> {
    replicas
        .iter()
        .map(|r| Ok((r.name.clone(), client::open(r)?)))
        .collect()
}

/// RFC 3339: `2020-01-01T00:00:00Z`, fractional seconds and `±HH:MM` offsets allowed.
pub fn parse_timestamp(s: &str) -> Result<SystemTime> {
    let bad = || anyhow!("invalid timestamp {s:?}: expected RFC 3339, e.g. 2020-01-01T00:00:00Z");
    let s = s.trim();
    let (base, offset_secs) = if let Some(b) = s.strip_suffix('Z').or_else(|| s.strip_suffix('z')) {
        (b, 0i64)
    } else {
        let cut = s.len().checked_sub(6).ok_or_else(bad)?;
        let (b, off) = s.split_at(cut);
        let sign = match off.as_bytes().first() {
            Some(b'+') => 1,
            Some(b'-') => -1,
            _ => return Err(bad()),
        };
        let (h, m) = off[1..].split_once(':').ok_or_else(bad)?;
        let h: i64 = h.parse().map_err(|_| bad())?;
        let m: i64 = m.parse().map_err(|_| bad())?;
        if h > 23 || m > 59 {
            return Err(bad());
        }
        (b, sign * (h * 3600 + m * 60))
    };
    let utc = humantime::parse_rfc3339(&format!("{base}Z")).map_err(|_| bad())?;
    let shift = Duration::from_secs(offset_secs.unsigned_abs());
    // A local time ahead of UTC by the offset: subtract it to get UTC.
    let t = if offset_secs >= 0 {
        utc.checked_sub(shift)
    } else {
        utc.checked_add(shift)
    };
    t.ok_or_else(bad)
}

/// A time as the listings print it: RFC 3339 in UTC, to the second.
pub fn format_time(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// What `generations`, `snapshots` and `wal` share: flags, the target and its clients.
pub struct Listing {
    /// Each replica's name and client.
    pub clients: Vec<(String, Arc<dyn ReplicaClient>)>,
    /// `-generation`, when given.
    pub generation: Option<String>,
}

/// Parses the listing commands' flags; `None` after printing the usage for `-h`.
pub fn listing_args(
    mut args: pico_args::Arguments,
    command: &str,
    usage: &str,
    with_generation: bool,
) -> Result<Option<Listing>> {
    use crate::cli::{flag, opt_value, positionals, wants_help};
    if wants_help(&mut args) {
        print!("{usage}");
        return Ok(None);
    }
    let config_flag = opt_value(&mut args, ["-config", "--config"])?;
    let no_expand_env = flag(&mut args, ["-no-expand-env", "--no-expand-env"]);
    let replica = opt_value(&mut args, ["-replica", "--replica"])?;
    let generation = if with_generation {
        opt_value(&mut args, ["-generation", "--generation"])?
    } else {
        None
    };
    let rest = positionals(args, command)?;
    let arg = match rest.as_slice() {
        [one] => one.as_str(),
        [] => bail!(
            "{command}: a database path or replica URL is required (see `litestream {command} -h`)"
        ),
        _ => bail!("{command}: too many arguments; give one database path or replica URL"),
    };
    if let Some(g) = &generation {
        if !crate::position::is_generation(g) {
            bail!(
                "{command}: -generation {g:?} is not a generation id (16 lowercase hex characters; list them with `litestream generations {arg}`)"
            );
        }
    }
    let target = resolve_target(arg, config_flag.as_deref(), !no_expand_env)?;
    let mut replicas = target.replicas;
    if let Some(name) = &replica {
        let names: Vec<String> = replicas.iter().map(|r| r.name.clone()).collect();
        replicas.retain(|r| &r.name == name);
        if replicas.is_empty() {
            bail!(
                "{command}: replica not found: {name} (replicas: {})",
                names.join(", ")
            );
        }
    }
    Ok(Some(Listing {
        clients: open_clients(&replicas)?,
        generation,
    }))
}

/// Space-aligned columns with a two-space gap, header first (Litestream's tabwriter look).
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(cell.len());
            }
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut l = String::new();
        for (i, cell) in cells.enumerate() {
            if i + 1 < widths.len() {
                l.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            } else {
                l.push_str(cell);
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&mut header.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn timestamps() {
        let t = |s| {
            parse_timestamp(s)
                .unwrap()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs()
        };
        assert_eq!(t("2020-01-01T00:00:00Z"), 1_577_836_800);
        assert_eq!(t("2020-01-01T02:00:00+02:00"), 1_577_836_800);
        assert_eq!(t("2019-12-31T23:30:00-00:30"), 1_577_836_800);
        let frac = parse_timestamp("2020-01-01T00:00:00.250Z").unwrap();
        assert_eq!(
            frac.duration_since(UNIX_EPOCH).unwrap().as_millis(),
            1_577_836_800_250
        );
        for bad in [
            "",
            "yesterday",
            "2020-01-01",
            "2020-01-01T00:00:00+25:00",
            "2020-13-01T00:00:00Z",
        ] {
            let e = parse_timestamp(bad).unwrap_err().to_string();
            assert!(e.contains("RFC 3339"), "{bad}: {e}");
        }
        assert_eq!(
            format_time(UNIX_EPOCH + Duration::from_secs(1_577_836_800)),
            "2020-01-01T00:00:00Z"
        );
    }

    #[test]
    fn tables() {
        let t = table(
            &["name", "generation", "lag"],
            &[vec!["s3".into(), "0123456789abcdef".into(), "5s".into()]],
        );
        assert_eq!(
            t,
            "name  generation        lag\ns3    0123456789abcdef  5s\n"
        );
        assert_eq!(table(&["a", "b"], &[]), "a  b\n");
    }

    #[test]
    fn absolute_paths_are_cleaned() {
        let cwd = Path::new("/srv/app");
        assert_eq!(
            absolute(cwd, "data/./x.db"),
            PathBuf::from("/srv/app/data/x.db")
        );
        assert_eq!(absolute(cwd, "../x.db"), PathBuf::from("/srv/x.db"));
        assert_eq!(absolute(cwd, "/a/b.db"), PathBuf::from("/a/b.db"));
    }
}
