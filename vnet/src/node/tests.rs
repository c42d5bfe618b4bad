//! Node tests over a simulated network with simulated time.

use super::*;
use crate::router::test_utils::udp_packet;
use proptest::prelude::*;
use std::collections::HashSet;

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 77, 0, last)
}

fn sock(i: usize) -> SocketAddr {
    SocketAddr::from(([192, 0, 2, 1 + i as u8], 51820))
}

/// Nodes joined by a simulated UDP network with a blocklist.
struct Net {
    now: Instant,
    nodes: Vec<Node>,
    keys: Vec<SecretKey>,
    blocked: HashSet<(usize, usize)>,
    /// Nodes behind a NAT: they receive only from peers they sent to first.
    natted: HashSet<usize>,
    /// (natted node, peer) mappings opened by outbound traffic.
    mappings: HashSet<(usize, usize)>,
    delivered: Vec<Vec<Vec<u8>>>,
    wire_log: Vec<(usize, usize, Vec<u8>)>,
    out: Outputs,
}

impl Net {
    /// `n` nodes, all peers of each other; node 0 is the relay when `relay`.
    fn new(n: usize, relay: bool) -> Self {
        let now = Instant::now();
        let keys: Vec<SecretKey> = (0..n).map(|_| SecretKey::generate()).collect();
        let nodes = (0..n)
            .map(|i| {
                let mut c = NodeConfig::new(
                    keys[i].clone(),
                    "10.77.0.0/16".parse().unwrap(),
                    ip(1 + i as u8),
                    Duration::from_secs(1_700_000_000),
                );
                if relay {
                    c.relay = Some(keys[0].public_key());
                    c.relay_for_others = i == 0;
                }
                let mut node = Node::new(c, now).unwrap();
                for j in (0..n).filter(|j| *j != i) {
                    node.add_peer(
                        PeerConfig {
                            public_key: keys[j].public_key(),
                            address: ip(1 + j as u8),
                            endpoints: vec![sock(j)],
                        },
                        now,
                    )
                    .unwrap();
                }
                node
            })
            .collect();
        Self {
            now,
            nodes,
            keys,
            blocked: HashSet::new(),
            natted: HashSet::new(),
            mappings: HashSet::new(),
            delivered: vec![Vec::new(); n],
            wire_log: Vec::new(),
            out: Outputs::new(),
        }
    }

    fn block(&mut self, a: usize, b: usize) {
        self.blocked.insert((a, b));
        self.blocked.insert((b, a));
    }

    fn unblock(&mut self, a: usize, b: usize) {
        self.blocked.remove(&(a, b));
        self.blocked.remove(&(b, a));
    }

    fn id(&self, i: usize) -> PeerId {
        self.keys[i].public_key().peer_id()
    }

    /// Moves node `i`'s pending outputs onto the network and runs it dry.
    fn flush(&mut self, i: usize) {
        let mut queue: VecDeque<(usize, SocketAddr, Vec<u8>)> = VecDeque::new();
        let take =
            |net: &mut Net, from: usize, queue: &mut VecDeque<(usize, SocketAddr, Vec<u8>)>| {
                for o in net.out.iter() {
                    match o {
                        Output::Transmit { dst, bytes } => {
                            queue.push_back((from, *dst, bytes.as_slice().to_vec()))
                        }
                        Output::Deliver { ip_packet } => {
                            net.delivered[from].push(ip_packet.as_slice().to_vec())
                        }
                    }
                }
                net.out.clear();
            };
        take(self, i, &mut queue);
        let mut steps = 0;
        while let Some((from, dst, bytes)) = queue.pop_front() {
            steps += 1;
            assert!(steps < 10_000, "packet storm");
            let Some(to) = (0..self.nodes.len()).find(|j| sock(*j) == dst) else {
                continue;
            };
            self.wire_log.push((from, to, bytes.clone()));
            if self.natted.contains(&from) {
                self.mappings.insert((from, to));
            }
            if self.blocked.contains(&(from, to))
                || (self.natted.contains(&to) && !self.mappings.contains(&(to, from)))
            {
                continue;
            }
            let mut out = std::mem::take(&mut self.out);
            self.nodes[to].handle_udp(self.now, sock(from), &bytes, &mut out);
            self.out = out;
            take(self, to, &mut queue);
        }
    }

