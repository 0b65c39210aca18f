//! The counting client: a [`ReplicaClient`] wrapper that counts every store operation into the
//! metrics' [`OpCounters`] (`litestream_replica_operation_*`), so the backends know nothing of
//! metrics and metrics knows nothing of clients.

use std::io::Read;
use std::sync::Arc;

use super::{Listing, ReplicaClient, Result, SnapshotInfo, WalSegmentInfo};
use crate::codec::Compression;
use crate::metrics::{OpCounters, Operation, Registry};

/// `inner`, counted under its replica type in `registry`; `inner` itself when that type has no
/// counters there.
pub(crate) fn wrap(inner: Arc<dyn ReplicaClient>, registry: &Registry) -> Arc<dyn ReplicaClient> {
    match registry.op_counters(inner.kind()) {
        Some(ops) => Arc::new(CountingClient { inner, ops }),
        None => inner,
    }
}

/// A client that counts what passes through it; otherwise exactly the inner client. One call
/// counts as one operation (an S3 listing of several pages counts once).
struct CountingClient {
    inner: Arc<dyn ReplicaClient>,
    ops: Arc<OpCounters>,
}

/// Counts the bytes of a GET as they are read.
struct CountingReader {
    inner: Box<dyn Read + Send>,
    ops: Arc<OpCounters>,
}

impl Read for CountingReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.ops.add_bytes(Operation::Get, n as u64);
        Ok(n)
    }
}

impl CountingClient {
    fn get(&self, r: Result<Box<dyn Read + Send>>) -> Result<Box<dyn Read + Send>> {
        self.ops.count(Operation::Get, 0);
        let inner = r?;
        Ok(Box::new(CountingReader {
            inner,
            ops: self.ops.clone(),
        }))
    }
}

impl ReplicaClient for CountingClient {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn set_object_mode(&self, mode: u32) {
        self.inner.set_object_mode(mode)
    }
    fn set_db_owner(&self, uid: u32) {
        self.inner.set_db_owner(uid)
    }
    fn write_db_id(&self, generation: &str, id: &str) -> Result<()> {
        self.ops.count(Operation::Put, id.len() as u64 + 1);
        self.inner.write_db_id(generation, id)
    }
    fn read_db_id(&self, generation: &str) -> Result<Option<String>> {
        self.ops.count(Operation::Get, 0);
        self.inner.read_db_id(generation)
    }
    fn list_generations(&self) -> Result<Listing<String>> {
        self.ops.count(Operation::List, 0);
        self.inner.list_generations()
    }
    fn list_snapshots(&self, generation: &str) -> Result<Listing<SnapshotInfo>> {
        self.ops.count(Operation::List, 0);
        self.inner.list_snapshots(generation)
    }
    fn list_wal_segments(&self, generation: &str) -> Result<Listing<WalSegmentInfo>> {
        self.ops.count(Operation::List, 0);
        self.inner.list_wal_segments(generation)
    }
    fn write_snapshot(
        &self,
        generation: &str,
        index: u32,
        compression: Compression,
        data: &mut dyn Read,
    ) -> Result<SnapshotInfo> {
        let r = self
            .inner
            .write_snapshot(generation, index, compression, data);
        self.ops
            .count(Operation::Put, r.as_ref().map(|i| i.size).unwrap_or(0));
        r
    }
    fn write_wal_segment(
        &self,
        generation: &str,
        index: u32,
        offset: u64,
        compression: Compression,
        data: &mut dyn Read,
    ) -> Result<WalSegmentInfo> {
        let r = self
            .inner
            .write_wal_segment(generation, index, offset, compression, data);
        self.ops
            .count(Operation::Put, r.as_ref().map(|i| i.size).unwrap_or(0));
        r
    }
    fn open_snapshot(&self, info: &SnapshotInfo) -> Result<Box<dyn Read + Send>> {
        self.get(self.inner.open_snapshot(info))
    }
    fn open_wal_segment(&self, info: &WalSegmentInfo) -> Result<Box<dyn Read + Send>> {
        self.get(self.inner.open_wal_segment(info))
    }
    fn open_snapshot_at(&self, info: &SnapshotInfo, offset: u64) -> Result<Box<dyn Read + Send>> {
        self.get(self.inner.open_snapshot_at(info, offset))
    }
    fn open_wal_segment_at(
        &self,
        info: &WalSegmentInfo,
        offset: u64,
    ) -> Result<Box<dyn Read + Send>> {
        self.get(self.inner.open_wal_segment_at(info, offset))
    }
    fn delete_generation(&self, generation: &str) -> Result<()> {
        self.ops.count(Operation::Delete, 0);
        self.inner.delete_generation(generation)
    }
    fn delete_snapshots(&self, snapshots: &[SnapshotInfo]) -> Result<()> {
        self.ops.count(Operation::Delete, 0);
        self.inner.delete_snapshots(snapshots)
    }
    fn delete_wal_segments(&self, segments: &[WalSegmentInfo]) -> Result<()> {
        self.ops.count(Operation::Delete, 0);
        self.inner.delete_wal_segments(segments)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::file::FileClient;
    use std::time::SystemTime;

    const G: &str = "0123456789abcdef";

    #[test]
    fn counts_each_call_once_and_get_bytes_as_read() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::new(Vec::new(), &["file"]);
        let c = wrap(
            Arc::new(FileClient::new(dir.path().join("replica"))),
            &registry,
        );
        assert_eq!(c.kind(), "file");
        let w = c
            .write_wal_segment(G, 0, 0, Compression::Gzip, &mut &b"abc"[..])
            .unwrap();
        c.list_generations().unwrap();
        c.wal_segments(G).unwrap();
        let mut got = Vec::new();
        c.open_wal_segment(&w)
            .unwrap()
            .read_to_end(&mut got)
            .unwrap();
        assert_eq!(got, b"abc");
        c.delete_wal_segments(&[w]).unwrap();
        let ops = &registry.snapshot(SystemTime::now()).ops;
        assert_eq!(ops.len(), 1);
        // GET, PUT, LIST, DELETE.
        assert_eq!(ops[0].total, [1, 1, 2, 1]);
        assert_eq!(ops[0].bytes, [3, 3, 0, 0]);
    }

    #[test]
    fn unregistered_type_is_not_wrapped() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::new(Vec::new(), &["s3"]);
        let inner: Arc<dyn ReplicaClient> = Arc::new(FileClient::new(dir.path().to_path_buf()));
        let c = wrap(inner.clone(), &registry);
        assert!(Arc::ptr_eq(&c, &inner));
    }
}
