//! The YAML schema as written: every key optional, spelled as in the file, with the key
//! lists that hints use, and deserializers for durations, counts and named values whose
//! errors carry the value's own place and line.
//!
//! No defaults and no cross-field checks here (that is `validate`); a value is refused only
//! when it cannot be read as its type.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use super::age::{check_identities, check_recipients, identity_entry, IdentityEntry};
use super::duration::parse_duration;
use super::schema::{LogLevel, ReplicaTarget};
use crate::codec::Compression;

/// Keys of each level, for "did you mean" and "belongs elsewhere" hints. A unit test checks
/// them against the raw structs.
pub(super) const TOP_KEYS: &[&str] = &[
    "addr",
    "exec",
    "access-key-id",
    "secret-access-key",
    "logging",
    "snapshot-concurrency",
    "health-max-lag",
    "dbs",
];
pub(super) const LOGGING_KEYS: &[&str] = &["level", "type", "stderr"];
pub(super) const DB_KEYS: &[&str] = &[
    "path",
    "meta-path",
    "monitor-interval",
    "checkpoint-interval",
    "busy-timeout",
    "min-checkpoint-page-count",
    "max-checkpoint-page-count",
    "truncate-page-count",
    "replicas",
];
pub(super) const REPLICA_KEYS: &[&str] = &[
    "type",
    "name",
    "url",
    "path",
    "retention",
    "retention-check-interval",
    "snapshot-interval",
    "validation-interval",
    "sync-interval",
    "compression",
    "bucket",
    "region",
    "endpoint",
    "force-path-style",
    "skip-verify",
    "access-key-id",
    "secret-access-key",
    // S3 server-side encryption (Litestream v0.5's keys).
    "sse-kms-key-id",
    "sse-customer-algorithm",
    "sse-customer-key",
    "sse-customer-key-path",
    // Client-side encryption (Litestream v0.3.13's key).
    "age",
];

#[derive(Deserialize, Default)]
#[serde(
    deny_unknown_fields,
    rename_all = "kebab-case",
    expecting = "a map of settings (dbs, logging, addr, ...)"
)]
pub(super) struct RawConfig {
    pub(super) addr: Option<String>,
    pub(super) exec: Option<String>,
    pub(super) access_key_id: Option<String>,
    #[serde(default, deserialize_with = "secret_text")]
    pub(super) secret_access_key: Option<String>,
    pub(super) logging: Option<RawLogging>,
    pub(super) snapshot_concurrency: Option<Count>,
    pub(super) health_max_lag: Option<Dur>,
    pub(super) dbs: Option<Vec<RawDb>>,
}

#[derive(Deserialize, Default)]
#[serde(
    deny_unknown_fields,
    rename_all = "kebab-case",
    expecting = "a map of logging settings (level, type, stderr)"
)]
pub(super) struct RawLogging {
    pub(super) level: Option<Level>,
    pub(super) r#type: Option<LogFormat>,
    pub(super) stderr: Option<bool>,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "kebab-case",
    expecting = "a map of db settings (path, replicas, ...)"
)]
pub(super) struct RawDb {
    pub(super) path: Option<String>,
    pub(super) meta_path: Option<String>,
    pub(super) monitor_interval: Option<Dur>,
    pub(super) checkpoint_interval: Option<Dur>,
    pub(super) busy_timeout: Option<Dur>,
    pub(super) min_checkpoint_page_count: Option<Count>,
    pub(super) max_checkpoint_page_count: Option<Count>,
    pub(super) truncate_page_count: Option<Count>,
    pub(super) replicas: Option<Vec<RawReplica>>,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "kebab-case",
    expecting = "a map of replica settings (url or type/path, ...)"
)]
pub(super) struct RawReplica {
    pub(super) r#type: Option<Kind>,
    pub(super) name: Option<String>,
    pub(super) url: Option<String>,
    pub(super) path: Option<String>,
    pub(super) retention: Option<Dur>,
    pub(super) retention_check_interval: Option<Dur>,
    pub(super) snapshot_interval: Option<Dur>,
    pub(super) validation_interval: Option<Dur>,
    pub(super) sync_interval: Option<Dur>,
    pub(super) compression: Option<Comp>,
    pub(super) bucket: Option<String>,
    pub(super) region: Option<String>,
    pub(super) endpoint: Option<String>,
    pub(super) force_path_style: Option<bool>,
    pub(super) skip_verify: Option<bool>,
    pub(super) access_key_id: Option<String>,
    #[serde(default, deserialize_with = "secret_text")]
    pub(super) secret_access_key: Option<String>,
    // S3 server-side encryption.
    pub(super) sse_kms_key_id: Option<String>,
    pub(super) sse_customer_algorithm: Option<String>,
    #[serde(default, deserialize_with = "secret_text")]
    pub(super) sse_customer_key: Option<String>,
    pub(super) sse_customer_key_path: Option<String>,
    // Client-side encryption.
    pub(super) age: Option<RawAge>,
}

