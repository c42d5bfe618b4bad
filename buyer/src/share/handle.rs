//! NFS file handles: `version | export id | inode | MAC`, where the MAC is
//! HMAC-SHA256 under a random per-server key. A client cannot forge a handle
//! for an inode it was never given, nor move a handle to another export,
//! and handles die with the server (the key is never stored).

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

/// Length of every handle this server issues (NFSv3 allows up to 64).
pub const HANDLE_LEN: usize = 32;
const VERSION: u8 = 1;
const BODY_LEN: usize = 16;

/// A decoded, authenticated handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Handle {
    /// Index of the export in the server's share list.
    pub export: u32,
    /// Inode number of the file inside that export.
    pub ino: u64,
}

/// Mints and checks handles with a key chosen at server start.
#[derive(Clone)]
pub struct HandleKey {
    key: [u8; 32],
}

impl std::fmt::Debug for HandleKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HandleKey(..)")
    }
}

impl HandleKey {
    /// A fresh key from the operating system's random source.
    pub fn random() -> Self {
        let mut key = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut key);
        Self { key }
    }

    fn mac(&self) -> Hmac<Sha256> {
        <Hmac<Sha256> as Mac>::new_from_slice(&self.key).expect("HMAC takes keys of any length")
    }

    /// The wire bytes of the handle for `h`.
    pub fn encode(&self, h: Handle) -> [u8; HANDLE_LEN] {
        let mut out = [0u8; HANDLE_LEN];
        out[0] = VERSION;
        out[1..5].copy_from_slice(&h.export.to_be_bytes());
        out[5..13].copy_from_slice(&h.ino.to_be_bytes());
        let mut mac = self.mac();
        mac.update(&out[..BODY_LEN]);
        out[BODY_LEN..].copy_from_slice(&mac.finalize().into_bytes()[..HANDLE_LEN - BODY_LEN]);
        out
    }

    /// Checks a handle from a client; `None` if it is not one we issued.
    pub fn decode(&self, bytes: &[u8]) -> Option<Handle> {
        if bytes.len() != HANDLE_LEN || bytes[0] != VERSION || bytes[13..BODY_LEN] != [0, 0, 0] {
            return None;
        }
        let mut mac = self.mac();
        mac.update(&bytes[..BODY_LEN]);
        mac.verify_truncated_left(&bytes[BODY_LEN..]).ok()?;
        let export = u32::from_be_bytes(bytes[1..5].try_into().ok()?);
        let ino = u64::from_be_bytes(bytes[5..13].try_into().ok()?);
        Some(Handle { export, ino })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip_and_tamper() {
        let k = HandleKey::random();
        let h = Handle { export: 1, ino: 42 };
        let bytes = k.encode(h);
        assert_eq!(k.decode(&bytes), Some(h));
        let mut moved = bytes;
        moved[4] = 0; // export 1 -> 0
        assert_eq!(k.decode(&moved), None);
        let mut guessed = bytes;
        guessed[12] ^= 1;
        assert_eq!(k.decode(&guessed), None);
        assert_eq!(
            HandleKey::random().decode(&bytes),
            None,
            "another server's key"
        );
        assert_eq!(k.decode(&bytes[..16]), None);
    }

    proptest! {
        #[test]
        fn random_bytes_are_never_valid(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            prop_assert_eq!(HandleKey::random().decode(&bytes), None);
        }
    }
}
