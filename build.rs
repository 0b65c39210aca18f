//! Build script: records the git commit the binary is built from, for `litestream version`.
//!
//! Runs `git rev-parse` on the source tree (no network); outside a git checkout, or without
//! git, the commit is "unknown". Reruns when HEAD moves so a new commit is never mislabelled.

use std::path::PathBuf;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

fn main() {
    println!("cargo:rerun-if-env-changed=LITESTREAM_COMMIT");
    let commit = std::env::var("LITESTREAM_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=LITESTREAM_COMMIT={commit}");
    // HEAD itself (a branch switch), the branch's ref (a commit) and packed-refs (a gc).
    if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        println!(
            "cargo:rerun-if-changed={}",
            PathBuf::from(&dir).join("HEAD").display()
        );
    }
    // Only paths that exist: cargo counts a missing one as changed on every build, which
    // rebuilt the crate (and the LTO static binary) each time in a repo without packed-refs.
    let watch = |p: PathBuf| {
        if p.exists() {
            println!("cargo:rerun-if-changed={}", p.display());
        }
    };
    if let Some(common) = git(&["rev-parse", "--path-format=absolute", "--git-common-dir"]) {
        let common = PathBuf::from(common);
        watch(common.join("packed-refs"));
        if let Some(r) = git(&["symbolic-ref", "-q", "HEAD"]) {
            let loose = common.join(r);
            // A ref kept only in packed-refs becomes a loose file at the next commit: then
            // its directory changes.
            match loose.parent() {
                Some(dir) if !loose.exists() => watch(dir.to_path_buf()),
                _ => watch(loose),
            }
        }
    }
}
