//! Object compression, chosen by an object's name suffix: gzip (`.gz`, the default) and LZ4
//! frames (`.lz4`, Litestream v0.3's format, readable by the `lz4` tool), so replicas written
//! by Litestream v0.3 restore, and replicas we write with `compression: lz4` restore with it.
//!
//! Everything streams: encoders wrap a reader of raw bytes and yield compressed bytes, decoders
//! the reverse, so memory stays bounded whatever the object size. No I/O of its own.

use std::io::{self, Read};

use flate2::read::{GzEncoder, MultiGzDecoder};

/// gzip level for WAL segments and snapshots: fast levels cost a little ratio and save a lot of
/// CPU on the db host.
const GZIP_LEVEL: u32 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Compression {
    #[default]
    Gzip,
    Lz4,
}

impl Compression {
    pub fn extension(self) -> &'static str {
        match self {
            Compression::Gzip => "gz",
            Compression::Lz4 => "lz4",
        }
    }

    pub fn from_extension(ext: &str) -> Option<Self> {
        match ext {
            "gz" => Some(Compression::Gzip),
            "lz4" => Some(Compression::Lz4),
            _ => None,
        }
    }

    /// The name used in configuration (`compression: gzip | lz4`).
    pub fn from_config(name: &str) -> Option<Self> {
        match name {
            "gzip" | "gz" => Some(Compression::Gzip),
            "lz4" => Some(Compression::Lz4),
            _ => None,
        }
    }
}

/// Wraps a reader of raw bytes into a reader of compressed bytes.
pub fn encoder<'a, R: Read + Send + 'a>(
    compression: Compression,
    raw: R,
) -> io::Result<Box<dyn Read + Send + 'a>> {
    match compression {
        Compression::Gzip => Ok(Box::new(GzEncoder::new(
            raw,
            flate2::Compression::new(GZIP_LEVEL),
        ))),
        Compression::Lz4 => Ok(Box::new(Lz4Encoder::new(raw))),
    }
}

/// Wraps a reader of compressed bytes into a reader of raw bytes. gzip objects may hold several
/// members back to back; they decode as one stream.
pub fn decoder<'a, R: Read + Send + 'a>(
    compression: Compression,
    compressed: R,
) -> io::Result<Box<dyn Read + Send + 'a>> {
    match compression {
        Compression::Gzip => Ok(Box::new(MultiGzDecoder::new(io::BufReader::new(
            compressed,
        )))),
        Compression::Lz4 => Ok(Box::new(Lz4Decoder(lz4_flex::frame::FrameDecoder::new(
            io::BufReader::new(compressed),
        )))),
    }
}

/// lz4_flex reports a corrupt frame as `ErrorKind::Other`, like a failing store; this says
/// `InvalidData` instead, so callers treat it as corruption (fail at once), not as a network
/// error worth retrying.
struct Lz4Decoder<R: Read>(lz4_flex::frame::FrameDecoder<R>);

impl<R: Read> Read for Lz4Decoder<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf).map_err(|e| {
            let corrupt = e
                .get_ref()
                .is_some_and(|inner| inner.downcast_ref::<lz4_flex::frame::Error>().is_some());
            if corrupt {
                io::Error::new(io::ErrorKind::InvalidData, e.to_string())
            } else {
                e
            }
        })
    }
}

/// LZ4 frame compression as a reader: lz4_flex's encoder is a writer, so raw bytes are pulled
/// a chunk at a time and the compressed output is served from a small buffer (one LZ4 block,
/// 64 KiB, plus what that chunk compressed to).
struct Lz4Encoder<R: Read> {
    raw: R,
    encoder: Option<lz4_flex::frame::FrameEncoder<Vec<u8>>>,
    out: Vec<u8>,
    pos: usize,
    chunk: Vec<u8>,
}

impl<R: Read> Lz4Encoder<R> {
    fn new(raw: R) -> Self {
        Lz4Encoder {
            raw,
            encoder: Some(lz4_flex::frame::FrameEncoder::new(Vec::new())),
            out: Vec::new(),
            pos: 0,
            chunk: vec![0u8; 64 * 1024],
        }
    }
}

