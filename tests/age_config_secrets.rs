//! No configuration error, `Debug` or log line ever shows a secret written in the wrong
//! shape or place: an age identity (`AGE-SECRET-KEY-1…`) or an SSE-C key where a map, a list
//! or a path belongs. Each message still names the key's place, its line and the shape that
//! was expected.

use std::path::Path;

use litestream::config::Config;

/// A valid X25519 identity (test-only; never used for data).
const ID: &str = "AGE-SECRET-KEY-1GFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPQ4EGAEX";
/// The part of [`ID`] after its prefix: no message may hold any of it.
const ID_BODY: &str = "GFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPQ4EGAEX";
/// A fake SSE-C key (base64 of 32 bytes).
const SSE: &str = "q83vEjRWeJq83vEjRWeJq83vEjRWeJq83vEjRWeJq80=";
/// A number where a secret belongs: it must not be echoed either.
const NUM: &str = "918273645546372819";

const HEAD: &str = "dbs:\n  - path: /a.db\n    replicas:\n      - url: s3://b/p\n";

fn problems(yaml: &str) -> String {
    let text = format!("{HEAD}{yaml}");
    let env = |_: &str| None;
    match Config::parse(
        &text,
        "litestream.yml",
        true,
        &env,
        Path::new("/work/dir"),
        Some(Path::new("/home/user")),
    ) {
        Ok(c) => panic!("expected an error for\n{text}\ngot {c:?}"),
        Err(e) => e.problems.join("\n"),
    }
}

/// The error for `yaml` names `place` and `line`, says `expected`, and holds none of `secret`.
fn refused(yaml: &str, secret: &str, place: &str, line: usize, expected: &str) {
    let e = problems(yaml);
    assert!(!e.contains(secret), "echoed the value:\n{e}");
    assert!(
        !e.to_ascii_uppercase()
            .contains(&secret.to_ascii_uppercase()),
        "echoed the value (in another case):\n{e}"
    );
    assert!(e.contains(&format!("line {line} ")), "no line {line}:\n{e}");
    assert!(e.contains(place), "no place {place}:\n{e}");
    assert!(e.contains(expected), "does not say {expected:?}:\n{e}");
}

const AGE: &str = "dbs[0].replicas[0].age";

#[test]
fn age_as_a_scalar_or_list_never_shows_it() {
    let map = "must be a map with `recipients` and/or `identities` lists";
    refused(&format!("        age: {ID}\n"), ID_BODY, AGE, 5, map);
    refused(&format!("        age: \"{ID}\"\n"), ID_BODY, AGE, 5, map);
    refused(&format!("        age: !key {ID}\n"), ID_BODY, AGE, 5, map);
    refused(&format!("        age: {NUM}\n"), NUM, AGE, 5, map);
    refused(&format!("        age: [{ID}]\n"), ID_BODY, AGE, 5, map);
    refused("        age: true\n", "true", AGE, 5, map);
}

#[test]
fn a_secret_written_as_a_key_name_is_not_shown() {
    // `age:` then the identity on the next line with a trailing colon: a map key.
    refused(
        &format!("        age:\n          {ID}: x\n"),
        ID_BODY,
        AGE,
        6,
        "unknown key",
    );
    refused(
        &format!("        {SSE}: x\n"),
        SSE,
        "dbs[0].replicas[0]",
        5,
        "unknown key",
    );
}

#[test]
fn recipients_in_the_wrong_shape_never_show_it() {
    let place = "dbs[0].replicas[0].age.recipients";
    let list = "must be a list of recipients";
    refused(
        &format!("        age:\n          recipients: {ID}\n"),
        ID_BODY,
        place,
        6,
        list,
    );
    refused(
        &format!("        age:\n          recipients: {NUM}\n"),
        NUM,
        place,
        6,
        list,
    );
    refused(
        &format!("        age:\n          recipients:\n            {ID}: 1\n"),
        ID_BODY,
        place,
        7,
        "not a map",
    );
    let entry = "dbs[0].replicas[0].age.recipients[0]";
    let one = "a recipient (age1…)";
    refused(
        &format!("        age:\n          recipients:\n            - {{a: {ID}}}\n"),
        ID_BODY,
        entry,
        7,
        one,
    );
    refused(
        &format!("        age:\n          recipients:\n            - [{ID}]\n"),
        ID_BODY,
        entry,
        7,
        one,
    );
    // An identity in quotes (from a docker --env-file) where a recipient belongs.
    refused(
        &format!("        age:\n          recipients:\n            - \"'{ID}'\"\n"),
        ID_BODY,
        entry,
        7,
        "not a recipient",
    );
}