    /// Advances time by `dt`, firing every node's due timers along the way (1 s steps).
    fn advance(&mut self, dt: Duration) {
        let end = self.now + dt;
        loop {
            for i in 0..self.nodes.len() {
                while self.nodes[i].poll_timeout().is_some_and(|t| t <= self.now) {
                    let mut out = std::mem::take(&mut self.out);
                    self.nodes[i].handle_timeout(self.now, &mut out);
                    self.out = out;
                    self.flush(i);
                    if self.nodes[i].poll_timeout().is_some_and(|t| t <= self.now) {
                        break;
                    }
                }
            }
            if self.now >= end {
                break;
            }
            self.now = (self.now + Duration::from_millis(500)).min(end);
        }
    }

    fn send(&mut self, from: usize, to: usize, payload: usize) -> Vec<u8> {
        let p = udp_packet(ip(1 + from as u8), ip(1 + to as u8), payload);
        self.send_raw(from, &p);
        p
    }

    fn send_raw(&mut self, from: usize, p: &[u8]) {
        let mut out = std::mem::take(&mut self.out);
        self.nodes[from].handle_tun_packet(self.now, p, &mut out);
        self.out = out;
        self.flush(from);
    }

    fn inject(&mut self, to: usize, from: SocketAddr, bytes: &[u8]) {
        let mut out = std::mem::take(&mut self.out);
        self.nodes[to].handle_udp(self.now, from, bytes, &mut out);
        self.out = out;
        self.flush(to);
    }

    fn status(&self, i: usize, of: usize) -> PeerStatus {
        let st = self.nodes[i].status(self.now);
        st.peers
            .into_iter()
            .find(|p| p.peer == self.id(of).to_string())
            .unwrap()
    }

    fn drops(&self, i: usize, r: DropReason) -> u64 {
        self.nodes[i].drops().get(r)
    }
}

#[test]
fn first_packet_triggers_handshake_and_arrives() {
    let mut net = Net::new(2, false);
    let p = net.send(1, 0, 100);
    assert_eq!(net.delivered[0], vec![p]);
    let q = net.send(0, 1, 1200);
    assert_eq!(net.delivered[1], vec![q]);
    assert_eq!(
        net.status(1, 0).path,
        PathKind::Direct,
        "the handshake response confirmed it"
    );
    net.advance(Duration::from_secs(2));
    assert_eq!(
        net.status(0, 1).path,
        PathKind::Direct,
        "a probe confirmed it"
    );
    assert!(net.status(0, 1).rtt_us.is_some());
    assert_eq!(net.status(1, 0).bytes_in, 1200 + 28);
}

#[test]
fn proactive_handshake_opens_sessions_before_traffic() {
    let mut net = Net::new(3, false);
    net.advance(Duration::from_secs(1));
    for i in 0..3 {
        for j in (0..3).filter(|j| *j != i) {
            assert!(net.status(i, j).session, "{i} -> {j}");
        }
    }
}

#[test]
fn a_natted_higher_id_opens_the_session_itself_after_a_while() {
    let mut net = Net::new(2, false);
    let hi = if net.id(0) > net.id(1) { 0 } else { 1 };
    let lo = 1 - hi;
    net.natted.insert(hi);
    net.advance(Duration::from_secs(1));
    assert!(
        !net.status(lo, hi).session,
        "the NAT drops the lower id's handshake"
    );
    net.advance(REKEY_TIMEOUT + Duration::from_secs(1));
    assert!(
        net.status(lo, hi).session,
        "the higher id's own handshake opened the NAT"
    );
    assert!(net.status(hi, lo).session);
    let p = net.send(lo, hi, 100);
    assert_eq!(net.delivered[hi], vec![p]);
}

