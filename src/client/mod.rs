//! The replica-client trait: the one interface between the engine (replica thread, restore,
//! listing commands) and a store (a directory, an S3 bucket).
//!
//! A client knows the replica tree of `layout` and nothing of SQLite, WAL or positions beyond
//! names. It moves already-compressed bytes; compression is chosen by the caller and recorded
//! in the object name. Missing objects are reported as [`NotFound`] so callers can tell "absent"
//! from "broken".

pub mod counting;
pub mod file;
pub mod s3;

use std::io::Read;
use std::time::{Instant, SystemTime};

use crate::codec::Compression;

/// What a store operation returns: any error, with [`NotFound`] somewhere in its chain for a
/// missing object.
pub type Result<T> = anyhow::Result<T>;

/// A snapshot object as listed by a store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// The generation whose `snapshots/` holds it.
    pub generation: String,
    /// The WAL index the snapshot was taken at; restore replays that index on top of it.
    pub index: u32,
    /// Compressed size in bytes, as stored.
    pub size: u64,
    /// From the store: file mtime, S3 LastModified.
    pub created: SystemTime,
    /// How the object is compressed (from its name's suffix).
    pub compression: Compression,
}

impl SnapshotInfo {
    /// The snapshot a store lists under `name` (a file name in `snapshots/`); `None` for a
    /// name that is not one of ours.
    pub(crate) fn from_name(
        generation: &str,
        name: &str,
        size: u64,
        created: SystemTime,
    ) -> Option<Self> {
        let (index, compression) = crate::layout::parse_snapshot_name(name)?;
        Some(SnapshotInfo {
            generation: generation.to_string(),
            index,
            size,
            created,
            compression,
        })
    }
}

/// A WAL segment object as listed by a store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalSegmentInfo {
    /// The generation whose `wal/` holds it.
    pub generation: String,
    /// The WAL index (one WAL life) the segment belongs to.
    pub index: u32,
    /// Byte offset in that index's WAL where the segment's uncompressed bytes start.
    pub offset: u64,
    /// Compressed size in bytes, as stored.
    pub size: u64,
    /// From the store: file mtime, S3 LastModified.
    pub created: SystemTime,
    /// How the object is compressed (from its name's suffix).
    pub compression: Compression,
}

impl WalSegmentInfo {
    /// The WAL segment a store lists under `name` (a file name in `wal/`); `None` for a name
    /// that is not one of ours.
    pub(crate) fn from_name(
        generation: &str,
        name: &str,
        size: u64,
        created: SystemTime,
    ) -> Option<Self> {
        let (index, offset, compression) = crate::layout::parse_wal_segment_name(name)?;
        Some(WalSegmentInfo {
            generation: generation.to_string(),
            index,
            offset,
            size,
            created,
            compression,
        })
    }
}

/// The error for an object or generation that is not in the store.
#[derive(Debug)]
pub struct NotFound(pub String);

impl std::fmt::Display for NotFound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "not found: {}", self.0)
    }
}

impl std::error::Error for NotFound {}

/// True when `err` (or anything in its chain) is a [`NotFound`].
pub fn is_not_found(err: &anyhow::Error) -> bool {
    err.chain().any(|e| e.downcast_ref::<NotFound>().is_some())
}

/// One replica directory's listing: the objects this tool recognises, and every other name
/// found there. `foreign` holds paths relative to the replica root (`generations/…/wal/x`),
/// except our own interrupted writes (`layout::is_temp_name`). The daemon and the listing
/// commands ignore foreign names; restore refuses a replica that holds any, because a name we
/// never write (`..`, an absolute path, a non-hex index) means someone else writes there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listing<T> {
    /// The objects (or generation ids) we recognise, sorted.
    pub items: Vec<T>,
    /// Every other name found, relative to the replica root.
    pub foreign: Vec<String>,
}

/// A replica store. Implementations must be usable from several threads at once (restore
/// downloads in parallel). Listings are sorted: generations by id, snapshots by index, WAL
/// segments by (index, offset). Names that do not parse are reported as foreign, never an
/// error.
pub trait ReplicaClient: Send + Sync {
    /// `file` or `s3`.
    fn kind(&self) -> &'static str;
    /// Where the replica points (a path, `s3://bucket/prefix`), for logs. Never a secret.
    fn describe(&self) -> String;

    /// The mode new objects get where the store has modes (file replicas): the db file's,
    /// so a replica never lets more people read the data than the database does.
    fn set_object_mode(&self, _mode: u32) {}

    /// The db file's owner, who may own a file replica's directory besides root and us
    /// (they can rewrite the database itself, so owning its backups gives them no more).
    fn set_db_owner(&self, _uid: u32) {}

    /// From now on no request runs past `deadline` (the shutdown's): each is bounded by the
    /// time left, and none starts or is retried after it. `None` lifts the bound.
    fn set_deadline(&self, _deadline: Option<Instant>) {}

    /// Aborts the uploads in progress that would otherwise leave partial data in the store
    /// (S3 multipart uploads); for the way out, when the process exits before they finish.
    fn abort_uploads(&self) {}

    /// Removes partial uploads that an earlier process left behind (S3: multipart uploads of
    /// our keys older than an hour); returns how many. Called once when a replica starts.
    fn clean_up_stale_uploads(&self) -> Result<usize> {
        Ok(0)
    }

