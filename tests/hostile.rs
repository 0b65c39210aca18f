//! Hostile replicas: names litestream never writes (`..`, absolute paths, over-long or
//! non-hex names, symlinks out of the replica), a segment claiming an index far beyond the
//! others, a snapshot that is not SQLite, gzip bombs. Restore fails with exit 1 and one clear
//! line, leaves nothing beside its output path, never touches the replica, and stays bounded
//! in memory and in what it writes.

mod common;
mod s3_server;

use std::fs;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use flate2::{Compress, Compression, Crc, FlushCompress};
use s3_server::*;

/// Memory a restore may use on any of these inputs (they decompress to up to 16 GiB).
const PEAK_LIMIT_KB: u64 = 64 * 1024;

/// A restore of `replica` to a fresh output dir, watching how many bytes that dir holds
/// while it runs. Returns the result, the output path and the largest total seen.
fn restore_watching(env: &Env, url: &str, extra_env: &[(&str, &str)]) -> (Out, PathBuf, u64) {
    let dir = env.fresh("out");
    fs::create_dir_all(&dir).unwrap();
    let out = dir.join("restored.db");
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (dir, stop) = (dir.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut most = 0u64;
            while !stop.load(Ordering::SeqCst) {
                most = most.max(list_tree(&dir).values().sum());
                std::thread::sleep(Duration::from_millis(2));
            }
            most
        })
    };
    let args = ["restore", "-o", out.to_str().unwrap(), url];
    let o = run_env(&env.root, &args, extra_env, Duration::from_secs(120));
    stop.store(true, Ordering::SeqCst);
    let most = watcher.join().unwrap();
    (o, out, most)
}

/// Exit 1, one line on stderr containing `needle`, nothing left in the output's directory.
fn assert_refused(o: &Out, out: &Path, needle: &str, what: &str) {
    o.assert_fails(what);
    let line = one_line(o, what);
    assert!(
        line.contains(needle),
        "{what}: expected {needle:?} in the error, got: {line}"
    );
    let dir = out.parent().unwrap();
    let left: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        left.is_empty(),
        "{what}: files left beside the output: {left:?}"
    );
    assert!(
        o.peak_kb <= PEAK_LIMIT_KB,
        "{what}: restore peaked at {} KiB",
        o.peak_kb
    );
    println!("{what}: exit 1: {line}");
}

/// A fresh copy of `replica` for one case.
fn copy_of(env: &Env, replica: &Path, name: &str) -> PathBuf {
    let dst = env.fresh(name);
    copy_tree(replica, &dst);
    dst
}

fn only_generation(replica: &Path) -> String {
    let g = generations(replica);
    assert_eq!(g.len(), 1, "{g:?}");
    g[0].clone()
}

/// A gzip member holding `prefix` then `zero_mib` MiB of zeros, built without compressing
/// the zeros more than once: after a full flush the deflate state is reset, so every further
/// MiB of zeros compresses to the same bytes. A valid gzip file (CRC and length included).
fn gzip_bomb(prefix: &[u8], zero_mib: u64) -> Vec<u8> {
    fn deflate(c: &mut Compress, input: &[u8], flush: FlushCompress, out: &mut Vec<u8>) {
        let mut consumed = 0;
        loop {
            out.reserve(64 * 1024);
            let before_in = c.total_in();
            c.compress_vec(&input[consumed..], out, flush).unwrap();
            consumed += (c.total_in() - before_in) as usize;
            if consumed == input.len() && out.len() < out.capacity() {
                break;
            }
        }
    }
    let mut c = Compress::new(Compression::best(), false);
    let mut crc = Crc::new();
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    deflate(&mut c, prefix, FlushCompress::Full, &mut out);
    crc.update(prefix);
    let mib = vec![0u8; 1 << 20];
    let mut block = Vec::new();
    deflate(&mut c, &mib, FlushCompress::Full, &mut block);
    for _ in 0..zero_mib {
        out.extend_from_slice(&block);
        crc.update(&mib);
    }
    // The compressor has seen one block of zeros; its state after a full flush is the same
    // as after any number of them, so finishing it now ends the stream we built.
    deflate(&mut c, &[], FlushCompress::Finish, &mut out);
    out.extend_from_slice(&crc.sum().to_le_bytes());
    let total = prefix.len() as u64 + (zero_mib << 20);
    out.extend_from_slice(&(total as u32).to_le_bytes());
    out
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

#[test]
fn gzip_bomb_helper_builds_a_valid_stream() {
    // The first 64 MiB decode as the prefix and zeros, and the whole stream ends where its
    // trailer says (checked on a small bomb).
    let small = gzip_bomb(b"head", 3);
    let mut all = Vec::new();
    flate2::read::GzDecoder::new(&small[..])
        .read_to_end(&mut all)
        .unwrap();
    assert_eq!(all.len(), 4 + (3 << 20));
    assert_eq!(&all[..4], b"head");
    assert!(all[4..].iter().all(|b| *b == 0));
    let big = gzip_bomb(b"", 16 * 1024);
    assert!(big.len() < 32 << 20, "bomb is {} bytes", big.len());
    let mut d = flate2::read::GzDecoder::new(&big[..]).take(64 << 20);
    let mut n = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let k = d.read(&mut buf).unwrap();
        if k == 0 {
            break;
        }
        assert!(buf[..k].iter().all(|b| *b == 0));
        n += k as u64;
    }
    assert_eq!(n, 64 << 20);
}

