//! Client-side encryption of replica objects with age, as Litestream v0.3.13 writes them:
//! an object is `age(compressed(raw))`, its name (and suffix, `.lz4` or `.gz`) unchanged,
//! encrypted to every recipient of the replica's `age:` config. Anyone holding the store
//! sees only ciphertext; only an identity decrypts.
//!
//! [`Keys`] are one replica's parsed recipients and identities. [`encrypt`] wraps a reader of
//! compressed bytes into a reader of ciphertext (a replica with no recipient writes in the
//! clear, as v0.3.13 does); [`Objects::open`] is the one place an object's bytes are read
//! back: it tells an age object from a plain one by its first bytes, decrypts it, and keeps
//! a restore from mixing the two kinds. Messages name objects, replicas and public keys,
//! never an identity.
//!
//! Streams only: at most one age chunk (64 KiB) and one read buffer per stream; no I/O of
//! its own. The cryptography is the `age` crate's; nothing here is hand-written crypto.

// age 0.13 marks X25519 deprecated (not post-quantum); it is the only key type Litestream
// v0.3.13 reads and writes, so it is the one this module must use.
#![allow(deprecated)]

use std::io::{self, BufReader, Read, Write};
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, bail, Result};

use crate::codec::read_full;
use crate::config::{AgeConfig, AgeIdentity};
use crate::sync::lock;

/// The longest age header read: real ones (a few recipient stanzas) are well under 1 KiB.
pub const MAX_HEADER: u64 = 64 * 1024;

/// The age header at the start of `r`, up to and including its final `--- ` MAC line, read a
/// line at a time and never more than [`MAX_HEADER`] bytes. A header cut short by the end of
/// the object is returned as it is, for age to reject.
fn read_header<R: io::BufRead>(r: &mut R, name: &str) -> Result<Vec<u8>> {
    use io::BufRead;
    let mut header = Vec::new();
    loop {
        let start = header.len();
        let left = MAX_HEADER.saturating_sub(start as u64);
        let n = r
            .take(left)
            .read_until(b'\n', &mut header)
            .map_err(|e| anyhow!("{name}: cannot read: {e}"))?;
        let line = &header[start..];
        let complete = line.ends_with(b"\n");
        if complete && line.starts_with(b"--- ") {
            return Ok(header);
        }
        if header.len() as u64 >= MAX_HEADER {
            bail!("{name}: age header longer than 64 KiB; the replica is corrupt");
        }
        if !complete || n == 0 {
            // The object ended inside its header.
            return Ok(header);
        }
    }
}

/// Every age file starts with this line (the v1 header's version line, without its newline).
pub const AGE_MAGIC: &[u8] = b"age-encryption.org/v1";

/// Bytes read from the inner stream per step: one age STREAM chunk of plaintext.
const CHUNK: usize = 64 * 1024;

/// One replica's keys. `Default`: no encryption (objects are written and read in the clear).
#[derive(Default)]
pub struct Keys {
    /// The replica's name, for messages.
    replica: String,
    recipients: Vec<age::x25519::Recipient>,
    identities: Vec<age::x25519::Identity>,
}

impl Keys {
    /// The keys of replica `replica`'s `age:` (`None`: none). Identity files must have been
    /// read (`Config::load`); the text was checked there, so an error here is a bug or a
    /// config built by hand.
    pub fn from_config(replica: &str, age: Option<&AgeConfig>) -> Result<Keys> {
        let mut keys = Keys {
            replica: replica.to_string(),
            ..Keys::default()
        };
        let Some(age) = age else { return Ok(keys) };
        for (i, text) in age.recipients.iter().enumerate() {
            for line in key_lines(text) {
                let r = age::x25519::Recipient::from_str(line).map_err(|_| {
                    anyhow!("replica {replica}: age.recipients[{i}] is not an age recipient")
                })?;
                keys.recipients.push(r);
            }
        }
        for (i, id) in age.identities.iter().enumerate() {
            let text = id.text().ok_or_else(|| match id {
                AgeIdentity::File { path, .. } => anyhow!(
                    "replica {replica}: age.identities[{i}]: identity file {} was not read",
                    path.display()
                ),
                AgeIdentity::Inline(_) => anyhow!("replica {replica}: age.identities[{i}]"),
            })?;
            for (n, line) in key_lines(text).enumerate() {
                let identity = age::x25519::Identity::from_str(line).map_err(|_| {
                    anyhow!(
                        "replica {replica}: age.identities[{i}]: key {} is not an age identity",
                        n + 1
                    )
                })?;
                keys.identities.push(identity);
            }
        }
        Ok(keys)
    }