#[test]
fn identities_in_the_wrong_shape_never_show_it() {
    let place = "dbs[0].replicas[0].age.identities";
    let list = "must be a list of identities";
    refused(
        &format!("        age:\n          identities: {ID}\n"),
        ID_BODY,
        place,
        6,
        list,
    );
    refused(
        &format!("        age:\n          identities: {NUM}\n"),
        NUM,
        place,
        6,
        list,
    );
    refused(
        &format!("        age:\n          identities:\n            {ID}: 1\n"),
        ID_BODY,
        place,
        7,
        "not a map",
    );
    let entry = "dbs[0].replicas[0].age.identities[0]";
    let one = "an identity (AGE-SECRET-KEY-1…) or the path of an identity file";
    refused(
        &format!("        age:\n          identities:\n            - {{a: {ID}}}\n"),
        ID_BODY,
        entry,
        7,
        one,
    );
    refused(
        &format!("        age:\n          identities:\n            - [{ID}]\n"),
        ID_BODY,
        entry,
        7,
        one,
    );
}

#[test]
fn sse_keys_in_the_wrong_shape_or_field_never_show_it() {
    let r = "dbs[0].replicas[0]";
    let s = "expected a string";
    refused(
        &format!("        sse-customer-key: [{SSE}]\n"),
        SSE,
        r,
        5,
        s,
    );
    refused(
        &format!("        sse-customer-key: {{{SSE}: 1}}\n"),
        SSE,
        r,
        5,
        s,
    );
    refused(
        &format!("        sse-customer-key:\n          - {SSE}\n"),
        SSE,
        r,
        6,
        s,
    );
    refused(
        &format!("        secret-access-key: [{SSE}]\n"),
        SSE,
        r,
        5,
        s,
    );
    // The key in the algorithm's field.
    let e = problems(&format!(
        "        endpoint: http://127.0.0.1:9000\n        sse-customer-algorithm: {SSE}\n        sse-customer-key: {SSE}\n"
    ));
    assert!(!e.contains(SSE), "{e}");
    assert!(e.contains("sse-customer-algorithm: must be AES256"), "{e}");
    // A wrong key, not base64 or not 32 bytes, is named and never shown.
    for bad in ["q83vEjRWeJq83vEjRWeJ!!", "q83vEjRWeJq83vEjRWeJ", NUM] {
        let e = problems(&format!(
            "        endpoint: http://127.0.0.1:9000\n        sse-customer-key: {bad}\n"
        ));
        assert!(!e.contains(bad), "{e}");
        assert!(e.contains("sse-customer-key: "), "{e}");
    }
}

/// Identity text with a stray character around or inside it: a quoted `$AGE_KEY` from a
/// docker `--env-file`, a BOM, a zero-width space. Each is reported as a bad identity at its
/// place and line, never taken as a path, never shown.
fn mangled_keys() -> Vec<(&'static str, String)> {
    vec![
        ("single quotes", format!("'{ID}'")),
        ("double quotes", format!("\"{ID}\"")),
        ("a BOM", format!("\u{feff}{ID}")),
        ("a zero-width space", format!("\u{200b}{ID}")),
        (
            "a zero-width space inside the prefix",
            format!("AGE-SECRET-\u{200b}KEY-{}", &ID[15..]),
        ),
        ("a trailing quote", format!("{ID}'")),
    ]
}

