//! The loader: the one place in `config` that touches the outside world. It reads the
//! configuration file, the process environment (`$VAR` values, `$HOME`,
//! `$LITESTREAM_CONFIG`), the working directory and `/etc/passwd`, then hands plain values
//! to the pure [`Config::parse`].
//!
//! It must not parse or check anything itself: every rule lives in the pure modules, so
//! that tests and the fuzzer see exactly what a real load sees.

use std::path::{Path, PathBuf};

use super::schema::Config;

/// `$LITESTREAM_CONFIG` when set and not empty, else `/etc/litestream.yml`.
pub(crate) fn default_config_path() -> PathBuf {
    match std::env::var_os("LITESTREAM_CONFIG") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from("/etc/litestream.yml"),
    }
}

impl Config {
    /// Reads the file at `path` and parses it with the real environment, working directory
    /// and home directory.
    pub(crate) fn load(path: &Path, expand_env: bool) -> anyhow::Result<Config> {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                anyhow::bail!("config file not found: {}", path.display())
            }
            Err(e) => anyhow::bail!("cannot read config {}: {}", path.display(), e),
        };
        let text = String::from_utf8(bytes).map_err(|e| {
            anyhow::anyhow!(
                "cannot read config {}: not UTF-8 text (invalid byte at offset {})",
                path.display(),
                e.utf8_error().valid_up_to()
            )
        })?;
        let cwd = std::env::current_dir()
            .map_err(|e| anyhow::anyhow!("cannot read the working directory: {e}"))?;
        let home = home_dir();
        let env = |name: &str| std::env::var_os(name).map(|v| v.to_string_lossy().into_owned());
        let config = Config::parse(
            &text,
            &path.display().to_string(),
            expand_env,
            &env,
            &cwd,
            home.as_deref(),
        )?;
        Ok(config)
    }
}

/// `$HOME`, else the home directory of the effective user in `/etc/passwd` (read directly, as
/// Go's pure `os/user` does, so static binaries need no NSS).
fn home_dir() -> Option<PathBuf> {
    if let Some(h) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        return Some(PathBuf::from(h));
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() }.to_string();
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.len() >= 7 && fields[2] == uid && !fields[5].is_empty())
            .then(|| PathBuf::from(fields[5]))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_reads_files_and_reports_missing_ones() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.yml");
        let e = Config::load(&missing, true).unwrap_err().to_string();
        assert_eq!(e, format!("config file not found: {}", missing.display()));

        let e = Config::load(dir.path(), true).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("cannot read config {}: ", dir.path().display())),
            "{e}"
        );

        let path = dir.path().join("litestream.yml");
        std::fs::write(
            &path,
            "dbs:\n  - path: /data/app.db\n    replicas:\n      - url: s3://b/p\n",
        )
        .unwrap();
        let c = Config::load(&path, true).unwrap();
        assert_eq!(c.dbs[0].path, PathBuf::from("/data/app.db"));
        assert_eq!(c.source, path.display().to_string());

        std::fs::write(&path, "db:\n  - path: /data/app.db\n").unwrap();
        let e = Config::load(&path, true).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "{}: line 1 column 1: unknown key `db` in the top level (did you mean `dbs`?)",
                path.display()
            )
        );

        std::fs::write(&path, [0xff, 0xfe, b'\n']).unwrap();
        let e = Config::load(&path, true).unwrap_err().to_string();
        assert!(e.contains("not UTF-8"), "{e}");
    }

    #[test]
    fn default_config_path_is_etc_or_env() {
        // Only checks the fallback shape: the variable may be set in the test environment.
        let p = default_config_path();
        match std::env::var_os("LITESTREAM_CONFIG") {
            Some(v) if !v.is_empty() => assert_eq!(p, PathBuf::from(v)),
            _ => assert_eq!(p, PathBuf::from("/etc/litestream.yml")),
        }
    }
}
