//! Messages for what serde refuses: a YAML error as one line with its position, and for an
//! unknown key a "did you mean" or a hint that the key belongs at another level.
//!
//! Wording only: it decides nothing about what is valid (serde and `validate` do), and it
//! must describe the schema exactly as `raw` defines it (a unit test there checks the key
//! lists).

use super::age::{holds_key_text, KEY_TEXT_HIDDEN};
use super::raw::{DB_KEYS, LOGGING_KEYS, REPLICA_KEYS, TOP_KEYS};

/// `SOURCE: `, or nothing when the text has no name.
pub(super) fn lead(source: &str) -> String {
    if source.is_empty() {
        String::new()
    } else {
        format!("{source}: ")
    }
}

/// Turns a serde_norway error (`dbs[0].replicas[0]: unknown field `x`, expected one of … at
/// line 5 column 9`) into `SOURCE: line 5 column 9: unknown key `x` in dbs[0].replicas[0]
/// (did you mean `y`?)`.
pub(super) fn yaml_problem(source: &str, err: &serde_norway::Error) -> String {
    let msg = yaml_problem_text(source, err);
    if !holds_key_text(&msg) {
        return msg;
    }
    // A shape no visitor of `raw` catches quoted a key: keep the line, drop the rest.
    let at = err
        .location()
        .map(|l| format!("line {} column {}: ", l.line(), l.column()))
        .unwrap_or_default();
    let text = err.to_string();
    match split_place(&text).0.filter(|p| !holds_key_text(p)) {
        Some(p) => format!("{}{at}{p}: {KEY_TEXT_HIDDEN}", lead(source)),
        None => format!("{}{at}{KEY_TEXT_HIDDEN}", lead(source)),
    }
}

fn yaml_problem_text(source: &str, err: &serde_norway::Error) -> String {
    let mut msg = err.to_string();
    let mut at = String::new();
    if let Some(loc) = err.location() {
        let mark = format!(" at line {} column {}", loc.line(), loc.column());
        if let Some(i) = msg.find(&mark) {
            msg.replace_range(i..i + mark.len(), "");
        }
        at = format!("line {} column {}: ", loc.line(), loc.column());
    }
    let (place, rest) = split_place(&msg);
    if let Some((key, expected)) = parse_unknown_field(rest) {
        let where_ = match place {
            Some(p) => format!("in {p}"),
            None => "in the top level".to_string(),
        };
        if secret_like(&key) {
            // A key (an identity, an SSE key) written where a key name belongs: say so
            // without showing it, nor guessing a name from it.
            return format!(
                "{}{at}unknown key {where_} (not shown: it looks like a secret key, not a setting name; is a `-` or a `key:` missing?)",
                lead(source)
            );
        }
        let hint = key_hint(&key, &expected);
        return format!("{}{at}unknown key `{key}` {where_}{hint}", lead(source));
    }
    let rest = rest.replace("unit value", "empty value");
    match place {
        Some(p) => format!("{}{at}{p}: {rest}", lead(source)),
        None => format!("{}{at}{rest}", lead(source)),
    }
}

/// Splits serde_norway's `path: message` (the path has no spaces); `None` at the top level.
pub(super) fn split_place(msg: &str) -> (Option<&str>, &str) {
    if let Some(i) = msg.find(": ") {
        let p = &msg[..i];
        if !p.is_empty()
            && p.chars().all(|c| {
                c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '[' | ']' | '?')
            })
        {
            return (Some(p), &msg[i + 2..]);
        }
    }
    (None, msg)
}

/// `unknown field `k`, expected one of `a`, `b`` → (`k`, [a, b]).
pub(super) fn parse_unknown_field(msg: &str) -> Option<(String, Vec<String>)> {
    let rest = msg.strip_prefix("unknown field `")?;
    let end = rest.find("`, ").or_else(|| rest.rfind('`'))?;
    let key = rest[..end].to_string();
    let expected = rest[end + 1..]
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect();
    Some((key, expected))
}

/// A map key that may be secret: age identity text, or a long run that is no setting
/// name (setting names are short, lower-case, with dashes).
fn secret_like(key: &str) -> bool {
    super::age::looks_like_identity(key) || (key.len() >= 32 && !key.contains(['-', '_', ' ']))
}