#[test]
fn mangled_identities_are_never_paths_and_never_shown() {
    let env_parse = |text: &str, vars: Vec<(String, String)>| {
        let env = move |k: &str| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        Config::parse(
            text,
            "litestream.yml",
            true,
            &env,
            Path::new("/work/dir"),
            Some(Path::new("/home/user")),
        )
    };
    for (what, key) in mangled_keys() {
        // Written in the file (YAML-escaped), and through a $VAR as a docker env-file gives it.
        let escaped = key.replace('\\', "\\\\").replace('"', "\\\"");
        let inline =
            format!("{HEAD}        age:\n          identities:\n            - \"{escaped}\"\n");
        // The $VAR in double quotes, as the value of an env-file arrives: its quotes kept.
        let via_var =
            format!("{HEAD}        age:\n          identities:\n            - \"$AGE_KEY\"\n");
        for (how, text) in [("inline", inline), ("$VAR", via_var)] {
            let r = env_parse(&text, vec![("AGE_KEY".into(), key.clone())]);
            let e = match r {
                Ok(c) => panic!("{what} ({how}): accepted; Debug shows {c:?}"),
                Err(e) => e.problems.join("\n"),
            };
            assert!(!e.contains(ID_BODY), "{what} ({how}): shown:\n{e}");
            if how == "$VAR" && key.contains('"') {
                // `""AGE…""` is no YAML string: a syntax error, which shows nothing either.
                continue;
            }
            assert!(
                e.contains("line 7 column 15: dbs[0].replicas[0].age.identities[0]: line 1 is not an age identity"),
                "{what} ({how}):\n{e}"
            );
            assert!(
                !e.contains("/work/dir"),
                "{what} ({how}): taken as a path:\n{e}"
            );
        }
    }
}

#[test]
fn entries_that_are_no_path_are_refused_without_being_shown() {
    let body = ID_BODY;
    for (entry, why) in [
        (format!("'{body}'"), "is in quotes"),
        (body.to_string(), "has the shape of key material"),
        (format!("/etc/\u{200b}{body}"), "invisible character"),
    ] {
        let e = problems(&format!(
            "        age:\n          identities:\n            - \"{entry}\"\n"
        ));
        assert!(!e.contains(body), "{e}");
        assert!(
            e.contains("line 7 column 15: dbs[0].replicas[0].age.identities[0]: is neither an age identity nor the path"),
            "{e}"
        );
        assert!(e.contains(why), "{e}");
    }
}

#[test]
fn debug_of_a_config_never_shows_a_key_held_as_a_path() {
    use litestream::config::{AgeConfig, AgeIdentity};
    for (what, key) in mangled_keys() {
        let age = AgeConfig {
            recipients: vec![],
            identities: vec![
                AgeIdentity::File {
                    path: format!("/work/dir/{key}").into(),
                    text: None,
                },
                AgeIdentity::Inline(ID.to_string()),
            ],
        };
        let d = format!("{age:?}");
        assert!(!d.contains(ID_BODY), "{what}: {d}");
    }
    // A real path is still shown.
    let age = AgeConfig {
        recipients: vec![],
        identities: vec![AgeIdentity::File {
            path: "/etc/litestream/key.txt".into(),
            text: None,
        }],
    };
    assert!(format!("{age:?}").contains("/etc/litestream/key.txt"));
}

/// Runs the binary's `databases` command on `config` (it loads the file, identities
/// included), returning (exit code, stderr).
fn load_with_binary(config: &Path) -> (Option<i32>, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_litestream"))
        .args(["databases", "-config"])
        .arg(config)
        .env_remove("LITESTREAM_CONFIG")
        .output()
        .expect("run litestream");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn an_identity_file_that_cannot_be_read_is_named_by_place_and_path() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing-key.txt");
    let cfg = dir.path().join("litestream.yml");
    std::fs::write(
        &cfg,
        format!(
            "dbs:\n  - path: {}\n    replicas:\n      - path: {}\n        validation-interval: 0\n        age:\n          identities:\n            - {}\n",
            dir.path().join("app.db").display(),
            dir.path().join("replica").display(),
            missing.display()
        ),
    )
    .unwrap();
    let (code, err) = load_with_binary(&cfg);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "dbs[0].replicas[0].age.identities[0]: identity file {}: cannot open",
            missing.display()
        )),
        "{err}"
    );
}

