//! `litestream databases`: the dbs of the config and their replicas.

use anyhow::Result;
use pico_args::Arguments;

use crate::cli::common::{load_config, table};
use crate::cli::{flag, opt_value, positionals, wants_help};

const USAGE: &str = "The databases command lists all databases in the configuration file.

Usage:

	litestream databases [arguments]

Arguments:

	-config PATH
	    Specifies the configuration file.
	    Defaults to $LITESTREAM_CONFIG, else /etc/litestream.yml

	-no-expand-env
	    Disables environment variable expansion in configuration file.
";

/// `litestream databases`: the configured databases and their replicas; see `USAGE`.
pub fn run(mut args: Arguments) -> Result<i32> {
    if wants_help(&mut args) {
        print!("{USAGE}");
        return Ok(0);
    }
    let config_flag = opt_value(&mut args, ["-config", "--config"])?;
    let no_expand_env = flag(&mut args, ["-no-expand-env", "--no-expand-env"]);
    let rest = positionals(args, "databases")?;
    if !rest.is_empty() {
        anyhow::bail!("databases: too many arguments (see `litestream databases -h`)");
    }
    let config = load_config(config_flag.as_deref(), !no_expand_env)?;
    let rows: Vec<Vec<String>> = config
        .dbs
        .iter()
        .map(|db| {
            let names: Vec<&str> = db.replicas.iter().map(|r| r.name.as_str()).collect();
            vec![db.path.display().to_string(), names.join(",")]
        })
        .collect();
    print!("{}", table(&["path", "replicas"], &rows));
    Ok(0)
}
