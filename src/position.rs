//! Where replication stands: a generation, an index (one WAL life) and a byte offset into it.
//!
//! Pure value types with their text form (`GEN/IIIIIIII:OFFSET`) and generation ids. No I/O
//! except drawing random bytes from the kernel (the `getrandom` system call, no file).

use std::fmt;

/// A generation id: 16 lowercase hex characters.
pub type Generation = String;

/// The largest WAL index a generation may reach before a new generation is started.
pub(crate) const MAX_INDEX: u32 = 0x7FFF_FFFF;

/// (generation, index, offset) in one WAL life. Ordered by index then offset; positions of
/// different generations are not comparable and `PartialOrd` returns `None` for them.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Position {
    /// The generation: one unbroken history of the database, since a snapshot.
    pub generation: Generation,
    /// The WAL index: which life of the WAL (each checkpoint that restarts it starts a new one).
    pub index: u32,
    /// Bytes of that WAL life, header included, up to this position.
    pub offset: u64,
}

impl Position {
    /// The position `offset` bytes into WAL index `index` of `generation`.
    pub fn new(generation: impl Into<String>, index: u32, offset: u64) -> Self {
        Position {
            generation: generation.into(),
            index,
            offset,
        }
    }
}

impl PartialOrd for Position {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        if self.generation != other.generation {
            return None;
        }
        Some((self.index, self.offset).cmp(&(other.index, other.offset)))
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{:08x}:{}", self.generation, self.index, self.offset)
    }
}

/// True when `s` is a well-formed generation id (16 lowercase hex chars).
pub fn is_generation(s: &str) -> bool {
    s.len() == 16
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A fresh generation id from 8 random bytes.
pub(crate) fn new_generation() -> std::io::Result<Generation> {
    let mut buf = [0u8; 8];
    random_bytes(&mut buf)?;
    Ok(hex(&buf))
}

/// `buf.len()` random bytes from the kernel's `getrandom` system call. It needs no file: a
/// minimal chroot or initramfs without a `/dev` still gets its ids. It blocks only until the
/// kernel's pool is first initialised (early boot), which reading the device did not.
pub(crate) fn random_bytes(buf: &mut [u8]) -> std::io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // SAFETY: the pointer and length describe `rest`, a live, writable slice.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(std::io::Error::new(
                err.kind(),
                format!("cannot draw random bytes (getrandom system call): {err}"),
            ));
        }
        filled += n as usize;
    }
    Ok(())
}

/// Lowercase hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_matches_spec() {
        let p = Position::new("9b0ed7758f1927b6", 3, 8272);
        assert_eq!(p.to_string(), "9b0ed7758f1927b6/00000003:8272");
    }

    #[test]
    fn ordering_within_and_across_generations() {
        let a = Position::new("aaaaaaaaaaaaaaaa", 1, 100);
        let b = Position::new("aaaaaaaaaaaaaaaa", 2, 0);
        let c = Position::new("bbbbbbbbbbbbbbbb", 0, 0);
        assert!(a < b);
        assert_eq!(a.partial_cmp(&c), None);
    }

    #[test]
    fn generation_ids() {
        let g = new_generation().unwrap();
        assert!(is_generation(&g), "{g}");
        assert_ne!(g, new_generation().unwrap());
        assert!(!is_generation("9B0ED7758F1927B6"));
        assert!(!is_generation("9b0ed7758f1927b"));
        assert!(!is_generation("../../etc/passwd"));
    }

    #[test]
    fn random_bytes_fill_the_buffer_without_a_device_file() {
        // 4 KiB of zeros left after a draw would mean the buffer was not filled.
        let mut big = vec![0u8; 4096];
        random_bytes(&mut big).unwrap();
        assert!(big.iter().filter(|b| **b == 0).count() < 100);
        random_bytes(&mut []).unwrap();
        // The id never comes from a device file: a chroot without /dev has none.
        let src = include_str!("position.rs");
        let code = &src[..src.find("#[cfg(test)]").unwrap()];
        assert!(
            !code.contains(concat!("/dev/", "urandom")),
            "opens a device file"
        );
        assert!(!code.contains(concat!("File::", "open")), "opens a file");
    }
}
