//! Helpers shared by the unit tests of `config`: parse a text with a fixed environment,
//! working directory (`/work/dir`) and home (`/home/user`), and pick results apart.

use std::path::Path;
use std::time::Duration;

use super::schema::{Config, ConfigError, ReplicaConfig, ReplicaTarget, S3Config};

pub(super) const SRC: &str = "litestream.yml";

pub(super) fn env_of(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let vars: Vec<(String, String)> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |k: &str| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
}

pub(super) fn parse_with(text: &str, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let env = env_of(vars);
    Config::parse(
        text,
        SRC,
        true,
        &env,
        Path::new("/work/dir"),
        Some(Path::new("/home/user")),
    )
}

pub(super) fn parse(text: &str) -> Result<Config, ConfigError> {
    parse_with(text, &[])
}

pub(super) fn ok(text: &str) -> Config {
    match parse(text) {
        Ok(c) => c,
        Err(e) => panic!("unexpected error:\n{e}"),
    }
}

/// The problems of an invalid config.
pub(super) fn errs(text: &str) -> Vec<String> {
    match parse(text) {
        Ok(c) => panic!("expected an error, got {c:?}"),
        Err(e) => e.problems,
    }
}

pub(super) fn one_err(text: &str) -> String {
    let p = errs(text);
    assert_eq!(p.len(), 1, "expected one problem, got {p:#?}");
    p.into_iter().next().unwrap()
}

pub(super) fn s3(r: &ReplicaConfig) -> &S3Config {
    match &r.target {
        ReplicaTarget::S3(s3) => s3,
        other => panic!("not s3: {other:?}"),
    }
}

pub(super) fn file_path(r: &ReplicaConfig) -> &Path {
    match &r.target {
        ReplicaTarget::File { path } => path,
        other => panic!("not file: {other:?}"),
    }
}

pub(super) fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}
