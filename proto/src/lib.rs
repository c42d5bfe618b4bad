//! Wire types, framing, identities and content ids shared by every cpushare part.
//!
//! Parts never reach into each other's internals: they talk through the
//! messages in [`msg`], framed by [`frame`], over connections authenticated
//! by [`identity`].

pub mod bundle;
pub mod bytes;
pub mod client;
pub mod frame;
pub mod id;
pub mod identity;
pub mod money;
pub mod msg;
pub mod sandbox;
pub mod token;

/// Milliseconds since the Unix epoch, the time unit of every core.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
