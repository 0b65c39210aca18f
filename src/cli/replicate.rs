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

/// `litestream replicate`: run the daemon until a signal (or the `-exec` child) ends it; see `USAGE`.
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
        Config::load(&path, !no_expand_env)?
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
    config.check_for_daemon()?;
    // `-exec` wins over the config's `exec:`.
    let exec = match exec.or_else(|| config.exec.clone()) {
        Some(cmd) => Some(
            split_command(&cmd).map_err(|e| anyhow::anyhow!("replicate: -exec {cmd:?}: {e}"))?,
        ),
        None => None,
    };
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
    daemon::run(&config, exec)
}

/// Splits a command line into words the way a POSIX shell would, without running one: blanks
/// separate words; `'…'` keeps everything literally; `"…"` keeps everything but `\"`, `\\`,
/// `\$`, `` \` `` and backslash-newline; a backslash outside quotes escapes the next
/// character. No expansion of variables, globs or `~` (the child gets our environment
/// anyway). Errors on an unterminated quote and on an empty command.
pub fn split_command(s: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    // A word exists once anything (even an empty quoted string) was seen.
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' | '\n' | '\r' => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => return Err("unterminated single quote (close it with ')".into()),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => word.push(c),
                            Some('\n') => {}
                            Some(c) => {
                                word.push('\\');
                                word.push(c);
                            }
                            None => {
                                return Err("unterminated double quote (close it with \")".into())
                            }
                        },
                        Some(c) => word.push(c),
                        None => return Err("unterminated double quote (close it with \")".into()),
                    }
                }
            }
            '\\' => match chars.next() {
                // A line continuation: removed, as if it was never there.
                Some('\n') => {}
                Some(c) => {
                    in_word = true;
                    word.push(c);
                }
                None => return Err("trailing backslash (escape it as \\\\)".into()),
            },
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    if words.is_empty() {
        return Err("empty command (give the program to run, e.g. -exec \"myapp serve\")".into());
    }
    Ok(words)
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
    for (i, db) in config.dbs.iter().enumerate() {
        if db.path.is_dir() {
            // SQLite would only say "unable to open database file", every second.
            bail!(
                "{}dbs[{i}].path: {} is a directory; name the SQLite database file in it (e.g. {})",
                source_lead(config),
                db.path.display(),
                db.path.join("app.db").display()
            );
        }
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

/// `litestream.yml: ` before a message about the config's keys; nothing for a command line.
fn source_lead(config: &Config) -> String {
    if config.source.is_empty() {
        String::new()
    } else {
        format!("{}: ", config.source)
    }
}

#[cfg(test)]
mod tests {
    use super::split_command;

    fn ok(s: &str) -> Vec<String> {
        split_command(s).unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    #[test]
    fn splits_like_a_shell() {
        assert_eq!(
            ok("sh -c 'sleep 1; exit 7'"),
            ["sh", "-c", "sleep 1; exit 7"]
        );
        assert_eq!(ok("  a\tb  c\n"), ["a", "b", "c"]);
        assert_eq!(
            ok(r#"echo "a \"b\" \\ \$HOME \x" 'it''s'"#),
            ["echo", r#"a "b" \ $HOME \x"#, "its"]
        );
        assert_eq!(ok(r#"a\ b c\'d"#), ["a b", "c'd"]);
        assert_eq!(ok(r#"x '' "" y"#), ["x", "", "", "y"]);
        assert_eq!(ok("pre'fix'\"ed\"post"), ["prefixedpost"]);
        assert_eq!(ok("a \\\nb"), ["a", "b"]);
        assert_eq!(ok("a \\\n b"), ["a", "b"]);
        assert_eq!(ok("$HOME *.db ~"), ["$HOME", "*.db", "~"]);
    }

    #[test]
    fn rejects_broken_commands() {
        assert!(split_command("sh -c 'oops")
            .unwrap_err()
            .contains("single quote"));
        assert!(split_command("echo \"oops")
            .unwrap_err()
            .contains("double quote"));
        assert!(split_command("echo \\").unwrap_err().contains("backslash"));
        assert!(split_command("   ").unwrap_err().contains("empty command"));
        assert!(split_command("").unwrap_err().contains("empty command"));
    }
}