    /// Whether objects are written encrypted (there is a recipient).
    pub fn encrypts(&self) -> bool {
        !self.recipients.is_empty()
    }

    /// Whether encrypted objects can be read (there is an identity).
    pub fn decrypts(&self) -> bool {
        !self.identities.is_empty()
    }

    /// Public keys of the identities, for messages (they are not secret).
    fn identity_publics(&self) -> String {
        let keys: Vec<String> = self
            .identities
            .iter()
            .map(|i| i.to_public().to_string())
            .collect();
        keys.join(", ")
    }

    fn recipients_text(&self) -> String {
        let keys: Vec<String> = self.recipients.iter().map(|r| r.to_string()).collect();
        keys.join(", ")
    }
}

/// Lines of a recipients or identities text that hold a key.
fn key_lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
}

/// Wraps a reader of compressed bytes into a reader of what the store gets: age ciphertext
/// for every recipient of `keys`, or the same bytes when it has none.
pub fn encrypt<'a, R: Read + Send + 'a>(
    keys: &Keys,
    compressed: R,
) -> Result<Box<dyn Read + Send + 'a>> {
    if !keys.encrypts() {
        return Ok(Box::new(compressed));
    }
    let encryptor =
        age::Encryptor::with_recipients(keys.recipients.iter().map(|r| r as &dyn age::Recipient))
            .map_err(|e| anyhow!("replica {}: cannot encrypt: {e}", keys.replica))?;
    let out = Shared::default();
    let writer = encryptor
        .wrap_output(out.clone())
        .map_err(|e| anyhow!("replica {}: cannot encrypt: {e}", keys.replica))?;
    Ok(Box::new(EncryptReader {
        inner: compressed,
        writer: Some(writer),
        out,
        pending: Vec::new(),
        pos: 0,
        buf: vec![0u8; CHUNK],
    }))
}

/// What the age writer writes into, drained by [`EncryptReader`]. (A mutex only because the
/// reader must be `Send`; one thread ever touches it.)
#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Vec<u8>>>);

impl Write for Shared {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        lock(&self.0).extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Pulls compressed bytes from `inner` a chunk at a time through the age writer and hands
/// out the ciphertext it produced: a `Read` over age's `Write` API, one chunk in memory.
struct EncryptReader<R> {
    inner: R,
    /// `None` once finished (the last chunk and its tag written).
    writer: Option<age::stream::StreamWriter<Shared>>,
    out: Shared,
    /// Ciphertext taken out of `out`, handed out from `pos`.
    pending: Vec<u8>,
    pos: usize,
    buf: Vec<u8>,
}

impl<R: Read> Read for EncryptReader<R> {
    fn read(&mut self, dst: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.pos < self.pending.len() {
                let n = dst.len().min(self.pending.len() - self.pos);
                dst[..n].copy_from_slice(&self.pending[self.pos..self.pos + n]);
                self.pos += n;
                return Ok(n);
            }
            self.pending.clear();
            self.pos = 0;
            {
                let mut out = lock(&self.out.0);
                if !out.is_empty() {
                    std::mem::swap(&mut *out, &mut self.pending);
                    continue;
                }
            }
            let Some(writer) = self.writer.as_mut() else {
                return Ok(0);
            };
            let n = match self.inner.read(&mut self.buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if n == 0 {
                if let Some(w) = self.writer.take() {
                    w.finish()?;
                }
            } else {
                writer.write_all(&self.buf[..n])?;
            }
        }
    }
}

/// How the objects a reader has opened so far were stored: the first one's kind and name.
#[derive(Clone)]
struct Seen {
    encrypted: bool,
    object: String,
}

/// Reads one replica's objects back for one restore (or one resume): decrypts age objects,
/// passes plain ones through, and refuses a mix of the two among the objects it opens (a
/// restore's snapshot and WAL segments must all be one kind: a plain object in an
/// encrypted replica was not written by its owner's configuration).
pub struct Objects {
    keys: Arc<Keys>,
    seen: Mutex<Option<Seen>>,
    warned_plain: Mutex<bool>,
}

impl Objects {
    /// A reader of the objects of the replica these keys belong to.
    pub fn new(keys: Arc<Keys>) -> Objects {
        Objects {
            keys,
            seen: Mutex::new(None),
            warned_plain: Mutex::new(false),
        }
    }