    /// Whether objects come over a network (S3) rather than from a local directory: restore
    /// then downloads each WAL index whole into a local spool file before decoding it, so
    /// downloads run in parallel instead of at the pace of the applier. Derived from `kind`
    /// so that wrappers which forward `kind` (the counting client) need nothing more.
    fn is_remote(&self) -> bool {
        self.kind() != "file"
    }

    /// Generation ids in the store, and the foreign names beside them.
    fn list_generations(&self) -> Result<Listing<String>>;
    /// Snapshots of one generation; an unknown generation lists as empty.
    fn list_snapshots(&self, generation: &str) -> Result<Listing<SnapshotInfo>>;
    /// WAL segments of one generation; an unknown generation lists as empty.
    fn list_wal_segments(&self, generation: &str) -> Result<Listing<WalSegmentInfo>>;

    /// Generation ids, foreign names ignored.
    fn generations(&self) -> Result<Vec<String>> {
        Ok(self.list_generations()?.items)
    }
    /// Snapshots of one generation, foreign names ignored.
    fn snapshots(&self, generation: &str) -> Result<Vec<SnapshotInfo>> {
        Ok(self.list_snapshots(generation)?.items)
    }
    /// WAL segments of one generation, foreign names ignored.
    fn wal_segments(&self, generation: &str) -> Result<Vec<WalSegmentInfo>> {
        Ok(self.list_wal_segments(generation)?.items)
    }

    /// Stores a snapshot atomically: readers see the whole object or none of it.
    /// `data` yields the compressed bytes.
    fn write_snapshot(
        &self,
        generation: &str,
        index: u32,
        compression: Compression,
        data: &mut dyn Read,
    ) -> Result<SnapshotInfo>;

    /// Stores a WAL segment atomically. `data` yields the compressed bytes.
    fn write_wal_segment(
        &self,
        generation: &str,
        index: u32,
        offset: u64,
        compression: Compression,
        data: &mut dyn Read,
    ) -> Result<WalSegmentInfo>;

    /// The compressed bytes of a snapshot; [`NotFound`] when it is gone.
    fn open_snapshot(&self, info: &SnapshotInfo) -> Result<Box<dyn Read + Send>>;
    /// The compressed bytes of a WAL segment; [`NotFound`] when it is gone.
    fn open_wal_segment(&self, info: &WalSegmentInfo) -> Result<Box<dyn Read + Send>>;

    /// The compressed bytes of a snapshot from byte `offset` on: how restore resumes a
    /// download the store cut short. Stores that can seek or send a range override this; the
    /// default reads and drops the first `offset` bytes.
    fn open_snapshot_at(&self, info: &SnapshotInfo, offset: u64) -> Result<Box<dyn Read + Send>> {
        skip_to(self.open_snapshot(info)?, offset)
    }
    /// The compressed bytes of a WAL segment from byte `offset` on (see `open_snapshot_at`).
    fn open_wal_segment_at(
        &self,
        info: &WalSegmentInfo,
        offset: u64,
    ) -> Result<Box<dyn Read + Send>> {
        skip_to(self.open_wal_segment(info)?, offset)
    }

    /// Writes the marker naming the db (`db::identity`) that writes `generation`.
    fn write_db_id(&self, _generation: &str, _id: &str) -> Result<()> {
        Ok(())
    }

    /// The id in `generation`'s marker; `None` when it has none (older versions, Litestream
    /// v0.3) or it is not an id.
    fn read_db_id(&self, _generation: &str) -> Result<Option<String>> {
        Ok(None)
    }

    /// Removes a whole generation (retention, once none of its snapshots is kept).
    fn delete_generation(&self, generation: &str) -> Result<()>;
    /// Removes these snapshots.
    fn delete_snapshots(&self, snapshots: &[SnapshotInfo]) -> Result<()>;
    /// Removes these WAL segments.
    fn delete_wal_segments(&self, segments: &[WalSegmentInfo]) -> Result<()>;
}

/// `r` with its first `offset` bytes read and dropped; an object shorter than that is an
/// error (the caller retries it as any failed download).
pub(crate) fn skip_to(mut r: Box<dyn Read + Send>, offset: u64) -> Result<Box<dyn Read + Send>> {
    let skipped = std::io::copy(&mut (&mut r).take(offset), &mut std::io::sink())?;
    if skipped != offset {
        anyhow::bail!("the object ended after {skipped} bytes, before offset {offset}");
    }
    Ok(r)
}

/// The client for a configured replica; an error names the replica ("replica NAME: …")
/// once, here, so callers add only their own context.
pub(crate) fn open(
    cfg: &crate::config::ReplicaConfig,
) -> Result<std::sync::Arc<dyn ReplicaClient>> {
    match &cfg.target {
        crate::config::ReplicaTarget::File { path } => {
            Ok(std::sync::Arc::new(file::FileClient::new(path.clone())))
        }
        crate::config::ReplicaTarget::S3(s3) => Ok(std::sync::Arc::new(
            s3::S3Client::new(&cfg.name, s3)
                .map_err(|e| e.context(format!("replica {}", cfg.name)))?,
        )),
    }
}

/// Reads a marker's text (at most 64 bytes) as an id (`read_db_id`): absent or not an id is
/// `None`.
pub(crate) fn read_id(r: Result<Box<dyn Read + Send>>) -> Result<Option<String>> {
    let r = match r {
        Ok(r) => r,
        Err(e) if is_not_found(&e) => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut text = String::new();
    // Not UTF-8 is simply not an id.
    let _ = r.take(64).read_to_string(&mut text);
    let id = text.trim();
    Ok(crate::db::identity::is_db_id(id).then(|| id.to_string()))
}
