//! Byte buffers on the wire as one length-prefixed run of bytes.
//!
//! serde sees a `Vec<u8>` as a sequence of `u8`, so postcard encodes and
//! decodes it one element call at a time; with `#[serde(with =
//! "crate::bytes")]` it is one copy each way. The encoding is the same
//! (varint length, then the bytes), so both ends interoperate with
//! peers that still use the plain sequence form.

use serde::de::{SeqAccess, Visitor};
use serde::{Deserializer, Serializer};

/// Serializes `bytes` as one byte string.
pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_bytes(bytes)
}

/// Deserializes a byte string (or, from formats without one, a sequence
/// of `u8`).
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    d.deserialize_byte_buf(ByteBuf)
}

struct ByteBuf;

impl<'de> Visitor<'de> for ByteBuf {
    type Value = Vec<u8>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a byte string")
    }

    fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
        Ok(v.to_vec())
    }

    fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
        Ok(v)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
        // The hint comes from the peer: cap what it may make us reserve.
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 16));
        while let Some(b) = seq.next_element()? {
            out.push(b);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Fast(#[serde(with = "super")] Vec<u8>);

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Plain(Vec<u8>);

    #[test]
    fn same_bytes_on_the_wire_as_a_plain_vec() {
        for len in [0usize, 1, 127, 128, 70_000] {
            let data: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let fast = postcard::to_allocvec(&Fast(data.clone())).unwrap();
            let plain = postcard::to_allocvec(&Plain(data.clone())).unwrap();
            assert_eq!(fast, plain, "len {len}");
            assert_eq!(postcard::from_bytes::<Fast>(&plain).unwrap().0, data);
            assert_eq!(postcard::from_bytes::<Plain>(&fast).unwrap().0, data);
        }
    }

    #[test]
    fn a_short_buffer_is_an_error() {
        let wire = postcard::to_allocvec(&Fast(vec![1, 2, 3, 4])).unwrap();
        assert!(postcard::from_bytes::<Fast>(&wire[..3]).is_err());
    }

    #[test]
    fn json_round_trips_as_a_sequence() {
        let json = serde_json::to_string(&Fast(vec![1, 2])).unwrap();
        assert_eq!(serde_json::from_str::<Fast>(&json).unwrap().0, vec![1, 2]);
    }
}