    /// The compressed bytes of the object `name` (a key, for messages) whose stored bytes
    /// `raw` yields. An age object is decrypted with the replica's identities: without one,
    /// or with none that fits, this fails here, before any content is read.
    pub fn open<'a, R: Read + Send + 'a>(
        &self,
        name: &str,
        raw: R,
    ) -> Result<Box<dyn Read + Send + 'a>> {
        let mut raw = raw;
        let mut head = [0u8; AGE_MAGIC.len()];
        let n = read_full(&mut raw, &mut head).map_err(|e| anyhow!("{name}: cannot read: {e}"))?;
        let encrypted = head[..n] == *AGE_MAGIC;
        self.check_mix(name, encrypted)?;
        let whole = io::Cursor::new(head[..n].to_vec()).chain(raw);
        if !encrypted {
            if self.keys.decrypts() || self.keys.encrypts() {
                let mut warned = lock(&self.warned_plain);
                if !*warned {
                    *warned = true;
                    crate::logging::warn(
                        "replica is configured with age encryption but holds objects in the clear",
                        &[("replica", &self.keys.replica), ("object", &name)],
                    );
                }
            }
            return Ok(Box::new(whole));
        }
        let keys = &self.keys;
        if !keys.decrypts() {
            if !keys.encrypts() {
                // No `age:` at all (or a replica URL, which cannot carry one).
                bail!(
                    "replica {} is encrypted with age and {name} cannot be read without its identity: give the replica `age: {{identities: [...]}}` in a config and restore with -config",
                    keys.replica
                );
            }
            bail!(
                "replica {} is encrypted with age and {name} cannot be read without its identity: add the identity of recipient {} to the replica's age.identities",
                keys.replica,
                keys.recipients_text()
            );
        }
        // The header is read here, bounded: age's own reader would buffer a hostile header
        // line without end (and re-parse it for every read).
        let mut rest = BufReader::with_capacity(CHUNK, whole);
        let header = read_header(&mut rest, name)?;
        let whole = io::Cursor::new(header).chain(rest);
        let decryptor = age::Decryptor::new_buffered(BufReader::with_capacity(CHUNK, whole))
            .map_err(|e| anyhow!("{name}: not a valid age file ({e}); the replica is corrupt"))?;
        match decryptor.decrypt(keys.identities.iter().map(|i| i as &dyn age::Identity)) {
            Ok(r) => Ok(Box::new(r)),
            Err(age::DecryptError::NoMatchingKeys) => bail!(
                "replica {} is encrypted with age and none of its identities (public keys {}) can decrypt {name}, which was encrypted to other recipients: add the identity of one of them to the replica's age.identities",
                keys.replica,
                keys.identity_publics()
            ),
            Err(e) => bail!("{name}: cannot decrypt ({e}); the replica is corrupt"),
        }
    }

    /// Refuses an object of the other kind than the first one opened.
    fn check_mix(&self, name: &str, encrypted: bool) -> Result<()> {
        let mut seen = lock(&self.seen);
        match &*seen {
            None => {
                *seen = Some(Seen {
                    encrypted,
                    object: name.to_string(),
                });
                Ok(())
            }
            Some(s) if s.encrypted == encrypted => Ok(()),
            Some(s) => {
                let (enc, plain) = if s.encrypted {
                    (s.object.as_str(), name)
                } else {
                    (name, s.object.as_str())
                };
                bail!(
                    "replica {} mixes encrypted and plain objects: {enc} is age-encrypted but {plain} is not; a replica is written all one way (was `age:` added or removed without a new generation? restore another generation, or from the objects of one kind)",
                    self.keys.replica
                )
            }
        }
    }
}

/// Whether `head` (an object's first bytes) is the start of an age file.
pub fn is_age(head: &[u8]) -> bool {
    head.starts_with(AGE_MAGIC)
}

#[cfg(test)]
mod tests {
    use super::*;
    use age::secrecy::ExposeSecret;

    fn keys_for(ids: &[&age::x25519::Identity], with_identities: bool) -> Keys {
        let recipients = ids.iter().map(|i| i.to_public().to_string()).collect();
        let identities = if with_identities {
            ids.iter()
                .map(|i| AgeIdentity::Inline(i.to_string().expose_secret().to_string()))
                .collect()
        } else {
            Vec::new()
        };
        Keys::from_config(
            "r",
            Some(&AgeConfig {
                recipients,
                identities,
            }),
        )
        .unwrap()
    }

    /// Counts the bytes read through it.
    struct Counting<R> {
        inner: R,
        read: Arc<Mutex<u64>>,
    }

