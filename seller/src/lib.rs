//! The cpushare seller: offers capacity to the broker and runs buyers'
//! leases in sandboxes.
//!
//! Flow of a lease through this crate: [`daemon`] receives it from the
//! broker, fetches its image through the content-addressed [`cache`],
//! steps the [`lease`] state machine, and runs the job in the [`wasm`]
//! sandbox of a confined child process ([`jail`]), streaming output back
//! until the lease ends.

pub mod cache;
pub mod daemon;
pub mod jail;
pub mod lease;
pub mod wasm;
