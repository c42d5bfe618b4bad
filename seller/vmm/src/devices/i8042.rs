//! The part of the i8042 keyboard controller guests use to reset the machine
//! (command 0xfe, "pulse reset line"); there is no keyboard behind it.

/// Data port.
pub const DATA_PORT: u16 = 0x60;
/// Status/command port.
pub const COMMAND_PORT: u16 = 0x64;
/// Command: pulse the CPU reset line.
const CMD_RESET_CPU: u8 = 0xfe;

/// What a write asks the VMM to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum I8042Action {
    /// Nothing.
    None,
    /// Reset the machine.
    Reset,
}

/// Handles a byte written to `port`.
pub fn write(port: u16, value: u8) -> I8042Action {
    if port == COMMAND_PORT && value == CMD_RESET_CPU {
        I8042Action::Reset
    } else {
        I8042Action::None
    }
}

/// Handles a read: status says "output buffer empty, input buffer empty",
/// so drivers find no keyboard and do not wait.
pub fn read(_port: u16) -> u8 {
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_command_resets() {
        assert_eq!(write(COMMAND_PORT, 0xfe), I8042Action::Reset);
        assert_eq!(write(COMMAND_PORT, 0xd1), I8042Action::None);
        assert_eq!(write(DATA_PORT, 0xfe), I8042Action::None);
        assert_eq!(read(COMMAND_PORT), 0);
    }
}