    impl<R: Read> Read for Counting<R> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.inner.read(buf)?;
            *lock(&self.read) += n as u64;
            Ok(n)
        }
    }

    #[test]
    fn a_hostile_header_line_is_read_bounded() {
        let id = age::x25519::Identity::generate();
        let objects = Objects::new(Arc::new(keys_for(&[&id], true)));
        let mut obj = b"age-encryption.org/v1\n-> X25519 ".to_vec();
        obj.resize(obj.len() + 10 * 1024 * 1024, b'A');
        let read = Arc::new(Mutex::new(0));
        let raw = Counting {
            inner: &obj[..],
            read: read.clone(),
        };
        let err = format!("{:#}", objects.open("evil.lz4", raw).err().unwrap());
        assert!(
            err.contains("evil.lz4") && err.contains("age header longer than 64 KiB"),
            "{err}"
        );
        let n = *lock(&read);
        assert!(n <= MAX_HEADER + 2 * CHUNK as u64, "read {n} bytes");
    }

    #[test]
    fn many_header_lines_are_read_bounded_too() {
        let id = age::x25519::Identity::generate();
        let objects = Objects::new(Arc::new(keys_for(&[&id], true)));
        let mut obj = b"age-encryption.org/v1\n".to_vec();
        while obj.len() < 1024 * 1024 {
            obj.extend_from_slice(b"-> X25519 AAAA\nAAAA\n");
        }
        let err = format!("{:#}", objects.open("evil", &obj[..]).err().unwrap());
        assert!(err.contains("age header longer than 64 KiB"), "{err}");
    }

    fn round_trip(data: &[u8], read_size: usize) -> Vec<u8> {
        let id = age::x25519::Identity::generate();
        let keys = keys_for(&[&id], true);
        let mut ct = Vec::new();
        let mut enc = encrypt(&keys, data).unwrap();
        let mut buf = vec![0u8; read_size];
        loop {
            let n = enc.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            ct.extend_from_slice(&buf[..n]);
        }
        assert!(is_age(&ct));
        let objects = Objects::new(Arc::new(keys));
        let mut out = Vec::new();
        objects
            .open("obj", &ct[..])
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    #[test]
    fn encrypt_then_decrypt_streams_any_size() {
        for len in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 17] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            for read_size in [1, 100, CHUNK, 4 * CHUNK] {
                if len > CHUNK && read_size == 1 {
                    continue;
                }
                assert_eq!(round_trip(&data, read_size), data, "len {len}");
            }
        }
    }

    #[test]
    fn no_recipient_writes_in_the_clear() {
        let keys = Keys::default();
        let mut out = Vec::new();
        encrypt(&keys, &b"plain"[..])
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, b"plain");
    }

    #[test]
    fn missing_or_wrong_identity_fails_naming_the_key() {
        let id = age::x25519::Identity::generate();
        let other = age::x25519::Identity::generate();
        let mut ct = Vec::new();
        encrypt(&keys_for(&[&id], false), &b"data"[..])
            .unwrap()
            .read_to_end(&mut ct)
            .unwrap();
        // Recipients only (the primary's config): names the recipient whose identity is missing.
        let e = Objects::new(Arc::new(keys_for(&[&id], false)))
            .open("snap", &ct[..])
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("encrypted with age") && e.contains(&id.to_public().to_string()),
            "{e}"
        );
        let e = Objects::new(Arc::new(Keys::default()))
            .open("snap", &ct[..])
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("replica  is encrypted") || e.contains("is encrypted with age"),
            "{e}"
        );
        let wrong = keys_for(&[&other], true);
        let e = Objects::new(Arc::new(wrong))
            .open("snap", &ct[..])
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("none of its identities") && e.contains(&other.to_public().to_string()),
            "{e}"
        );
        let secret = other.to_string();
        assert!(!e.contains(&secret.expose_secret()[15..]), "{e}");
    }

    #[test]
    fn a_mix_of_kinds_is_refused_naming_both() {
        let id = age::x25519::Identity::generate();
        let keys = keys_for(&[&id], true);
        let mut ct = Vec::new();
        encrypt(&keys, &b"data"[..])
            .unwrap()
            .read_to_end(&mut ct)
            .unwrap();
        let objects = Objects::new(Arc::new(keys));
        objects.open("a.lz4", &ct[..]).unwrap();
        let e = objects
            .open("b.lz4", &b"\x04\x22\x4d\x18plain"[..])
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("mixes encrypted and plain")
                && e.contains("a.lz4 is age-encrypted but b.lz4 is not"),
            "{e}"
        );
    }

    #[test]
    fn hostile_age_bytes_are_errors() {
        let id = age::x25519::Identity::generate();
        let objects = Objects::new(Arc::new(keys_for(&[&id], true)));
        for bad in [
            &b"age-encryption.org/v1"[..],
            b"age-encryption.org/v1\n-> X25519 \n--- \n",
            b"age-encryption.org/v1\n-> X25519 AAAA\nAAAA\n--- AAAA\n0123456789abcdef",
        ] {
            assert!(objects.open("x", bad).is_err());
        }
    }
}
