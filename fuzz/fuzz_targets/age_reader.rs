//! The decrypting reader (`encryption::Objects::open`) on hostile stored objects: arbitrary
//! bytes, the same behind a valid age version line (so the header parser sees them), and a
//! real ciphertext of the input with one byte flipped. Then the decompressor over whatever
//! decrypts. No panic, memory bounded; a ciphertext of the input decrypts back to it exactly;
//! a flipped byte never decrypts to other data silently (age authenticates every chunk; a flip
//! in the version line makes a plain object, passed through unchanged).
#![no_main]
// X25519 (deprecated in age 0.13, not post-quantum) is the only key type v0.3.13 uses.
#![allow(deprecated)]

use std::io::Read;
use std::sync::{Arc, OnceLock};

use age::secrecy::ExposeSecret;
use libfuzzer_sys::fuzz_target;
use litestream::codec::{self, Compression};
use litestream::config::{AgeConfig, AgeIdentity};
use litestream::encryption::{encrypt, is_age, Keys, Objects};

/// At most this much is read from any stream: a hostile object cannot make the target spin.
const CAP: u64 = 4 << 20;

/// One identity per process: what the target checks does not depend on which key it is.
fn keys() -> Arc<Keys> {
    static KEYS: OnceLock<Arc<Keys>> = OnceLock::new();
    KEYS.get_or_init(|| {
        let id = age::x25519::Identity::generate();
        let cfg = AgeConfig {
            recipients: vec![id.to_public().to_string()],
            identities: vec![AgeIdentity::Inline(
                id.to_string().expose_secret().to_string(),
            )],
        };
        Arc::new(Keys::from_config("fuzz", Some(&cfg)).expect("keys"))
    })
    .clone()
}

fn drain(r: &mut dyn Read) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    r.take(CAP).read_to_end(&mut out)?;
    Ok(out)
}

fuzz_target!(|data: &[u8]| {
    let keys = keys();
    // 1. The input as a stored object, and behind the version line.
    let mut framed = b"age-encryption.org/v1\n".to_vec();
    framed.extend_from_slice(data);
    for object in [data, &framed[..]] {
        let objects = Objects::new(keys.clone());
        if let Ok(mut r) = objects.open("fuzz", object) {
            let _ = drain(&mut r);
        }
        let objects = Objects::new(keys.clone());
        if let Ok(r) = objects.open("fuzz", object) {
            let compression = if data.first().is_some_and(|b| b & 1 == 1) {
                Compression::Lz4
            } else {
                Compression::Gzip
            };
            if let Ok(mut d) = codec::decoder(compression, r) {
                let _ = drain(&mut d);
            }
        }
    }
    // 2. A real ciphertext of the input round-trips; with a byte flipped it fails or, where
    // the flip hit the (unauthenticated) header framing, still yields only the input.
    let mut ct = Vec::new();
    encrypt(&keys, data)
        .expect("encryptor")
        .read_to_end(&mut ct)
        .expect("encrypt");
    let objects = Objects::new(keys.clone());
    let back = drain(&mut objects.open("ct", &ct[..]).expect("open ciphertext")).expect("decrypt");
    assert_eq!(back, data);
    if !ct.is_empty() {
        let at = data.iter().fold(0usize, |a, b| a.wrapping_mul(31).wrapping_add(*b as usize)) % ct.len();
        ct[at] ^= 0x01;
        let objects = Objects::new(keys.clone());
        if let Ok(mut r) = objects.open("flipped", &ct[..]) {
            if let Ok(out) = drain(&mut r) {
                if is_age(&ct) {
                    assert_eq!(out, data, "a flipped byte decrypted to other data");
                } else {
                    // The flip hit the version line: a plain object now, passed through as is.
                    assert_eq!(out, ct, "a plain object was not passed through");
                }
            }
        }
    }
});