/// `age:` as written. Recipients are public; identities are secrets, read through
/// [`Secrets`] so that no error can quote one. Every shape serde would refuse by quoting
/// the value (a key where the map belongs) is refused here by naming the shape only.
#[derive(Default)]
pub(super) struct RawAge {
    pub(super) recipients: Option<RecipientList>,
    pub(super) identities: Option<Secrets>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct AgeFields {
    recipients: Option<RecipientList>,
    identities: Option<Secrets>,
}

const AGE_EXPECTED: &str = "a map with `recipients` and/or `identities` lists";

/// The visitor methods for every scalar shape, each an error naming the shape and what was
/// expected, never the value: in the keys that hold secrets, the value may be one.
macro_rules! refuse_scalars {
    ($expected:expr, $value:ty) => {
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<$value, E> {
            Err(not_shown($expected, "a boolean"))
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<$value, E> {
            Err(not_shown($expected, "a number"))
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<$value, E> {
            Err(not_shown($expected, "a number"))
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<$value, E> {
            Err(not_shown($expected, "a number"))
        }
        fn visit_char<E: de::Error>(self, _: char) -> Result<$value, E> {
            Err(not_shown($expected, "a string"))
        }
        fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<$value, E> {
            Err(not_shown($expected, "bytes"))
        }
        fn visit_enum<A: de::EnumAccess<'de>>(self, _: A) -> Result<$value, A::Error> {
            Err(not_shown($expected, "a tagged value"))
        }
    };
}

/// `must be EXPECTED, not a string (not shown: it may be a key)`.
fn not_shown<E: de::Error>(expected: &str, got: &str) -> E {
    E::custom(format!(
        "must be {expected}, not {got} (the value is not shown: it may be a key)"
    ))
}

impl<'de> Deserialize<'de> for RawAge {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawAge;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(AGE_EXPECTED)
            }
            refuse_scalars!(AGE_EXPECTED, RawAge);
            fn visit_str<E: de::Error>(self, _: &str) -> Result<RawAge, E> {
                Err(not_shown(AGE_EXPECTED, "a string"))
            }
            fn visit_unit<E: de::Error>(self) -> Result<RawAge, E> {
                Ok(RawAge::default())
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, _: A) -> Result<RawAge, A::Error> {
                Err(not_shown(AGE_EXPECTED, "a list"))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<RawAge, A::Error> {
                // The derived reader keeps serde's unknown-key and duplicate-key errors
                // (which name keys, and `hints` hides a key that looks like a secret).
                let f = AgeFields::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(RawAge {
                    recipients: f.recipients,
                    identities: f.identities,
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// The `recipients` list. Recipients are public, but an identity put here by mistake must
/// not be quoted either, so no shape error shows the value.
pub(super) struct RecipientList(pub(super) Vec<String>);

const RECIPIENTS_EXPECTED: &str = "a list of recipients, one per entry (`- age1…`)";

impl<'de> Deserialize<'de> for RecipientList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RecipientList;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(RECIPIENTS_EXPECTED)
            }
            refuse_scalars!(RECIPIENTS_EXPECTED, RecipientList);
            fn visit_str<E: de::Error>(self, _: &str) -> Result<RecipientList, E> {
                Err(not_shown(RECIPIENTS_EXPECTED, "a single string"))
            }
            fn visit_unit<E: de::Error>(self) -> Result<RecipientList, E> {
                Ok(RecipientList(Vec::new()))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, _: A) -> Result<RecipientList, A::Error> {
                Err(not_shown(RECIPIENTS_EXPECTED, "a map"))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<RecipientList, A::Error> {
                let mut out = Vec::new();
                while let Some(Recipients(s)) = seq.next_element()? {
                    out.push(s);
                }
                Ok(RecipientList(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// One `recipients` entry, checked in the visitor so that an error carries its line.
pub(super) struct Recipients(pub(super) String);

impl<'de> Deserialize<'de> for Recipients {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Recipients;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(RECIPIENT_EXPECTED)
            }
            refuse_scalars!(RECIPIENT_EXPECTED, Recipients);
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Recipients, E> {
                if s.trim().is_empty() {
                    return Err(E::custom(EMPTY_KEY));
                }
                check_recipients(s)
                    .map(|_| Recipients(s.to_string()))
                    .map_err(E::custom)
            }
            fn visit_map<A: de::MapAccess<'de>>(self, _: A) -> Result<Recipients, A::Error> {
                Err(not_shown(RECIPIENT_EXPECTED, "a map"))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, _: A) -> Result<Recipients, A::Error> {
                Err(not_shown(RECIPIENT_EXPECTED, "a list"))
            }
        }
        d.deserialize_str(V)
    }
}

const RECIPIENT_EXPECTED: &str = "a recipient (age1…), or the text of a recipients file";

/// An empty entry is refused rather than skipped: an unset `$VAR` must not quietly turn
/// encryption off.
const EMPTY_KEY: &str = "is empty (an empty $VAR?); remove the entry or give the key";

/// A list of secret strings. serde's own errors quote a string of the wrong type (a single
/// identity where the list belongs would be printed whole); these visitors never do.
pub(super) struct Secrets(pub(super) Vec<String>);

/// One secret string of [`Secrets`].
struct Secret(String);

const SECRETS_EXPECTED: &str =
    "a list of identities, one per entry (`- AGE-SECRET-KEY-1…` or `- /path/to/key.txt`)";

const SECRET_EXPECTED: &str = "an identity (AGE-SECRET-KEY-1…) or the path of an identity file";

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Secret;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(SECRET_EXPECTED)
            }
            refuse_scalars!(SECRET_EXPECTED, Secret);
            fn visit_map<A: de::MapAccess<'de>>(self, _: A) -> Result<Secret, A::Error> {
                Err(not_shown(SECRET_EXPECTED, "a map"))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, _: A) -> Result<Secret, A::Error> {
                Err(not_shown(SECRET_EXPECTED, "a list"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Secret, E> {
                // Identity text is checked here, so that an error carries its line; a path
                // is resolved by `validate` and read by `load`.
                if v.trim().is_empty() {
                    return Err(E::custom(EMPTY_KEY));
                }
                match identity_entry(v) {
                    IdentityEntry::Inline => {
                        check_identities(v).map_err(E::custom)?;
                    }
                    IdentityEntry::NotAPath(why) => {
                        return Err(E::custom(format!(
                            "is neither an age identity nor the path of an identity file: it {why} (the entry is not shown: it may be a key)"
                        )))
                    }
                    IdentityEntry::Path => {}
                }
                Ok(Secret(v.to_string()))
            }
        }
        d.deserialize_str(V)
    }
}

impl<'de> Deserialize<'de> for Secrets {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Secrets;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(SECRETS_EXPECTED)
            }
            refuse_scalars!(SECRETS_EXPECTED, Secrets);
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Secrets, E> {
                Err(not_shown(SECRETS_EXPECTED, "a single string"))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, _: A) -> Result<Secrets, A::Error> {
                Err(not_shown(SECRETS_EXPECTED, "a map"))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Secrets, E> {
                Ok(Secrets(Vec::new()))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Secrets, A::Error> {
                let mut out = Vec::new();
                while let Some(Secret(s)) = seq.next_element()? {
                    out.push(s);
                }
                Ok(Secrets(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// A secret string value (`secret-access-key`, `sse-customer-key`): any shape but a string
/// is refused without quoting it.
fn secret_text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Option::<SecretText>::deserialize(d).map(|o| o.map(|s| s.0))
}

struct SecretText(String);

impl<'de> Deserialize<'de> for SecretText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        const EXPECTED: &str = "a string (the key itself)";
        impl<'de> Visitor<'de> for V {
            type Value = SecretText;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(EXPECTED)
            }
            refuse_scalars!(EXPECTED, SecretText);
            fn visit_str<E: de::Error>(self, v: &str) -> Result<SecretText, E> {
                Ok(SecretText(v.to_string()))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, _: A) -> Result<SecretText, A::Error> {
                Err(not_shown(EXPECTED, "a map"))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, _: A) -> Result<SecretText, A::Error> {
                Err(not_shown(EXPECTED, "a list"))
            }
        }
        d.deserialize_str(V)
    }
}

/// A Go-style duration string; a bare `0` is accepted too.
pub(super) struct Dur(pub(super) Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as 500ms, 1s, 10m, 1h30m")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Dur, E> {
                parse_duration(v).map(Dur).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Dur, E> {
                if v == 0 {
                    Ok(Dur(Duration::ZERO))
                } else {
                    Err(E::custom(format!(
                        "invalid duration {v}: missing unit (e.g. \"{v}s\" or \"{v}ms\")"
                    )))
                }
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Dur, E> {
                if v < 0 {
                    Err(E::custom(format!(
                        "invalid duration {v}: must not be negative"
                    )))
                } else {
                    self.visit_u64(v as u64)
                }
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Dur, E> {
                Err(E::custom(format!(
                    "invalid duration {v}: missing unit (e.g. \"{v}s\")"
                )))
            }
        }
        d.deserialize_any(V)
    }
}

/// A whole number in 0..=u32::MAX (page counts, concurrency).
pub(super) struct Count(pub(super) u32);

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Count;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a whole number")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Count, E> {
                u32::try_from(v)
                    .map(Count)
                    .map_err(|_| E::custom(format!("{v} is too large (at most {})", u32::MAX)))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Count, E> {
                if v < 0 {
                    Err(E::custom(format!("must not be negative, got {v}")))
                } else {
                    self.visit_u64(v as u64)
                }
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Count, E> {
                Err(E::custom(format!("must be a whole number, got {v}")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Count, E> {
                match v.trim().parse::<i64>() {
                    Ok(n) => self.visit_i64(n),
                    Err(_) => Err(E::custom(format!("must be a whole number, got {v:?}"))),
                }
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Count, E> {
                Err(E::custom(format!("must be a whole number, got {v}")))
            }
        }
        d.deserialize_any(V)
    }
}

/// Deserializes a string through `parse`, whose error names the accepted values. The error is
/// raised inside the visitor so that it carries the value's own place and line.
fn de_named<'de, D, T>(d: D, parse: fn(&str) -> Result<T, String>) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
{
    struct V<T>(fn(&str) -> Result<T, String>);
    impl<T> Visitor<'_> for V<T> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
            (self.0)(v).map_err(E::custom)
        }
    }
    d.deserialize_str(V(parse))
}

pub(super) struct Level(pub(super) LogLevel);

impl<'de> Deserialize<'de> for Level {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        de_named(d, |s| {
            LogLevel::from_config(s).map(Level).ok_or_else(|| {
                format!("unknown log level {s:?} (expected debug, info, warn or error)")
            })
        })
    }
}

/// `type: text` (false) or `type: json` (true).
pub(super) struct LogFormat(pub(super) bool);

impl<'de> Deserialize<'de> for LogFormat {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        de_named(d, |s| match s.to_ascii_lowercase().as_str() {
            "text" => Ok(LogFormat(false)),
            "json" => Ok(LogFormat(true)),
            _ => Err(format!("unknown log type {s:?} (expected text or json)")),
        })
    }
}

pub(super) struct Comp(pub(super) Compression);

impl<'de> Deserialize<'de> for Comp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        de_named(d, |s| {
            Compression::from_config(s)
                .map(Comp)
                .ok_or_else(|| format!("unknown compression {s:?} (expected gzip or lz4)"))
        })
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Kind {
    File,
    S3,
}

impl Kind {
    pub(super) fn name(self) -> &'static str {
        match self {
            Kind::File => "file",
            Kind::S3 => "s3",
        }
    }
    pub(super) fn of(target: &ReplicaTarget) -> Kind {
        match target {
            ReplicaTarget::File { .. } => Kind::File,
            ReplicaTarget::S3(_) => Kind::S3,
        }
    }
}

impl<'de> Deserialize<'de> for Kind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        de_named(d, |s| match s.to_ascii_lowercase().as_str() {
            "file" => Ok(Kind::File),
            "s3" => Ok(Kind::S3),
            _ => Err(format!("unknown replica type {s:?} (supported: file, s3)")),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::hints::{parse_unknown_field, split_place};
    use crate::config::testing::*;

    #[test]
    fn key_lists_match_the_schema() {
        // The hint tables must list exactly what serde accepts at each level.
        let expected = |text: &str| -> Vec<String> {
            let err = serde_norway::from_str::<RawConfig>(text).err().unwrap();
            let msg = err.to_string();
            let (_, rest) = split_place(&msg);
            parse_unknown_field(rest).unwrap().1
        };
        assert_eq!(expected("zz: 1\n"), TOP_KEYS);
        assert_eq!(expected("logging:\n  zz: 1\n"), LOGGING_KEYS);
        assert_eq!(expected("dbs:\n  - zz: 1\n"), DB_KEYS);
        assert_eq!(expected("dbs:\n  - replicas:\n    - zz: 1\n"), REPLICA_KEYS);
        assert_eq!(
            expected("dbs:\n  - replicas:\n    - age:\n        zz: 1\n"),
            super::super::age::AGE_KEYS
        );
    }

    #[test]
    fn durations_accept_bare_zero_and_strings() {
        let c = ok("dbs:\n  - path: /a.db\n    replicas:\n      - path: /b\n        snapshot-interval: 0\n        validation-interval: \"0s\"\n        retention-check-interval: 0\n        retention: 1.5h\n        sync-interval: 100us\n");
        let r = &c.dbs[0].replicas[0];
        assert_eq!(r.snapshot_interval, Duration::ZERO);
        assert_eq!(r.validation_interval, Duration::ZERO);
        assert_eq!(r.retention_check_interval, Duration::ZERO);
        assert_eq!(r.retention, secs(5400));
        assert_eq!(r.sync_interval, Duration::from_micros(100));
    }

    #[test]
    fn counts_accept_quoted_numbers() {
        let c = ok("snapshot-concurrency: \"4\"\ndbs:\n  - path: /a.db\n    min-checkpoint-page-count: \"10\"\n");
        assert_eq!(c.snapshot_concurrency, 4);
        assert_eq!(c.dbs[0].min_checkpoint_page_count, 10);
        let e = one_err("dbs:\n  - path: /a.db\n    truncate-page-count: 99999999999\n");
        assert!(
            e.contains("dbs[0].truncate-page-count: 99999999999 is too large"),
            "{e}"
        );
    }
}