#[test]
fn replayed_datagram_is_dropped_and_counted() {
    let mut net = Net::new(2, false);
    net.send(0, 1, 50);
    net.send(0, 1, 50);
    let data = net
        .wire_log
        .iter()
        .rev()
        .find(|(f, _, b)| *f == 0 && b[0] == TYPE_DATA)
        .unwrap()
        .2
        .clone();
    net.inject(1, sock(0), &data);
    assert_eq!(net.delivered[1].len(), 2);
    assert_eq!(net.drops(1, DropReason::Replay), 1);
}

#[test]
fn garbage_truncated_and_forged_datagrams_are_counted() {
    let mut net = Net::new(2, false);
    net.send(0, 1, 50);
    let data = net
        .wire_log
        .iter()
        .rev()
        .find(|(f, _, b)| *f == 0 && b[0] == TYPE_DATA)
        .unwrap()
        .2
        .clone();
    let before = net.delivered[1].len();
    net.inject(1, sock(0), b"GET / HTTP/1.1\r\n");
    net.inject(1, sock(0), &[]);
    net.inject(1, sock(0), &data[..data.len() - 1]);
    let mut replayed_and_flipped = data.clone();
    replayed_and_flipped[20] ^= 0x80;
    net.inject(1, sock(0), &replayed_and_flipped);
    let mut forged = data.clone();
    forged[8..16].copy_from_slice(&1000u64.to_le_bytes());
    net.inject(1, sock(0), &forged);
    forged[8..16].copy_from_slice(&1001u64.to_le_bytes());
    net.inject(1, sock(0), &forged[..forged.len() - 1]);
    let mut wrong_index = data.clone();
    wrong_index[4] ^= 1;
    net.inject(1, sock(0), &wrong_index);
    net.inject(1, sock(0), &vec![4u8; crate::wire::MAX_PACKET_LEN + 1]);
    let mut fake_init = vec![0u8; crate::wire::INIT_LEN];
    fake_init[0] = TYPE_INIT;
    net.inject(1, sock(0), &fake_init);
    assert_eq!(net.delivered[1].len(), before);
    assert_eq!(net.drops(1, DropReason::Malformed), 2 + 1);
    assert_eq!(net.drops(1, DropReason::Forged), 2 + 1);
    assert_eq!(net.drops(1, DropReason::Replay), 2);
    assert_eq!(net.drops(1, DropReason::UnknownPeer), 1);
}

#[test]
fn replayed_handshake_initiation_is_stale() {
    let mut net = Net::new(2, false);
    net.send(1, 0, 10);
    let init = net
        .wire_log
        .iter()
        .find(|(_, _, b)| b[0] == TYPE_INIT)
        .unwrap()
        .2
        .clone();
    net.inject(0, sock(1), &init);
    assert_eq!(net.drops(0, DropReason::StaleHandshake), 1);
    // The session still works.
    net.send(1, 0, 10);
    assert_eq!(net.delivered[0].len(), 2);
}

#[test]
fn unknown_member_handshake_is_refused() {
    let mut net = Net::new(2, false);
    let stranger = SecretKey::generate();
    let mut msg = Vec::new();
    handshake::initiate(
        &stranger,
        &[0; 32],
        &net.keys[0].public_key(),
        1,
        1,
        &mut msg,
    )
    .unwrap();
    net.inject(0, sock(5), &msg);
    assert_eq!(net.drops(0, DropReason::UnknownPeer), 1);
    assert!(net.wire_log.is_empty(), "no reply to strangers");
}

