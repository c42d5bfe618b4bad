//! Debug-exit port: a write of a 32-bit status to I/O port 0xf4 powers the
//! guest off with that status. Same port as QEMU's `isa-debug-exit` with
//! `iobase=0xf4` (which exits with `status * 2 + 1`), so the test guest runs
//! unchanged on both.

/// The I/O port.
pub const PORT: u16 = 0xf4;
/// Width of the port in bytes.
pub const LEN: u16 = 4;

/// Decodes a write at `offset` within the port into the power-off status.
pub fn status(offset: u16, data: &[u8]) -> Option<u32> {
    if offset != 0 || data.is_empty() || data.len() > 4 {
        return None;
    }
    let mut b = [0u8; 4];
    b[..data.len()].copy_from_slice(data);
    Some(u32::from_le_bytes(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_and_dword_writes_give_status() {
        assert_eq!(status(0, &[7]), Some(7));
        assert_eq!(status(0, &0x1234_5678u32.to_le_bytes()), Some(0x1234_5678));
        assert_eq!(status(1, &[7]), None);
        assert_eq!(status(0, &[]), None);
    }
}