impl<R: Read> Read for Lz4Encoder<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use std::io::Write;
        loop {
            if self.pos < self.out.len() {
                let n = buf.len().min(self.out.len() - self.pos);
                buf[..n].copy_from_slice(&self.out[self.pos..self.pos + n]);
                self.pos += n;
                return Ok(n);
            }
            self.out.clear();
            self.pos = 0;
            let Some(enc) = self.encoder.as_mut() else {
                return Ok(0);
            };
            let n = loop {
                match self.raw.read(&mut self.chunk) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    r => break r?,
                }
            };
            if n == 0 {
                let enc = self
                    .encoder
                    .take()
                    .ok_or_else(|| io::Error::other("lz4 encoder gone"))?;
                self.out = enc.finish().map_err(io::Error::other)?;
            } else {
                enc.write_all(&self.chunk[..n])?;
                std::mem::swap(enc.get_mut(), &mut self.out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gzip_round_trip_streams() {
        let raw: Vec<u8> = (0..200_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        let mut compressed = Vec::new();
        encoder(Compression::Gzip, &raw[..])
            .unwrap()
            .read_to_end(&mut compressed)
            .unwrap();
        assert!(compressed.len() < raw.len());
        let mut back = Vec::new();
        decoder(Compression::Gzip, &compressed[..])
            .unwrap()
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, raw);
    }

    #[test]
    fn multi_member_gzip_reads_as_one_stream() {
        let mut compressed = Vec::new();
        encoder(Compression::Gzip, &b"hello "[..])
            .unwrap()
            .read_to_end(&mut compressed)
            .unwrap();
        encoder(Compression::Gzip, &b"world"[..])
            .unwrap()
            .read_to_end(&mut compressed)
            .unwrap();
        let mut back = String::new();
        decoder(Compression::Gzip, &compressed[..])
            .unwrap()
            .read_to_string(&mut back)
            .unwrap();
        assert_eq!(back, "hello world");
    }

    #[test]
    fn corrupt_gzip_is_an_error_not_a_panic() {
        let mut back = Vec::new();
        let r = decoder(Compression::Gzip, &b"\x1f\x8b\x08\x00garbage"[..])
            .unwrap()
            .read_to_end(&mut back);
        assert!(r.is_err());
    }

    #[test]
    fn lz4_round_trip_streams() {
        let raw: Vec<u8> = (0..300_000u32)
            .flat_map(|i| (i % 253).to_le_bytes())
            .collect();
        let mut compressed = Vec::new();
        encoder(Compression::Lz4, &raw[..])
            .unwrap()
            .read_to_end(&mut compressed)
            .unwrap();
        assert!(compressed.len() < raw.len());
        assert_eq!(
            &compressed[..4],
            &[0x04, 0x22, 0x4d, 0x18],
            "LZ4 frame magic"
        );
        let mut back = Vec::new();
        decoder(Compression::Lz4, &compressed[..])
            .unwrap()
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, raw);
        // Empty input is a valid, empty frame.
        let mut empty = Vec::new();
        encoder(Compression::Lz4, &b""[..])
            .unwrap()
            .read_to_end(&mut empty)
            .unwrap();
        let mut back = Vec::new();
        decoder(Compression::Lz4, &empty[..])
            .unwrap()
            .read_to_end(&mut back)
            .unwrap();
        assert!(back.is_empty());
    }

    #[test]
    fn corrupt_lz4_is_an_error_not_a_panic() {
        let mut back = Vec::new();
        let r = decoder(Compression::Lz4, &b"\x04\x22\x4d\x18garbage-garbage"[..])
            .unwrap()
            .read_to_end(&mut back);
        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::InvalidData);
        // A corrupt block inside a valid frame header (found by fuzz/restore_segment, input
        // in testdata/fuzz/regressions/): corruption too, never "the store failed, retry".
        let mut frame = Vec::new();
        {
            let mut e = lz4_flex::frame::FrameEncoder::new(&mut frame);
            std::io::Write::write_all(&mut e, &[7u8; 5000]).unwrap();
            e.finish().unwrap();
        }
        let last = frame.len() - 10;
        for b in &mut frame[11..last] {
            *b = 0xff;
        }
        let r = decoder(Compression::Lz4, &frame[..])
            .unwrap()
            .read_to_end(&mut back);
        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn suffixes() {
        assert_eq!(Compression::from_extension("gz"), Some(Compression::Gzip));
        assert_eq!(Compression::from_extension("lz4"), Some(Compression::Lz4));
        assert_eq!(Compression::from_extension("zst"), None);
        assert_eq!(Compression::from_config("gzip"), Some(Compression::Gzip));
    }
}