#[test]
fn isolation_rules_drop_outbound_violations() {
    let mut net = Net::new(2, false);
    net.send_raw(0, &udp_packet(ip(1), Ipv4Addr::new(8, 8, 8, 8), 10));
    net.send_raw(0, &udp_packet(ip(1), Ipv4Addr::new(10, 77, 255, 255), 10));
    net.send_raw(0, &udp_packet(ip(9), ip(2), 10));
    net.send_raw(0, &udp_packet(ip(1), ip(99), 10));
    net.send_raw(0, &[0x60; 48]);
    net.send_raw(0, &[0x45; 10]);
    assert!(net.wire_log.is_empty());
    for (r, n) in [
        (DropReason::EgressDenied, 2),
        (DropReason::Broadcast, 1),
        (DropReason::SpoofedSource, 1),
        (DropReason::UnknownDestination, 1),
        (DropReason::NotIpv4, 1),
    ] {
        assert_eq!(net.drops(0, r), n, "{r:?}");
    }
}

#[test]
fn a_lease_with_a_session_still_sends_nothing_outside_its_subnet() {
    let mut net = Net::new(2, false);
    assert_eq!(net.nodes[0].config.egress, EgressPolicy::SubnetOnly);
    let p = net.send(0, 1, 50);
    assert_eq!(net.delivered[1], vec![p]);
    net.wire_log.clear();
    let seller_host = Ipv4Addr::new(192, 168, 1, 10);
    let destinations = [
        seller_host,
        Ipv4Addr::new(192, 168, 1, 1),
        Ipv4Addr::new(10, 78, 0, 2),
        Ipv4Addr::new(1, 1, 1, 1),
        Ipv4Addr::new(127, 0, 0, 1),
        Ipv4Addr::new(169, 254, 169, 254),
        Ipv4Addr::new(224, 0, 0, 251),
        Ipv4Addr::BROADCAST,
    ];
    for dst in destinations {
        net.send_raw(0, &udp_packet(ip(1), dst, 10));
    }
    // Oversize to the outside: denied, not answered with an ICMP error
    // that would speak for the outside address.
    net.send_raw(0, &udp_packet(ip(1), seller_host, DEFAULT_INNER_MTU));
    // A guest pretending to be the other member.
    net.send_raw(0, &udp_packet(ip(2), ip(2), 10));
    assert!(net.wire_log.is_empty(), "nothing sealed or sent");
    assert_eq!(net.delivered[0].len(), 0, "no ICMP back");
    assert_eq!(net.delivered[1].len(), 1);
    assert_eq!(
        net.drops(0, DropReason::EgressDenied),
        destinations.len() as u64 + 1
    );
    assert_eq!(net.drops(0, DropReason::SpoofedSource), 1);
    assert_eq!(net.drops(0, DropReason::TooBig), 0);
    let st = serde_json::to_value(net.nodes[0].status(net.now)).unwrap();
    assert_eq!(st["drops"]["egress_denied"], destinations.len() + 1);
    // The member is still reachable.
    let q = net.send(0, 1, 60);
    assert_eq!(net.delivered[1].last(), Some(&q));
}

#[test]
fn member_claiming_another_address_is_dropped_by_receiver() {
    // Node 1 believes its address is .3 (a member lying about itself);
    // node 0 maps node 1 to .2, so every packet from node 1 is spoofed.
    let mut net = Net::new(3, false);
    let mut c = NodeConfig::new(
        net.keys[1].clone(),
        "10.77.0.0/16".parse().unwrap(),
        ip(3),
        Duration::ZERO,
    );
    c.mtu = DEFAULT_INNER_MTU;
    let mut liar = Node::new(c, net.now).unwrap();
    liar.add_peer(
        PeerConfig {
            public_key: net.keys[0].public_key(),
            address: ip(1),
            endpoints: vec![sock(0)],
        },
        net.now,
    )
    .unwrap();
    net.nodes[1] = liar;
    net.send_raw(1, &udp_packet(ip(3), ip(1), 20));
    assert!(net.delivered[0].is_empty());
    assert_eq!(net.drops(0, DropReason::SpoofedSource), 1);
}

