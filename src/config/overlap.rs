//! No two of the places the daemon owns may nest: each db file, each db's meta dir (its shadow
//! WAL, which the daemon's clean-up prunes), each file replica's directory (which retention
//! prunes). A replica inside a meta dir has its old generations deleted by the shadow clean-up
//! without a log line; a meta dir or a db inside a replica shows up there as foreign names
//! that restore refuses; two nested replicas read each other's objects as junk. Equal places
//! of one kind (two dbs on one file, two replicas on one directory, one meta-path twice) are
//! reported where they are built; this file reports every other pair.
//!
//! Pure and lexical: the paths are already absolute and cleaned; links are not followed
//! (nothing here looks at the file system).

use std::path::PathBuf;

use super::schema::{DbConfig, ReplicaTarget};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Db,
    Meta,
    Replica,
}

/// One place the daemon owns: what it is, where the config sets it, and the path.
struct Place {
    kind: Kind,
    /// `dbs[0].path`, `dbs[0].meta-path`, `dbs[0].replicas[1]`.
    key: String,
    /// `dbs[0]'s meta dir` and the like, for the message.
    what: String,
    path: PathBuf,
}

/// Every pair of nested places, each as (config key, message), in config order.
pub(super) fn overlaps(dbs: &[DbConfig]) -> Vec<(String, String)> {
    // An empty path was already reported as missing.
    let places: Vec<Place> = places(dbs)
        .into_iter()
        .filter(|p| !p.path.as_os_str().is_empty())
        .collect();
    let mut out = Vec::new();
    for (i, a) in places.iter().enumerate() {
        for b in &places[..i] {
            if a.path == b.path && a.kind == b.kind {
                continue; // reported where it is built
            }
            if is_db_in_meta(a, b) || is_db_in_meta(b, a) {
                continue;
            }
            let (inner, outer) = if a.path.starts_with(&b.path) {
                (a, b)
            } else if b.path.starts_with(&a.path) {
                (b, a)
            } else {
                continue;
            };
            let relation = if inner.path == outer.path {
                "is the same directory as"
            } else {
                "is inside"
            };
            out.push((
                a.key.clone(),
                format!(
                    "{} {} {relation} {} {}; {}",
                    inner.what,
                    inner.path.display(),
                    outer.what,
                    outer.path.display(),
                    fix(inner.kind, outer.kind)
                ),
            ));
        }
    }
    out
}

/// A db file in a meta dir (`meta-path:` set to the db's own directory) is harmless: the
/// daemon only ever touches its own names there (`generations/`, `generation`, `lock`).
fn is_db_in_meta(db: &Place, meta: &Place) -> bool {
    db.kind == Kind::Db && meta.kind == Kind::Meta && db.path.starts_with(&meta.path)
}

fn places(dbs: &[DbConfig]) -> Vec<Place> {
    let mut places = Vec::new();
    for (i, db) in dbs.iter().enumerate() {
        places.push(Place {
            kind: Kind::Db,
            key: format!("dbs[{i}].path"),
            what: format!("the database of dbs[{i}]"),
            path: db.path.clone(),
        });
        let (key, what) = match db.meta_path {
            Some(_) => (
                format!("dbs[{i}].meta-path"),
                format!("the meta-path of dbs[{i}]"),
            ),
            None => (
                format!("dbs[{i}].path"),
                format!("the meta dir of dbs[{i}]"),
            ),
        };
        places.push(Place {
            kind: Kind::Meta,
            key,
            what,
            path: db.meta_dir(),
        });
        for (k, r) in db.replicas.iter().enumerate() {
            if let ReplicaTarget::File { path } = &r.target {
                places.push(Place {
                    kind: Kind::Replica,
                    key: format!("dbs[{i}].replicas[{k}]"),
                    what: format!("the replica dbs[{i}].replicas[{k}]"),
                    path: path.clone(),
                });
            }
        }
    }
    places
}

/// What to do about `inner` nested in `outer`.
fn fix(inner: Kind, outer: Kind) -> &'static str {
    match (inner, outer) {
        (Kind::Replica, Kind::Meta) => {
            "the daemon's clean-up of its meta dir would delete the replica's generations: put the replica outside it"
        }
        (Kind::Meta, Kind::Replica) | (Kind::Db, Kind::Replica) => {
            "restore would find foreign files in the replica: give the replica a directory of its own"
        }
        (Kind::Replica, Kind::Replica) => {
            "each would see the other's files as foreign: give each replica a directory of its own"
        }
        _ => "give each its own directory",
    }
}