/// ` (did you mean `dbs`?)`, or a hint that the key belongs at another level, or nothing.
fn key_hint(key: &str, expected: &[String]) -> String {
    let here: Vec<&str> = expected.iter().map(String::as_str).collect();
    if let Some(s) = suggest(key, &here) {
        return format!(" (did you mean `{s}`?)");
    }
    let norm = normalize_key(key);
    let levels: [(&[&str], &str); 4] = [
        (DB_KEYS, "is a db key: put it under an entry of `dbs:`"),
        (
            REPLICA_KEYS,
            "is a replica key: put it under an entry of a db's `replicas:`",
        ),
        (TOP_KEYS, "is a top-level key"),
        (LOGGING_KEYS, "belongs under `logging:`"),
    ];
    for (keys, what) in levels {
        if keys.contains(&norm.as_str()) && !here.contains(&norm.as_str()) {
            return format!(" (`{norm}` {what})");
        }
    }
    if here.is_empty() {
        String::new()
    } else {
        format!(" (valid keys here: {})", here.join(", "))
    }
}

/// `snake_case`, `camelCase` and any case → `kebab-case`.
fn normalize_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len() + 4);
    let mut prev_lower = false;
    for c in key.chars() {
        if c == '_' || c == ' ' {
            out.push('-');
            prev_lower = false;
        } else if c.is_ascii_uppercase() {
            if prev_lower {
                out.push('-');
            }
            out.push(c.to_ascii_lowercase());
            prev_lower = false;
        } else {
            out.push(c);
            prev_lower = c.is_ascii_lowercase() || c.is_ascii_digit();
        }
    }
    out
}