#[test]
fn names_litestream_never_writes_are_refused() {
    let env = Env::new("hostile-names");
    make_replica(&env);
    let g = only_generation(&env.replica);
    let seg = wal_segments(&env.replica, &g)[0].2.clone();
    let seg_bytes = fs::read(&seg).unwrap();
    let over_long = format!("{}.snapshot.gz", "0".repeat(230));

    type Plant = Box<dyn Fn(&Path)>;
    let gen = g.clone();
    let cases: Vec<(&str, Plant)> = vec![
        (
            "non-hex WAL index",
            Box::new({
                let (gen, b) = (gen.clone(), seg_bytes.clone());
                move |r: &Path| {
                    fs::write(
                        r.join(format!("generations/{gen}/wal/0000000g_00000000.wal.gz")),
                        &b,
                    )
                    .unwrap()
                }
            }),
        ),
        (
            "over-long snapshot name",
            Box::new({
                let gen = gen.clone();
                move |r: &Path| {
                    fs::write(
                        r.join(format!("generations/{gen}/snapshots/{over_long}")),
                        b"x",
                    )
                    .unwrap()
                }
            }),
        ),
        (
            "non-hex generation",
            Box::new(|r: &Path| {
                fs::create_dir_all(r.join("generations/zzzzzzzzzzzzzzzz/wal")).unwrap()
            }),
        ),
        (
            "segment symlinked to an absolute path",
            Box::new({
                let gen = gen.clone();
                move |r: &Path| {
                    std::os::unix::fs::symlink(
                        "/etc/passwd",
                        r.join(format!("generations/{gen}/wal/00000009_00000000.wal.gz")),
                    )
                    .unwrap()
                }
            }),
        ),
        (
            "snapshot symlinked out of the replica with ..",
            Box::new({
                let gen = gen.clone();
                move |r: &Path| {
                    std::os::unix::fs::symlink(
                        "../../../../outside.snapshot.gz",
                        r.join(format!("generations/{gen}/snapshots/00000009.snapshot.gz")),
                    )
                    .unwrap()
                }
            }),
        ),
        (
            "a name that is not UTF-8",
            Box::new({
                let gen = gen.clone();
                move |r: &Path| {
                    let dir = r.join(format!("generations/{gen}/wal"));
                    let name = std::ffi::OsStr::from_bytes(b"\xff\xfe.wal.gz");
                    fs::write(dir.join(name), b"x").unwrap()
                }
            }),
        ),
    ];
    for (what, plant) in cases {
        let replica = copy_of(&env, &env.replica, "case");
        plant(&replica);
        let before = list_tree(&replica);
        let (o, out, _) = restore_watching(&env, &format!("file://{}", replica.display()), &[]);
        assert_refused(&o, &out, "never writes", what);
        assert_eq!(list_tree(&replica), before, "{what}: the replica changed");
    }

    // Our own interrupted writes are not foreign: a `.tmp` beside the objects restores fine.
    let replica = copy_of(&env, &env.replica, "tmp-case");
    fs::write(
        replica.join(format!("generations/{g}/wal/00000009_00000000.wal.gz.tmp")),
        b"partial",
    )
    .unwrap();
    let (o, out, _) = restore_watching(&env, &format!("file://{}", replica.display()), &[]);
    o.assert_ok("restore beside a leftover .tmp");
    assert_integrity_ok(&out);
}

#[test]
fn an_index_far_beyond_the_others_is_a_hole() {
    let env = Env::new("hostile-far-index");
    make_replica(&env);
    let g = only_generation(&env.replica);
    let replica = copy_of(&env, &env.replica, "case");
    let (_, _, last) = wal_segments(&replica, &g).pop().unwrap();
    fs::copy(
        &last,
        replica.join(format!("generations/{g}/wal/7fffffff_00000000.wal.gz")),
    )
    .unwrap();
    let (o, out, _) = restore_watching(&env, &format!("file://{}", replica.display()), &[]);
    assert_refused(&o, &out, "missing WAL index", "segment at index 7fffffff");
}

#[test]
fn a_snapshot_that_is_not_sqlite_is_refused() {
    let env = Env::new("hostile-not-sqlite");
    make_replica(&env);
    let g = only_generation(&env.replica);
    let replica = copy_of(&env, &env.replica, "case");
    let snap = replica.join(format!("generations/{g}/snapshots/00000000.snapshot.gz"));
    assert!(snap.exists());
    fs::write(&snap, gzip(&Rng::new(7).bytes(256 * 1024))).unwrap();
    let (o, out, _) = restore_watching(&env, &format!("file://{}", replica.display()), &[]);
    assert_refused(
        &o,
        &out,
        "not a SQLite database",
        "random bytes as the snapshot",
    );
}

