//! The command line: dispatch to one file per command, Go-style flags, usage text.
//!
//! Flags are `-flag value`, `-flag=value` or `--flag`; each command parses its own with the
//! helpers here and returns an exit code. Errors bubble up to `main`, which prints them once.

pub mod common;
pub mod databases;
pub mod generations;
pub mod replicate;
pub mod restore;
pub mod snapshots;
pub mod wal;

use std::ffi::OsString;

use anyhow::{bail, Result};
use pico_args::Arguments;

/// `litestream -h`: the commands, as Litestream v0.3 lists them.
pub const USAGE: &str = "litestream is a tool for replicating SQLite databases.

Usage:

	litestream <command> [arguments]

The commands are:

	databases    list databases specified in config file
	generations  list available generations for a database
	replicate    runs a server to replicate databases
	restore      recovers database backup from a replica
	snapshots    list available snapshots for a database
	version      prints the binary version
	wal          list available WAL files for a database
";

/// `litestream version`: the version, then the git commit the binary was built from
/// ("unknown" when built outside a git checkout; see build.rs).
pub fn version_line() -> String {
    format!(
        "v{} (commit {})",
        env!("CARGO_PKG_VERSION"),
        env!("LITESTREAM_COMMIT")
    )
}

/// Runs the command line; returns the process exit code.
pub fn run(argv: Vec<OsString>) -> Result<i32> {
    let mut argv = argv.into_iter();
    let cmd = argv.next().and_then(|s| s.into_string().ok());
    let args = Arguments::from_vec(argv.map(go_style).collect());
    match cmd.as_deref() {
        None | Some("help") | Some("-h") | Some("--help") => {
            eprint!("{USAGE}");
            Ok(1)
        }
        Some("version") | Some("-version") | Some("--version") | Some("-v") => {
            println!("{}", version_line());
            Ok(0)
        }
        Some("replicate") => replicate::run(args),
        Some("restore") => restore::run(args),
        Some("databases") => databases::run(args),
        Some("generations") => generations::run(args),
        Some("snapshots") => snapshots::run(args),
        Some("wal") => wal::run(args),
        Some(other) => bail!(
            "litestream {other}: unknown command (run `litestream -h` for the list of commands)"
        ),
    }
}

/// Go flags are `-name`; pico-args only knows single-letter short flags, so a single-dash long
/// flag is rewritten to its `--name` form before parsing (values such as `-5` are left alone).
fn go_style(arg: OsString) -> OsString {
    let Some(s) = arg.to_str() else { return arg };
    let name = s.split('=').next().unwrap_or(s);
    let b = name.as_bytes();
    let is_long_flag = b.len() > 2
        && b[0] == b'-'
        && b[1].is_ascii_alphabetic()
        && b[2..]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'-');
    if is_long_flag {
        format!("-{s}").into()
    } else {
        arg
    }
}

/// The pico-args key for a flag given as `[-name, --name]`.
fn key(keys: [&'static str; 2]) -> pico_args::Keys {
    if keys[0].len() == 2 {
        keys.into()
    } else {
        keys[1].into()
    }
}

/// The value of `-name`/`--name`, if given.
pub fn opt_value(args: &mut Arguments, keys: [&'static str; 2]) -> Result<Option<String>> {
    match args.opt_value_from_str::<_, String>(key(keys)) {
        Ok(v) => Ok(v),
        Err(e) => bail!("{}: {}", keys[0], e),
    }
}

/// Every value of a repeatable flag.
pub fn values(args: &mut Arguments, keys: [&'static str; 2]) -> Result<Vec<String>> {
    let mut out = Vec::new();
    while let Some(v) = opt_value(args, keys)? {
        out.push(v);
    }
    Ok(out)
}

/// True when the boolean flag `-name`/`--name` is present.
pub fn flag(args: &mut Arguments, keys: [&'static str; 2]) -> bool {
    args.contains(key(keys))
}

/// True when `-h`/`--help` is present: the command prints its usage and exits 0.
pub fn wants_help(args: &mut Arguments) -> bool {
    args.contains(["-h", "--help"])
}

/// The positional arguments left once every flag was taken. Anything that still looks like a
/// flag is an error naming it, so typos never pass silently.
pub fn positionals(args: Arguments, command: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for a in args.finish() {
        let a = a
            .into_string()
            .map_err(|a| anyhow::anyhow!("{command}: argument is not valid UTF-8: {a:?}"))?;
        if a.starts_with('-') && a.len() > 1 {
            let shown = a.strip_prefix('-').filter(|r| r.len() > 2).unwrap_or(&a);
            bail!(
                "{command}: flag provided but not defined: {shown} (see `litestream {command} -h`)"
            );
        }
        out.push(a);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Arguments {
        Arguments::from_vec(args.iter().map(|a| go_style(OsString::from(a))).collect())
    }

    #[test]
    fn an_unknown_command_points_to_the_list() {
        let err = run(vec![OsString::from("bogus")]).unwrap_err().to_string();
        assert!(err.contains("litestream bogus: unknown command"), "{err}");
        assert!(err.contains("litestream -h"), "{err}");
    }

    #[test]
    fn go_style_flags() {
        let mut a = parse(&[
            "-config",
            "x.yml",
            "--replica=s3",
            "-o",
            "out.db",
            "-if-db-not-exists",
            "db",
        ]);
        assert_eq!(
            opt_value(&mut a, ["-config", "--config"])
                .unwrap()
                .as_deref(),
            Some("x.yml")
        );
        assert_eq!(
            opt_value(&mut a, ["-replica", "--replica"])
                .unwrap()
                .as_deref(),
            Some("s3")
        );
        assert_eq!(
            opt_value(&mut a, ["-o", "--o"]).unwrap().as_deref(),
            Some("out.db")
        );
        assert!(flag(&mut a, ["-if-db-not-exists", "--if-db-not-exists"]));
        assert_eq!(positionals(a, "restore").unwrap(), vec!["db".to_string()]);

        let mut a = parse(&["-timestamp=2020-01-01T00:00:00Z", "-parallelism", "-5"]);
        assert_eq!(
            opt_value(&mut a, ["-timestamp", "--timestamp"])
                .unwrap()
                .as_deref(),
            Some("2020-01-01T00:00:00Z")
        );
        // A value that merely looks like a flag is left alone.
        assert_eq!(
            opt_value(&mut a, ["-parallelism", "--parallelism"])
                .unwrap()
                .as_deref(),
            Some("-5")
        );

        let err = positionals(parse(&["-bogus-flag", "x"]), "restore")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("flag provided but not defined: -bogus-flag"),
            "{err}"
        );
    }
}