/// The nearest candidate by edit distance (with transpositions), when reasonably close.
fn suggest<'a>(key: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let norm = normalize_key(key);
    let limit = match norm.chars().count() {
        0..=3 => 1,
        4..=8 => 2,
        _ => 3,
    };
    candidates
        .iter()
        .map(|c| (strsim::osa_distance(&norm, c), *c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testing::*;

    #[test]
    fn unknown_top_level_key_suggests_dbs() {
        // The seed README's own typo.
        let e = one_err("db:\n  - path: /var/lib/db\n    replicas:\n      - url: s3://bucket/db\n");
        assert_eq!(
            e,
            "litestream.yml: line 1 column 1: unknown key `db` in the top level (did you mean `dbs`?)"
        );
        let e = one_err("logging:\n  level: info\ndb:\n  - path: /x\n");
        assert!(e.contains("line 3 column 1"), "{e}");
        assert!(e.contains("did you mean `dbs`?"), "{e}");
    }

    #[test]
    fn unknown_nested_keys() {
        assert_eq!(
            one_err("dbs:\n  - path: /a.db\n    replicas:\n      - url: s3://b/p\n        retension: 72h\n"),
            "litestream.yml: line 5 column 9: unknown key `retension` in dbs[0].replicas[0] (did you mean `retention`?)"
        );
        assert_eq!(
            one_err("dbs:\n  - path: /a.db\n    monitor_interval: 1s\n"),
            "litestream.yml: line 3 column 5: unknown key `monitor_interval` in dbs[0] (did you mean `monitor-interval`?)"
        );
        assert_eq!(
            one_err("dbs:\n  - path: /a.db\n    checkpointInterval: 1s\n"),
            "litestream.yml: line 3 column 5: unknown key `checkpointInterval` in dbs[0] (did you mean `checkpoint-interval`?)"
        );
        assert_eq!(
            one_err("logging:\n  levle: debug\n"),
            "litestream.yml: line 2 column 3: unknown key `levle` in logging (did you mean `level`?)"
        );
        assert_eq!(
            one_err("dbs:\n  - path: /a.db\n    replica:\n      - path: /b\n"),
            "litestream.yml: line 3 column 5: unknown key `replica` in dbs[0] (did you mean `replicas`?)"
        );
    }

    #[test]
    fn unknown_key_at_the_wrong_level() {
        assert_eq!(
            one_err("dbs:\n  - path: /a.db\n    bucket: b\n"),
            "litestream.yml: line 3 column 5: unknown key `bucket` in dbs[0] (`bucket` is a replica key: put it under an entry of a db's `replicas:`)"
        );
        assert_eq!(
            one_err("level: debug\n"),
            "litestream.yml: line 1 column 1: unknown key `level` in the top level (`level` belongs under `logging:`)"
        );
        assert_eq!(
            one_err("path: /a.db\n"),
            "litestream.yml: line 1 column 1: unknown key `path` in the top level (`path` is a db key: put it under an entry of `dbs:`)"
        );
        assert_eq!(
            one_err("dbs:\n  - path: /a.db\n    addr: \":9090\"\n"),
            "litestream.yml: line 3 column 5: unknown key `addr` in dbs[0] (`addr` is a top-level key)"
        );
    }

    #[test]
    fn unknown_key_far_from_any_lists_the_valid_ones() {
        assert_eq!(
            one_err("logging:\n  colour: true\n"),
            "litestream.yml: line 2 column 3: unknown key `colour` in logging (valid keys here: level, type, stderr)"
        );
    }

    #[test]
    fn type_errors_name_key_place_and_line() {
        assert_eq!(
            one_err("dbs:\n  - path: /a.db\n    monitor-interval: abc\n"),
            "litestream.yml: line 3 column 23: dbs[0].monitor-interval: invalid duration \"abc\": expected a number (use e.g. 500ms, 1s, 10m, 1h30m)"
        );
        assert_eq!(
            one_err("dbs:\n  - path: /a.db\n    min-checkpoint-page-count: -1\n"),
            "litestream.yml: line 3 column 32: dbs[0].min-checkpoint-page-count: must not be negative, got -1"
        );
        assert_eq!(
            one_err("dbs:\n  - path: /a.db\n    truncate-page-count: 1.5\n"),
            "litestream.yml: line 3 column 26: dbs[0].truncate-page-count: must be a whole number, got 1.5"
        );
        assert_eq!(
            one_err("dbs:\n  - path: /a.db\n    busy-timeout: 5\n"),
            "litestream.yml: line 3 column 19: dbs[0].busy-timeout: invalid duration 5: missing unit (e.g. \"5s\" or \"5ms\")"
        );
        assert_eq!(
            one_err("dbs:\n  - [1, 2]\n"),
            "litestream.yml: line 2 column 5: dbs[0]: invalid type: sequence, expected a map of db settings (path, replicas, ...)"
        );
        assert_eq!(
            one_err("dbs:\n  path: /a.db\n"),
            "litestream.yml: line 2 column 3: dbs: invalid type: map, expected a sequence"
        );
        assert_eq!(
            one_err("logging: [debug]\n"),
            "litestream.yml: line 1 column 10: logging: invalid type: sequence, expected a map of logging settings (level, type, stderr)"
        );
        assert_eq!(
            one_err("logging:\n  level: verbose\n"),
            "litestream.yml: line 2 column 10: logging.level: unknown log level \"verbose\" (expected debug, info, warn or error)"
        );
        assert_eq!(
            one_err("logging:\n  type: xml\n"),
            "litestream.yml: line 2 column 9: logging.type: unknown log type \"xml\" (expected text or json)"
        );
        assert_eq!(
            one_err("logging:\n  stderr: maybe\n"),
            "litestream.yml: line 2 column 11: logging.stderr: invalid type: string \"maybe\", expected a boolean"
        );
        assert_eq!(
            one_err("dbs:\n  - path: /a.db\n    replicas:\n      - type: gcs\n"),
            "litestream.yml: line 4 column 15: dbs[0].replicas[0].type: unknown replica type \"gcs\" (supported: file, s3)"
        );
        assert_eq!(
            one_err("dbs:\n  - path: /a.db\n    replicas:\n      - path: /b\n        compression: zstd\n"),
            "litestream.yml: line 5 column 22: dbs[0].replicas[0].compression: unknown compression \"zstd\" (expected gzip or lz4)"
        );
        assert_eq!(
            one_err("snapshot-concurrency: many\n"),
            "litestream.yml: line 1 column 23: snapshot-concurrency: must be a whole number, got \"many\""
        );
        assert_eq!(
            one_err("just a string\n"),
            "litestream.yml: line 1 column 1: invalid type: string \"just a string\", expected a map of settings (dbs, logging, addr, ...)"
        );
        assert_eq!(
            one_err("dbs:\n  - path: /a.db\n    path: /b.db\n"),
            "litestream.yml: line 2 column 5: dbs[0]: duplicate field `path`"
        );
    }

    #[test]
    fn yaml_syntax_errors_are_one_line_with_position() {
        let e = one_err("dbs:\n  - path: x\n   bad: : y\n");
        assert!(e.starts_with("litestream.yml: line 3 column 4: "), "{e}");
        assert!(!e.contains('\n'));
        let e = one_err("dbs: [\n");
        assert!(e.starts_with("litestream.yml: line 2 column 1: "), "{e}");
    }

    #[test]
    fn suggestions_only_when_close() {
        assert_eq!(suggest("db", TOP_KEYS), Some("dbs"));
        assert_eq!(suggest("retnetion", REPLICA_KEYS), Some("retention"));
        assert_eq!(suggest("buckt", REPLICA_KEYS), Some("bucket"));
        assert_eq!(suggest("x", TOP_KEYS), None);
        assert_eq!(suggest("frobnicate", DB_KEYS), None);
        assert_eq!(
            suggest("Sync_Interval", REPLICA_KEYS),
            Some("sync-interval")
        );
        // Optimal string alignment: a swapped pair of letters is one edit, not two.
        assert_eq!(strsim::osa_distance("", "abc"), 3);
        assert_eq!(strsim::osa_distance("ab", "ba"), 1);
        assert_eq!(strsim::osa_distance("kitten", "sitting"), 3);
    }
}