/// A config with two inline identities (and a `$VAR` one) for a file replica in `dir`.
fn inline_config(dir: &Path, mode: u32) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let cfg = dir.join("litestream.yml");
    std::fs::write(
        &cfg,
        format!(
            "dbs:\n  - path: {}\n    replicas:\n      - path: {}\n        validation-interval: 0\n        age:\n          identities:\n            - {ID}\n            - $AGE_FROM_ENV\n            - |\n              # created: today\n              {ID}\n",
            dir.join("app.db").display(),
            dir.join("replica").display(),
        ),
    )
    .unwrap();
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(mode)).unwrap();
    cfg
}

/// A fresh identity, not [`ID`]: one that is not written in any file.
#[allow(deprecated)] // X25519, the only key type Litestream v0.3.13 uses.
fn other_identity() -> String {
    use age::secrecy::ExposeSecret;
    age::x25519::Identity::generate()
        .to_string()
        .expose_secret()
        .to_string()
}

fn databases(config: &Path) -> (Option<i32>, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_litestream"))
        .args(["databases", "-config"])
        .arg(config)
        .env_remove("LITESTREAM_CONFIG")
        .env("AGE_FROM_ENV", other_identity())
        .output()
        .expect("run litestream");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn inline_identities_in_a_readable_config_are_warned_about_once() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = inline_config(dir.path(), 0o644);
    let (code, err) = databases(&cfg);
    assert_eq!(code, Some(0), "{err}");
    let warnings: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("config file holds age identities"))
        .collect();
    assert_eq!(warnings.len(), 1, "one warning per load:\n{err}");
    let w = warnings[0];
    assert!(w.contains("WARN"), "{w}");
    assert!(w.contains(&cfg.display().to_string()), "{w}");
    // The two written in the file, not the one from the environment.
    assert!(
        w.contains("dbs[0].replicas[0].age.identities[0], dbs[0].replicas[0].age.identities[2]"),
        "{w}"
    );
    assert!(!err.contains(ID_BODY), "{err}");

    // Private: no warning.
    let dir = tempfile::tempdir().unwrap();
    let cfg = inline_config(dir.path(), 0o600);
    let (code, err) = databases(&cfg);
    assert_eq!(code, Some(0), "{err}");
    assert!(!err.contains("config file holds age identities"), "{err}");
}

#[test]
fn a_readable_config_with_identities_only_from_the_environment_is_not_warned_about() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("litestream.yml");
    std::fs::write(
        &cfg,
        format!(
            "dbs:\n  - path: {}\n    replicas:\n      - path: {}\n        validation-interval: 0\n        age:\n          identities:\n            - $AGE_FROM_ENV\n",
            dir.path().join("app.db").display(),
            dir.path().join("replica").display(),
        ),
    )
    .unwrap();
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, err) = databases(&cfg);
    assert_eq!(code, Some(0), "{err}");
    assert!(!err.contains("config file holds age identities"), "{err}");
}

#[test]
fn a_key_in_any_other_setting_is_never_shown() {
    // Values that other checks quote (an address, a log level, a type): a key given
    // there by a wrong $VAR is named by place and line only.
    let quoted = format!("'{ID}'");
    for (text, place) in [
        (format!("addr: {ID}\n"), "addr"),
        (format!("logging:\n  level: {ID}\n"), "logging.level"),
        (
            format!("{HEAD}        compression: {quoted}\n"),
            "dbs[0].replicas[0]",
        ),
        (
            format!("{HEAD}        type: \"{quoted}\"\n"),
            "dbs[0].replicas[0].type",
        ),
    ] {
        let env = |_: &str| None;
        let e = match Config::parse(&text, "litestream.yml", true, &env, Path::new("/w"), None) {
            Ok(c) => panic!("accepted: {c:?}"),
            Err(e) => e.problems.join("\n"),
        };
        assert!(!e.contains(ID_BODY), "{e}");
        assert!(e.contains(place), "{place}: {e}");
    }
}
