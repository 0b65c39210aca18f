//! Local paths in the configuration: `~` expansion, relative paths against the working
//! directory, and lexical clean-up (`.` and `..`), as Go's `filepath.Abs` does.
//!
//! Pure: the working and home directories come in as arguments; nothing here looks at the
//! file system or the environment, and no path is followed through symlinks.

use std::path::{Component, Path, PathBuf};

/// `~` and `~/…` from `home`; a relative path against `cwd`; then cleaned lexically (`.` and
/// `..` removed, as Go's `filepath.Abs` does).
pub(super) fn resolve_path(raw: &str, cwd: &Path, home: Option<&Path>) -> Result<PathBuf, String> {
    if raw.is_empty() {
        return Err("must not be empty".to_string());
    }
    let joined = if raw == "~" || raw.starts_with("~/") {
        let home = home.ok_or_else(|| {
            format!(
                "cannot expand `~` in {raw:?}: no home directory is known (use an absolute path)"
            )
        })?;
        home.join(raw[1..].trim_start_matches('/'))
    } else {
        cwd.join(raw)
    };
    Ok(clean_path(&joined))
}

/// Default metadata directory of the db at `db_path`: `<dir>/.<file>-litestream`.
pub fn default_meta_dir(db_path: &Path) -> PathBuf {
    let dir = db_path.parent().unwrap_or_else(|| Path::new("/"));
    let file = db_path
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    dir.join(format!(".{file}-litestream"))
}

pub(super) fn clean_path(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    let mut normals = 0usize;
    for c in p.components() {
        match c {
            Component::Prefix(_) | Component::RootDir => out.push(c.as_os_str()),
            Component::CurDir => {}
            Component::ParentDir => {
                if normals > 0 {
                    out.pop();
                    normals -= 1;
                } else if !out.has_root() {
                    out.push("..");
                }
            }
            Component::Normal(n) => {
                out.push(n);
                normals += 1;
            }
        }
    }
    if out.as_os_str().is_empty() {
        out.push(".");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testing::*;
    use crate::config::Config;

    #[test]
    fn db_and_replica_paths_resolve() {
        let c = ok("dbs:\n  - path: ~/app.db\n    meta-path: \"~/meta\"\n    replicas:\n      - path: ../up\n      - path: ~/bk\n        name: home\n  - path: ./sub/../rel.db\n    meta-path: /abs/./meta/\n  - path: /abs/app.db\n");
        assert_eq!(c.dbs[0].path, PathBuf::from("/home/user/app.db"));
        assert_eq!(c.dbs[0].meta_path, Some(PathBuf::from("/home/user/meta")));
        assert_eq!(file_path(&c.dbs[0].replicas[0]), Path::new("/work/up"));
        assert_eq!(file_path(&c.dbs[0].replicas[1]), Path::new("/home/user/bk"));
        assert_eq!(c.dbs[1].path, PathBuf::from("/work/dir/rel.db"));
        assert_eq!(c.dbs[1].meta_path, Some(PathBuf::from("/abs/meta")));
        assert_eq!(c.dbs[2].path, PathBuf::from("/abs/app.db"));
        for db in &c.dbs {
            assert!(db.path.is_absolute());
        }
        let c = ok("dbs:\n  - path: /a.db\n    meta-path: \"~\"\n");
        assert_eq!(c.dbs[0].meta_path, Some(PathBuf::from("/home/user")));
        // `~user` is not expanded (as in Litestream): it is a relative name.
        let c = ok("dbs:\n  - path: ~bob/app.db\n");
        assert_eq!(c.dbs[0].path, PathBuf::from("/work/dir/~bob/app.db"));
        // `..` above the root stays at the root.
        let c = ok("dbs:\n  - path: /../../a.db\n");
        assert_eq!(c.dbs[0].path, PathBuf::from("/a.db"));
    }

    #[test]
    fn tilde_without_a_home_is_an_error() {
        let env = env_of(&[]);
        let e = Config::parse(
            "dbs:\n  - path: ~/app.db\n",
            SRC,
            true,
            &env,
            Path::new("/w"),
            None,
        )
        .unwrap_err();
        assert_eq!(
            e.problems,
            vec!["litestream.yml: dbs[0].path: cannot expand `~` in \"~/app.db\": no home directory is known (use an absolute path)"]
        );
    }
}
