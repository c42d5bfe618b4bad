//! Bounded XDR (RFC 4506) decoding over a borrowed buffer and encoding into
//! a growable one. Every variable-length item is read with an explicit
//! maximum, so a hostile length prefix can never cause a large allocation:
//! opaque data is borrowed from the input, never copied.

use thiserror::Error;

/// Why XDR input could not be decoded.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum XdrError {
    /// The input ended before an item of `need` bytes at offset `at`.
    #[error("XDR input truncated: need {need} bytes at offset {at}")]
    Truncated {
        /// Offset of the item in the input.
        at: usize,
        /// Bytes the item needs.
        need: usize,
    },
    /// A variable-length item declared a length over its bound.
    #[error("XDR item of {len} bytes exceeds the bound of {max}")]
    TooLong {
        /// Declared length.
        len: u32,
        /// Largest length allowed here.
        max: u32,
    },
    /// A discriminant or boolean had a value the protocol does not define.
    #[error("XDR value {value} is not valid for {what}")]
    BadValue {
        /// What was being decoded.
        what: &'static str,
        /// The value found.
        value: u32,
    },
}

/// Reads XDR items from a byte slice without copying opaque data.
#[derive(Debug)]
pub struct XdrReader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> XdrReader<'a> {
    /// Starts reading at the beginning of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    /// Bytes not yet consumed.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, need: usize) -> Result<&'a [u8], XdrError> {
        if self.remaining() < need {
            return Err(XdrError::Truncated { at: self.pos, need });
        }
        let out = &self.buf[self.pos..self.pos + need];
        self.pos += need;
        Ok(out)
    }

    /// Reads an unsigned 32-bit integer.
    pub fn u32(&mut self) -> Result<u32, XdrError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// Reads an unsigned 64-bit integer.
    pub fn u64(&mut self) -> Result<u64, XdrError> {
        let hi = u64::from(self.u32()?);
        let lo = u64::from(self.u32()?);
        Ok(hi << 32 | lo)
    }

    /// Reads a boolean (0 or 1; anything else is an error).
    pub fn bool(&mut self) -> Result<bool, XdrError> {
        match self.u32()? {
            0 => Ok(false),
            1 => Ok(true),
            value => Err(XdrError::BadValue {
                what: "bool",
                value,
            }),
        }
    }

    /// Reads `n` bytes of fixed-length opaque data (plus padding).
    pub fn fixed(&mut self, n: usize) -> Result<&'a [u8], XdrError> {
        let out = self.take(n)?;
        self.take(pad(n))?;
        Ok(out)
    }

    /// Reads variable-length opaque data of at most `max` bytes.
    pub fn opaque(&mut self, max: u32) -> Result<&'a [u8], XdrError> {
        let len = self.u32()?;
        if len > max {
            return Err(XdrError::TooLong { len, max });
        }
        self.fixed(len as usize)
    }
}

fn pad(n: usize) -> usize {
    (4 - n % 4) % 4
}

/// Appends XDR items to a byte vector.
#[derive(Debug, Default)]
pub struct XdrWriter {
    /// The encoded bytes so far.
    pub buf: Vec<u8>,
}

impl XdrWriter {
    /// A writer whose buffer starts with room for `cap` bytes.
    pub fn with_capacity(cap: usize) -> Self {
        Self {
            buf: Vec::with_capacity(cap),
        }
    }

    /// Appends an unsigned 32-bit integer.
    pub fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }

    /// Appends an unsigned 64-bit integer.
    pub fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }

    /// Appends a boolean.
    pub fn bool(&mut self, v: bool) {
        self.u32(u32::from(v));
    }

    /// Appends fixed-length opaque data with padding.
    pub fn fixed(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
        self.buf.extend_from_slice(&[0u8; 3][..pad(data.len())]);
    }

    /// Appends variable-length opaque data. Callers bound `data` (names,
    /// handles, paths, READ payloads) well below 4 GiB.
    pub fn opaque(&mut self, data: &[u8]) {
        self.u32(u32::try_from(data.len()).expect("encoded items are bounded far below 4 GiB"));
        self.fixed(data);
    }

    /// Current length, to patch or bound replies.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Whether nothing was written yet.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn opaque_round_trips_with_padding() {
        let mut w = XdrWriter::default();
        w.opaque(b"abcde");
        w.u64(0x0102_0304_0506_0708);
        assert_eq!(w.len(), 4 + 8 + 8);
        let mut r = XdrReader::new(&w.buf);
        assert_eq!(r.opaque(16).unwrap(), b"abcde");
        assert_eq!(r.u64().unwrap(), 0x0102_0304_0506_0708);
        assert_eq!(r.remaining(), 0);
    }

    #[test]
    fn huge_length_prefix_is_refused_without_allocating() {
        let bytes = [0xff, 0xff, 0xff, 0xf0];
        let err = XdrReader::new(&bytes).opaque(255).unwrap_err();
        assert_eq!(
            err,
            XdrError::TooLong {
                len: 0xffff_fff0,
                max: 255
            }
        );
    }

    #[test]
    fn truncated_input_names_the_offset() {
        let err = XdrReader::new(&[0, 0]).u32().unwrap_err();
        assert_eq!(err, XdrError::Truncated { at: 0, need: 4 });
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let mut r = XdrReader::new(&bytes);
            while r.remaining() > 0 {
                if r.opaque(64).is_err() { break; }
            }
        }
    }
}