#[test]
fn gzip_bombs_are_bounded() {
    let env = Env::new("hostile-bombs");
    let src = make_replica(&env);
    let g = only_generation(&env.replica);
    let snap_rel = format!("generations/{g}/snapshots/00000000.snapshot.gz");
    let real_snapshot = gunzip(&env.replica.join(&snap_rel));
    let bomb_mib = 16 * 1024; // 16 GiB once decompressed

    // 1. Zeros as the snapshot: no SQLite header, refused after the first 100 bytes.
    let replica = copy_of(&env, &env.replica, "zeros");
    fs::write(replica.join(&snap_rel), gzip_bomb(b"", bomb_mib)).unwrap();
    let (o, out, most) = restore_watching(&env, &format!("file://{}", replica.display()), &[]);
    assert_refused(
        &o,
        &out,
        "not a SQLite database",
        "16 GiB of zeros as the snapshot",
    );
    assert!(most < 1 << 20, "wrote {most} bytes");

    // 2. A WAL segment whose valid frames are followed by 16 GiB of zeros: refused at the
    //    first zero frame.
    let replica = copy_of(&env, &env.replica, "wal-bomb");
    let (_, _, seg) = wal_segments(&replica, &g).pop().unwrap();
    let frames = gunzip(&seg);
    fs::write(&seg, gzip_bomb(&frames, bomb_mib)).unwrap();
    let (o, out, most) = restore_watching(&env, &format!("file://{}", replica.display()), &[]);
    assert_refused(
        &o,
        &out,
        "checksum",
        "16 GiB of zeros after a segment's frames",
    );
    assert!(most < 64 << 20, "wrote {most} bytes");

    // 3. The real snapshot followed by 16 GiB of zeros: SQLite's own size (the header's) is
    //    all that is read or written, so this restores the right data, quickly and bounded.
    let replica = copy_of(&env, &env.replica, "tail-bomb");
    fs::write(replica.join(&snap_rel), gzip_bomb(&real_snapshot, bomb_mib)).unwrap();
    let (o, out, most) = restore_watching(&env, &format!("file://{}", replica.display()), &[]);
    o.assert_ok("snapshot with 16 GiB of trailing zeros");
    assert_integrity_ok(&out);
    assert_eq!(table_digest(&out, "t"), src, "restored data");
    assert!(most < 64 << 20, "wrote {most} bytes");
    assert!(o.peak_kb <= PEAK_LIMIT_KB, "peak {} KiB", o.peak_kb);
    println!(
        "tail bomb: restored the right rows, at most {most} bytes on disk, peak {} KiB",
        o.peak_kb
    );
}

#[test]
fn s3_keys_with_dot_dot_absolute_or_over_long_are_refused() {
    if !s3s_fs_available() {
        return;
    }
    let env = Env::new("hostile-s3");
    let s3 = S3Server::start(&env.root.join("s3"));
    let y = format!(
        "dbs:\n  - path: \"{}\"\n    monitor-interval: 100ms\n    replicas:\n{}",
        env.db.display(),
        s3.replica_yaml(SECRET_KEY, "100ms")
    );
    fs::write(&env.config, y).unwrap();
    let app = create_app_db(&env.db, 4096);
    let mut d = env.start("daemon");
    tx(&app, |c| {
        for id in 1..=20 {
            insert_row(c, id, 3000);
        }
    });
    let creds = [
        ("LITESTREAM_ACCESS_KEY_ID", ACCESS_KEY),
        ("LITESTREAM_SECRET_ACCESS_KEY", SECRET_KEY),
    ];
    let ok = wait_until(DEADLINE, || {
        d.assert_alive();
        let (o, out, _) = restore_watching(&env, &s3.url(), &creds);
        o.code == Some(0) && id_summary(&out) == (20, 1, 20)
    });
    assert!(ok, "the S3 replica never held the 20 rows");
    d.stop_ok();
    let g = only_generation(&s3.replica_dir());
    let base = format!("{PREFIX}/generations/{g}");
    let cases = [
        (
            "key with ..",
            format!("{base}/wal/../../../../../../tmp/evil.wal.gz"),
        ),
        ("absolute key", format!("{base}/wal//etc/passwd")),
        (
            "over-long key",
            format!("{base}/snapshots/{}.snapshot.gz", "0".repeat(900)),
        ),
        (
            "non-hex index",
            format!("{base}/wal/0000000x_00000000.wal.gz"),
        ),
    ];
    for (what, key) in cases {
        s3.proxy.inject_list_keys(vec![key]);
        let (o, out, _) = restore_watching(&env, &s3.url(), &creds);
        assert_refused(&o, &out, "never writes", what);
        assert!(
            !Path::new("/tmp/evil.wal.gz").exists(),
            "{what}: something was written outside"
        );
    }
    s3.proxy.inject_list_keys(Vec::new());
    let (o, out, _) = restore_watching(&env, &s3.url(), &creds);
    o.assert_ok("restore once the store lists only our keys");
    assert_eq!(id_summary(&out), (20, 1, 20));
}
