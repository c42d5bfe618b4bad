//! Arbitrary datagrams into a node that has one peer: header decode,
//! handshake parsing, session lookup and AEAD rejection must never panic.
#![no_main]

use cpushare_vnet::node::{NodeConfig, Outputs, PeerConfig};
use cpushare_vnet::{Node, SecretKey};
use libfuzzer_sys::fuzz_target;
use std::time::{Duration, Instant};

fuzz_target!(|data: &[u8]| {
    let now = Instant::now();
    let me = SecretKey::from_bytes([1; 32]);
    let peer = SecretKey::from_bytes([2; 32]);
    let cfg = NodeConfig::new(
        me,
        "10.77.0.0/16".parse().unwrap(),
        "10.77.0.1".parse().unwrap(),
        Duration::ZERO,
    );
    let mut node = Node::new(cfg, now).unwrap();
    node.add_peer(
        PeerConfig {
            public_key: peer.public_key(),
            address: "10.77.0.2".parse().unwrap(),
            endpoints: vec![],
        },
        now,
    )
    .unwrap();
    let mut out = Outputs::new();
    // Split the input into several datagrams at 0xff bytes.
    for d in data.split(|b| *b == 0xff) {
        node.handle_udp(now, "192.0.2.1:1".parse().unwrap(), d, &mut out);
        out.clear();
    }
});
