//! The configuration parser (src/config/) on arbitrary text: `Config::parse` with and without
//! `$VAR` expansion, and `expand_env_vars` alone. No panics; a parsed config has the shape the
//! rest of the program relies on; an error has at least one problem line.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use litestream::config::{expand_env_vars, Config, ReplicaTarget};

/// A fixed environment: a few names have values (some holding `$` and YAML syntax, so
/// expansion can change the document's structure), the rest are unset.
fn env(name: &str) -> Option<String> {
    match name {
        "HOME" => Some("/home/fuzz".into()),
        "DB" => Some("app".into()),
        "BUCKET" => Some("my-bucket".into()),
        "SECRET" => Some("s3cr3t-value".into()),
        "YAML" => Some("\n  - path: /x\n    replicas: [{url: s3://b/p}]\n".into()),
        "DOLLAR" => Some("$DB${DB}".into()),
        "1" | "$" | "@" => Some(name.repeat(2)),
        _ => None,
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };

    let expanded = expand_env_vars(text, &env);
    // Without a `$` there is nothing to expand.
    if !text.contains('$') {
        assert_eq!(expanded, text);
    }
    // With every variable unset, expansion only removes text.
    let unset = expand_env_vars(text, &|_| None);
    assert!(unset.len() <= text.len());

    let cwd = Path::new("/fuzz/cwd");
    for (expand, home) in [(false, None), (true, Some(Path::new("/home/fuzz")))] {
        match Config::parse(text, "fuzz.yml", expand, &env, cwd, home) {
            Ok(config) => check_config(&config),
            Err(e) => {
                let msg = e.to_string();
                assert!(!msg.is_empty());
                assert!(msg.contains("fuzz.yml"), "problem without its place: {msg}");
            }
        }
    }
});

fn check_config(config: &Config) {
    assert_eq!(config.source, "fuzz.yml");
    assert!(config.snapshot_concurrency >= 1);
    for db in &config.dbs {
        assert!(db.path.is_absolute(), "{:?}", db.path);
        if let Some(meta) = &db.meta_path {
            assert!(meta.is_absolute(), "{meta:?}");
        }
        let mut names: Vec<&str> = db.replicas.iter().map(|r| r.name.as_str()).collect();
        names.sort_unstable();
        let before = names.len();
        names.dedup();
        assert_eq!(
            before,
            names.len(),
            "replica names not unique: {:?}",
            db.replicas
        );
        for r in &db.replicas {
            assert!(!r.name.is_empty());
            match &r.target {
                ReplicaTarget::File { path } => assert!(path.is_absolute(), "{path:?}"),
                ReplicaTarget::S3(s3) => assert!(!s3.bucket.is_empty(), "{s3:?}"),
            }
        }
    }
    // The hand-written Debug must never print a secret key.
    let debug = format!("{config:?}");
    let secrets = config.secret_access_key.iter().chain(
        config
            .dbs
            .iter()
            .flat_map(|d| &d.replicas)
            .filter_map(|r| match &r.target {
                ReplicaTarget::S3(s3) => s3.secret_access_key.as_ref(),
                ReplicaTarget::File { .. } => None,
            }),
    );
    for secret in secrets {
        // Only a distinctive secret can be looked for: a short one may occur by chance in
        // another field of the printout.
        if secret.len() >= 12 && !secret.contains("***") {
            let others = debug.replace("\"***\"", "");
            assert!(
                !others.contains(secret.as_str()) || appears_elsewhere(config, secret),
                "secret printed by Debug"
            );
        }
    }
}

/// True when the secret's text is also the value of some other, printable field (then the
/// printout may legitimately contain it).
fn appears_elsewhere(config: &Config, secret: &str) -> bool {
    let mut fields: Vec<String> = vec![
        config.addr.clone().unwrap_or_default(),
        config.exec.clone().unwrap_or_default(),
        config.access_key_id.clone().unwrap_or_default(),
        config.source.clone(),
    ];
    for db in &config.dbs {
        fields.push(db.path.display().to_string());
        if let Some(m) = &db.meta_path {
            fields.push(m.display().to_string());
        }
        for r in &db.replicas {
            fields.push(r.name.clone());
            match &r.target {
                ReplicaTarget::File { path } => fields.push(path.display().to_string()),
                ReplicaTarget::S3(s3) => {
                    fields.push(s3.bucket.clone());
                    fields.push(s3.path.clone());
                    fields.extend(s3.region.clone());
                    fields.extend(s3.endpoint.clone());
                    fields.extend(s3.access_key_id.clone());
                }
            }
        }
    }
    fields.iter().any(|f| f.contains(secret))
}