#[test]
fn oversize_packet_gets_fragmentation_needed_back() {
    let mut net = Net::new(2, false);
    net.send(0, 1, DEFAULT_INNER_MTU);
    assert!(net.wire_log.is_empty());
    let icmp = &net.delivered[0][0];
    assert_eq!((icmp[9], icmp[20], icmp[21]), (1, 3, 4));
    assert_eq!(
        u16::from_be_bytes([icmp[26], icmp[27]]) as usize,
        DEFAULT_INNER_MTU
    );
    assert_eq!(net.drops(0, DropReason::TooBig), 1);
}

#[test]
fn blocked_pair_goes_through_relay_end_to_end() {
    let mut net = Net::new(3, true);
    net.block(1, 2);
    net.advance(Duration::from_secs(2));
    let p = net.send(1, 2, 500);
    assert_eq!(net.delivered[2], vec![p.clone()]);
    let q = net.send(2, 1, 300);
    assert_eq!(net.delivered[1], vec![q]);
    assert_eq!(net.status(1, 2).path, PathKind::Relayed);
    assert_eq!(net.status(1, 0).path, PathKind::Direct);
    assert!(net.nodes[0].status(net.now).relayed >= 2);
    // The relay forwards ciphertext only: the plaintext never appears in what it sent.
    let needle = &p[28..60];
    assert!(net
        .wire_log
        .iter()
        .filter(|(f, _, _)| *f == 0)
        .all(|(_, _, b)| !b.windows(needle.len()).any(|w| w == needle)));
}

#[test]
fn path_moves_relay_to_direct_and_back_and_survives_relay_death() {
    let mut net = Net::new(3, true);
    net.block(1, 2);
    net.advance(Duration::from_secs(10));
    assert_eq!(net.status(1, 2).path, PathKind::Relayed);
    assert!(net.status(1, 2).rtt_us.is_some(), "relayed rtt measured");
    // The direct path opens: the next search probe finds it.
    net.unblock(1, 2);
    net.advance(crate::path::SEARCH_INTERVAL + Duration::from_secs(1));
    assert_eq!(net.status(1, 2).path, PathKind::Direct);
    assert_eq!(net.status(2, 1).path, PathKind::Direct);
    let relayed_before = net.nodes[0].status(net.now).relayed;
    let p = net.send(1, 2, 100);
    assert_eq!(net.delivered[2].last(), Some(&p));
    assert_eq!(net.nodes[0].status(net.now).relayed, relayed_before);
    // It breaks again: keepalive probes go unanswered, traffic falls back.
    net.block(1, 2);
    net.advance(crate::path::KEEPALIVE_INTERVAL + Duration::from_secs(6));
    assert_eq!(net.status(1, 2).path, PathKind::Relayed);
    assert_eq!(net.status(1, 2).fallbacks, 1);
    let p = net.send(1, 2, 100);
    assert_eq!(net.delivered[2].last(), Some(&p));
    // The relay dies too: unreachable, packets are counted, nothing panics.
    net.block(0, 1);
    net.block(0, 2);
    net.advance(crate::path::KEEPALIVE_INTERVAL + Duration::from_secs(6));
    // No relay left: back to trying the candidates blindly.
    assert_eq!(net.status(1, 2).path, PathKind::Unconfirmed);
    assert_eq!(net.status(1, 0).path, PathKind::Unconfirmed);
    let n = net.delivered[2].len();
    net.send(1, 2, 100);
    assert_eq!(net.delivered[2].len(), n);
}

#[test]
fn relay_refuses_when_not_configured_to_relay() {
    let mut net = Net::new(3, true);
    let mut c = NodeConfig::new(
        net.keys[0].clone(),
        "10.77.0.0/16".parse().unwrap(),
        ip(1),
        Duration::ZERO,
    );
    c.relay_for_others = false;
    let mut stingy = Node::new(c, net.now).unwrap();
    for j in 1..3 {
        stingy
            .add_peer(
                PeerConfig {
                    public_key: net.keys[j].public_key(),
                    address: ip(1 + j as u8),
                    endpoints: vec![sock(j)],
                },
                net.now,
            )
            .unwrap();
    }
    net.nodes[0] = stingy;
    net.block(1, 2);
    net.advance(Duration::from_secs(2));
    net.send(1, 2, 10);
    net.advance(REKEY_TIMEOUT);
    assert!(net.delivered[2].is_empty());
    assert!(net.drops(0, DropReason::RelayRefused) > 0);
}