#[cfg(test)]
mod tests {
    use crate::config::testing::*;

    #[test]
    fn a_replica_inside_its_own_meta_dir_is_refused() {
        // The probe's case: the shadow clean-up deleted the replica's old generation.
        assert_eq!(
            one_err("dbs:\n  - path: /d/app.db\n    replicas:\n      - path: /d/.app.db-litestream/rep\n"),
            "litestream.yml: dbs[0].replicas[0]: the replica dbs[0].replicas[0] /d/.app.db-litestream/rep is inside the meta dir of dbs[0] /d/.app.db-litestream; the daemon's clean-up of its meta dir would delete the replica's generations: put the replica outside it"
        );
        // With a meta-path, and as a file:// url.
        let e = one_err("dbs:\n  - path: /d/app.db\n    meta-path: /m\n    replicas:\n      - url: file:///m/rep\n");
        assert!(e.starts_with("litestream.yml: dbs[0].replicas[0]: the replica dbs[0].replicas[0] /m/rep is inside the meta-path of dbs[0] /m;"), "{e}");
    }

    #[test]
    fn a_replica_inside_another_dbs_meta_dir_is_refused() {
        let e = one_err("dbs:\n  - path: /d/a.db\n  - path: /e/b.db\n    replicas:\n      - path: /d/.a.db-litestream/b\n");
        assert!(e.starts_with("litestream.yml: dbs[1].replicas[0]: the replica dbs[1].replicas[0] /d/.a.db-litestream/b is inside the meta dir of dbs[0]"), "{e}");
    }

    #[test]
    fn a_meta_dir_or_a_db_inside_a_replica_is_refused() {
        // A replica in the db's own directory holds the default meta dir and the db itself.
        let p = errs("dbs:\n  - path: /d/app.db\n    replicas:\n      - path: /d\n");
        assert_eq!(p.len(), 2, "{p:#?}");
        assert!(p[0].starts_with("litestream.yml: dbs[0].replicas[0]: the database of dbs[0] /d/app.db is inside the replica dbs[0].replicas[0] /d;"), "{}", p[0]);
        assert!(p[1].contains("the meta dir of dbs[0] /d/.app.db-litestream is inside the replica dbs[0].replicas[0] /d; restore would find foreign files"), "{}", p[1]);
        let e = one_err("dbs:\n  - path: /d/app.db\n    meta-path: /bk/meta\n    replicas:\n      - path: /bk\n");
        assert!(
            e.contains(
                "the meta-path of dbs[0] /bk/meta is inside the replica dbs[0].replicas[0] /bk"
            ),
            "{e}"
        );
    }

    #[test]
    fn nested_replicas_and_a_replica_equal_to_a_meta_dir_are_refused() {
        let e = one_err("dbs:\n  - path: /d/a.db\n    replicas:\n      - path: /bk\n  - path: /d/b.db\n    replicas:\n      - path: /bk/b\n");
        assert!(e.starts_with("litestream.yml: dbs[1].replicas[0]: the replica dbs[1].replicas[0] /bk/b is inside the replica dbs[0].replicas[0] /bk;"), "{e}");
        let e = one_err(
            "dbs:\n  - path: /d/a.db\n    meta-path: /m\n    replicas:\n      - path: /m\n",
        );
        assert!(
            e.contains("/m is the same directory as the meta-path of dbs[0] /m"),
            "{e}"
        );
    }

    #[test]
    fn separate_places_and_s3_replicas_pass() {
        ok("dbs:\n  - path: /d/a.db\n    replicas:\n      - path: /bk/a\n      - url: s3://b/d/.a.db-litestream\n  - path: /d/b.db\n    meta-path: /m/b\n    replicas:\n      - path: /bk/b\n  - path: /d/ab.db\n    replicas:\n      - path: /bk/ab\n");
        // Prefixes that are not whole components do not nest.
        ok("dbs:\n  - path: /d/a.db\n    replicas:\n      - path: /bk\n  - path: /d/b.db\n    replicas:\n      - path: /bk2\n");
        // A meta-path that holds the db file itself.
        ok("dbs:\n  - path: /d/a.db\n    meta-path: /d\n    replicas:\n      - path: /bk\n");
    }
}
