//! The cpushare broker: order book, ledger, seller attestation, lease
//! registry, and the QUIC server that exposes them.
//!
//! Flow of a lease through this crate: [`server`] authenticates a party
//! and decodes its request; [`market`] places the order on the [`book`],
//! books the money with [`ledger`] postings, persists both through
//! [`store`], and tells the seller to start; the seller's reports drive the
//! lease to its end and its bill.

pub mod book;
pub mod datadir;
pub mod ledger;
pub mod market;
pub mod server;
pub mod store;
pub mod vnet;