#[test]
fn sessions_rekey_before_expiry_and_traffic_continues() {
    let mut net = Net::new(2, false);
    net.send(0, 1, 10);
    let first = net
        .wire_log
        .iter()
        .find(|(_, _, b)| b[0] == TYPE_INIT)
        .map(|x| x.2.clone())
        .unwrap();
    let inits = |net: &Net| {
        net.wire_log
            .iter()
            .filter(|(_, _, b)| b[0] == TYPE_INIT)
            .count()
    };
    assert_eq!(inits(&net), 1);
    for _ in 0..8 {
        net.advance(Duration::from_secs(60));
        net.send(0, 1, 10);
        net.send(1, 0, 10);
    }
    assert!(
        inits(&net) >= 3,
        "rekeyed every ~120 s over 480 s: {}",
        inits(&net)
    );
    assert_eq!(net.delivered[1].len(), 9);
    assert_eq!(net.delivered[0].len(), 8);
    // Old initiations stay stale forever.
    net.inject(1, sock(0), &first);
    assert!(net.drops(1, DropReason::StaleHandshake) >= 1);
}

#[test]
fn handshake_to_silent_peer_gives_up_and_drops_queue() {
    let mut net = Net::new(2, false);
    net.block(0, 1);
    for _ in 0..10 {
        net.send(0, 1, 10);
    }
    net.advance(REKEY_ATTEMPT_TIME + Duration::from_secs(6));
    let retries = net
        .wire_log
        .iter()
        .filter(|(f, _, b)| *f == 0 && b[0] == TYPE_INIT)
        .count();
    assert!(
        (15..=20).contains(&retries),
        "retries every 5 s for 90 s: {retries}"
    );
    assert_eq!(net.drops(0, DropReason::NoPath), 10);
}

#[test]
fn status_serializes_for_the_cli() {
    let mut net = Net::new(2, false);
    net.send(0, 1, 10);
    let s = serde_json::to_value(net.nodes[0].status(net.now)).unwrap();
    assert_eq!(s["peers"][0]["path"], "direct");
    assert_eq!(s["address"], "10.77.0.1");
}

#[test]
fn steady_state_reuses_buffers() {
    let mut net = Net::new(2, false);
    net.send(0, 1, 10);
    let p = udp_packet(ip(1), ip(2), 1000);
    let mut out = Outputs::new();
    for _ in 0..4 {
        net.nodes[0].handle_tun_packet(net.now, &p, &mut out);
        out.clear();
    }
    let cap = out.pool.len();
    for _ in 0..100 {
        net.nodes[0].handle_tun_packet(net.now, &p, &mut out);
        out.clear();
    }
    assert_eq!(out.pool.len(), cap);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn random_datagrams_never_panic_or_deliver(datagrams in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 1..20)) {
        let mut net = Net::new(2, false);
        net.send(0, 1, 10);
        for d in &datagrams {
            net.inject(1, sock(0), d);
        }
        prop_assert_eq!(net.delivered[1].len(), 1);
    }

    #[test]
    fn mutated_valid_datagrams_never_deliver(flips in proptest::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..4)) {
        let mut net = Net::new(3, true);
        net.block(1, 2);
        net.advance(Duration::from_secs(2));
        net.send(1, 2, 64);
        let n = net.delivered[2].len();
        let log = net.wire_log.clone();
        for (_, to, bytes) in log.iter().filter(|(_, _, b)| b[0] == TYPE_DATA || b[0] == TYPE_RELAY_FROM || b[0] == TYPE_RELAY_TO) {
            let mut m = bytes.clone();
            for (i, x) in &flips {
                let i = i.index(m.len());
                m[i] ^= x;
            }
            net.inject(*to, sock(0), &m);
        }
        prop_assert_eq!(net.delivered[2].len(), n);
    }
}
