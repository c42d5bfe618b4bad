//! The sans-IO vnet node: wire + router + path tied together.
//!
//! Feed it datagrams ([`Node::handle_udp`]), packets from the local interface
//! ([`Node::handle_tun_packet`]) and timer ticks ([`Node::handle_timeout`]);
//! it appends [`Output`]s to an [`Outputs`] the caller drains. Buffers travel
//! inside outputs and return to the pool on [`Outputs::clear`], so the steady
//! state allocates nothing per packet.

use crate::keys::{PeerId, PublicKey, SecretKey};
use crate::path::{Path, PathKind, PeerStatus, Route, Via};
use crate::router::{mtu, DropCounters, DropReason, EgressPolicy, Router, RouterError, Subnet};
use crate::wire::handshake::{self, Initiation};
use crate::wire::session::{
    Session, SessionError, REJECT_AFTER_TIME, REKEY_AFTER_TIME, RELAY_INNER_AT, RELAY_TAG_AT,
};
use crate::wire::{
    decode, Message, DATA_HEADER_LEN, DEFAULT_INNER_MTU, MAX_INNER_MTU, TYPE_DATA, TYPE_INIT,
    TYPE_RELAY_FROM, TYPE_RELAY_TO, TYPE_RESPONSE,
};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

/// Retry an unanswered handshake after this long (WireGuard REKEY_TIMEOUT).
pub const REKEY_TIMEOUT: Duration = Duration::from_secs(5);
/// Give up a handshake (and drop queued packets) after this long (WireGuard REKEY_ATTEMPT_TIME).
pub const REKEY_ATTEMPT_TIME: Duration = Duration::from_secs(90);
/// A responder starts its own rekey at this session age if the initiator did not
/// (WireGuard: REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT).
pub const RESPONDER_REKEY_AFTER: Duration = Duration::from_secs(165);
/// Packets held per peer while its handshake runs.
pub const QUEUE_LEN: usize = 64;
/// Bytes reserved in front of every outbound message: a relay hop's header,
/// peer id and tag, so wrapping for the relay never moves the payload.
const RELAY_PREFIX: usize = RELAY_INNER_AT;
/// Offset of the plaintext in an outbound buffer.
pub const TUN_HEADROOM: usize = RELAY_PREFIX + DATA_HEADER_LEN;
const PROBE_REQUEST: u8 = 0x01;
const PROBE_REPLY: u8 = 0x02;
const PROBE_LEN: usize = 12;

/// Errors configuring a node.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// Address/subnet problem.
    #[error(transparent)]
    Router(#[from] RouterError),
    /// The MTU is outside 576..=MAX_INNER_MTU.
    #[error("inner MTU {mtu} is outside 576..={max}")]
    BadMtu {
        /// Requested MTU.
        mtu: usize,
        /// Maximum.
        max: usize,
    },
    /// A peer was configured with our own key.
    #[error("peer {0:?} is this node's own key")]
    PeerIsSelf(PublicKey),
}

/// Static configuration of a node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Our static key.
    pub secret_key: SecretKey,
    /// The vnet-wide pre-shared key (mixed into every handshake; zeros if unused).
    pub psk: [u8; 32],
    /// The buyer's subnet.
    pub subnet: Subnet,
    /// Our address in it.
    pub address: Ipv4Addr,
    /// Inner MTU.
    pub mtu: usize,
    /// The member that relays for us when no direct path exists.
    pub relay: Option<PublicKey>,
    /// Whether we forward relay traffic between other members.
    pub relay_for_others: bool,
    /// Where our local side (guest or TUN) may send; every lease keeps the
    /// default, [`EgressPolicy::SubnetOnly`].
    pub egress: EgressPolicy,
    /// Wall-clock time (since the Unix epoch) at the `now` given to [`Node::new`];
    /// handshake timestamps derive from it.
    pub unix_time: Duration,
}

impl NodeConfig {
    /// A config with defaults: zero PSK, default MTU, no relay, not relaying,
    /// egress to the subnet only.
    pub fn new(
        secret_key: SecretKey,
        subnet: Subnet,
        address: Ipv4Addr,
        unix_time: Duration,
    ) -> Self {
        Self {
            secret_key,
            psk: [0; 32],
            subnet,
            address,
            mtu: DEFAULT_INNER_MTU,
            relay: None,
            relay_for_others: false,
            egress: EgressPolicy::SubnetOnly,
            unix_time,
        }
    }
}

/// One member as the broker's peer list describes it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerConfig {
    /// Static public key.
    pub public_key: PublicKey,
    /// Virtual address.
    pub address: Ipv4Addr,
    /// Endpoint candidates from the rendezvous.
    #[serde(default)]
    pub endpoints: Vec<SocketAddr>,
}

/// A buffer with the meaningful bytes starting at an offset.
#[derive(Debug)]
pub struct Packet {
    buf: Vec<u8>,
    start: usize,
}

impl Packet {
    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.buf[self.start..]
    }
}

/// Something the shell must do.
#[derive(Debug)]
pub enum Output {
    /// Send a UDP datagram.
    Transmit {
        /// Destination endpoint.
        dst: SocketAddr,
        /// Datagram payload.
        bytes: Packet,
    },
    /// Hand an IP packet to the local interface (TUN or guest).
    Deliver {
        /// The packet.
        ip_packet: Packet,
    },
}

/// Outputs of node calls plus a pool of recycled buffers.
#[derive(Debug, Default)]
pub struct Outputs {
    items: Vec<Output>,
    pool: Vec<Vec<u8>>,
}

impl Outputs {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Pending outputs in order.
    pub fn iter(&self) -> std::slice::Iter<'_, Output> {
        self.items.iter()
    }

    /// Number of pending outputs.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Drops pending outputs, keeping their buffers for reuse.
    pub fn clear(&mut self) {
        for o in self.items.drain(..) {
            let (Output::Transmit { bytes: p, .. } | Output::Deliver { ip_packet: p }) = o;
            if self.pool.len() < 1024 {
                self.pool.push(p.buf);
            }
        }
    }

    /// A cleared buffer from the pool (the shell may fill it for [`Node::handle_tun_buffer`]).
    pub fn buffer(&mut self) -> Vec<u8> {
        let mut b = self.pool.pop().unwrap_or_else(|| Vec::with_capacity(2048));
        b.clear();
        b
    }

    fn recycle(&mut self, b: Vec<u8>) {
        if self.pool.len() < 1024 {
            self.pool.push(b);
        }
    }

    fn transmit(&mut self, dst: SocketAddr, buf: Vec<u8>, start: usize) {
        self.items.push(Output::Transmit {
            dst,
            bytes: Packet { buf, start },
        });
    }

    fn deliver(&mut self, buf: Vec<u8>, start: usize) {
        self.items.push(Output::Deliver {
            ip_packet: Packet { buf, start },
        });
    }
}

/// How a message reached us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Direct(SocketAddr),
    Relayed(PeerId),
}

struct Pending {
    init: Initiation,
    /// Sent without the relay; retried through it as soon as it is usable.
    without_relay: bool,
    local_index: u32,
    sent: Instant,
    started: Instant,
}

struct Peer {
    public: PublicKey,
    address: Ipv4Addr,
    path: Path,
    current: Option<Session>,
    previous: Option<Session>,
    next: Option<Session>,
    pending: Option<Pending>,
    last_init_timestamp: u64,
    /// When the peer was added: the higher id opens a session itself once
    /// [`REKEY_TIMEOUT`] has passed since then without one.
    added: Instant,
    queue: VecDeque<Vec<u8>>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Slot {
    Current,
    Previous,
    Next,
}

/// Node-wide status for `cpushare net status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Our peer id.
    pub peer: String,
    /// Our virtual address.
    pub address: Ipv4Addr,
    /// The subnet.
    pub subnet: Subnet,
    /// One entry per member.
    pub peers: Vec<PeerStatus>,
    /// Drop counters by reason (only non-zero ones).
    pub drops: std::collections::BTreeMap<String, u64>,
    /// Messages relayed for other members.
    pub relayed: u64,
}

/// The sans-IO vnet state machine for one member of one buyer's vnet.
pub struct Node {
    config: NodeConfig,
    id: PeerId,
    epoch: Instant,
    last_timestamp: u64,
    router: Router,
    peers: HashMap<PeerId, Peer>,
    by_key: HashMap<PublicKey, PeerId>,
    indices: HashMap<u32, PeerId>,
    relay: Option<PeerId>,
    drops: DropCounters,
    relayed: u64,
    scratch_via: Vec<Via>,
}

impl Node {
    /// A node with no peers yet.
    pub fn new(config: NodeConfig, now: Instant) -> Result<Self, NodeError> {
        if !(576..=MAX_INNER_MTU).contains(&config.mtu) {
            return Err(NodeError::BadMtu {
                mtu: config.mtu,
                max: MAX_INNER_MTU,
            });
        }
        let router = Router::new(config.subnet, config.address)?;
        let id = config.secret_key.public_key().peer_id();
        let relay = config.relay.map(|k| k.peer_id());
        Ok(Self {
            config,
            id,
            epoch: now,
            last_timestamp: 0,
            router,
            peers: HashMap::new(),
            by_key: HashMap::new(),
            indices: HashMap::new(),
            relay,
            drops: DropCounters::default(),
            relayed: 0,
            scratch_via: Vec::new(),
        })
    }

    /// Our peer id.
    pub fn id(&self) -> PeerId {
        self.id
    }

    /// The inner MTU (what the TUN/guest interface must use).
    pub fn mtu(&self) -> usize {
        self.config.mtu
    }

    /// Drop counters.
    pub fn drops(&self) -> &DropCounters {
        &self.drops
    }

    /// Counts a drop the shell decided on the local side before the node saw
    /// the packet (a guest's ARP for an address outside the subnet, say).
    pub fn count_drop(&mut self, reason: DropReason) {
        self.drops.count(reason);
    }

    /// Adds or updates a member (new endpoints keep the existing session).
    pub fn add_peer(&mut self, pc: PeerConfig, now: Instant) -> Result<PeerId, NodeError> {
        if pc.public_key == self.config.secret_key.public_key() {
            return Err(NodeError::PeerIsSelf(pc.public_key));
        }
        let id = pc.public_key.peer_id();
        self.router.insert(id, pc.address)?;
        if let Some(p) = self.peers.get_mut(&id) {
            p.address = pc.address;
            p.path.set_candidates(pc.endpoints, now);
            return Ok(id);
        }
        self.by_key.insert(pc.public_key, id);
        self.peers.insert(
            id,
            Peer {
                public: pc.public_key,
                address: pc.address,
                path: Path::new(pc.endpoints, now),
                current: None,
                previous: None,
                next: None,
                pending: None,
                last_init_timestamp: 0,
                added: now,
                queue: VecDeque::new(),
            },
        );
        Ok(id)
    }

    /// Ids of every member.
    pub fn peer_ids(&self) -> Vec<PeerId> {
        self.peers.keys().copied().collect()
    }

    /// Changes the member that relays for us (the rendezvous names it).
    pub fn set_relay(&mut self, relay: Option<PublicKey>) {
        self.config.relay = relay;
        self.relay = relay.map(|k| k.peer_id());
    }

    /// Removes a member and its sessions.
    pub fn remove_peer(&mut self, id: &PeerId) {
        if let Some(p) = self.peers.remove(id) {
            self.by_key.remove(&p.public);
            self.router.remove(id);
            self.indices.retain(|_, v| v != id);
        }
    }

    fn timestamp(&mut self, now: Instant) -> u64 {
        let wall = self.config.unix_time + now.saturating_duration_since(self.epoch);
        let ts = (wall.as_nanos() as u64).max(self.last_timestamp + 1);
        self.last_timestamp = ts;
        ts
    }

    fn new_index(&mut self, peer: PeerId) -> u32 {
        loop {
            let i: u32 = rand::random();
            if let std::collections::hash_map::Entry::Vacant(e) = self.indices.entry(i) {
                e.insert(peer);
                return i;
            }
        }
    }

    fn relay_usable(&self, for_peer: &PeerId) -> Option<(PeerId, SocketAddr)> {
        let r = self.relay?;
        if r == *for_peer {
            return None;
        }
        let p = self.peers.get(&r)?;
        p.current.as_ref()?;
        Some((r, p.path.direct()?))
    }

    // ---- outbound ------------------------------------------------------

    /// Handles an IP packet from the local interface (TUN or a guest's virtio-net).
    pub fn handle_tun_packet(&mut self, now: Instant, ip_packet: &[u8], out: &mut Outputs) {
        let mut buf = out.buffer();
        buf.resize(TUN_HEADROOM, 0);
        buf.extend_from_slice(ip_packet);
        self.handle_tun_buffer(now, buf, out);
    }

    /// Like [`Node::handle_tun_packet`] for a buffer whose packet starts at
    /// [`TUN_HEADROOM`], so the shell can read the interface straight into it.
    pub fn handle_tun_buffer(&mut self, now: Instant, mut buf: Vec<u8>, out: &mut Outputs) {
        if buf.len() < TUN_HEADROOM {
            out.recycle(buf);
            return self.drops.count(DropReason::NotIpv4);
        }
        let packet = &buf[TUN_HEADROOM..];
        // The egress policy first: a denied packet gets nothing back, not
        // even an ICMP error naming its destination.
        let routed = match self.config.egress {
            EgressPolicy::SubnetOnly => self.router.route_outbound(packet),
        };
        let peer = match routed {
            Ok(p) => p,
            Err(r) => {
                out.recycle(buf);
                return self.drops.count(r);
            }
        };
        if packet.len() > self.config.mtu {
            self.drops.count(DropReason::TooBig);
            let mut icmp = out.buffer();
            if mtu::fragmentation_needed(packet, self.config.mtu as u16, &mut icmp) {
                out.deliver(icmp, 0);
            } else {
                out.recycle(icmp);
            }
            out.recycle(buf);
            return;
        }
        let mss = (self.config.mtu - 40) as u16;
        mtu::clamp_mss(&mut buf[TUN_HEADROOM..], mss);
        self.send_plain(now, peer, buf, None, out);
    }

    /// Seals `buf` (plaintext at TUN_HEADROOM) for `peer` and sends it,
    /// queueing behind a handshake when there is no session yet.
    fn send_plain(
        &mut self,
        now: Instant,
        peer: PeerId,
        mut buf: Vec<u8>,
        via: Option<Via>,
        out: &mut Outputs,
    ) {
        let Some(p) = self.peers.get_mut(&peer) else {
            out.recycle(buf);
            return self.drops.count(DropReason::UnknownPeer);
        };
        let plain_len = buf.len() - TUN_HEADROOM;
        let sealed = match p.current.as_mut() {
            Some(s) if s.usable(now) => s.seal(now, TYPE_DATA, &mut buf, RELAY_PREFIX).is_ok(),
            _ => false,
        };
        if !sealed {
            if via.is_none() && plain_len > 0 {
                if p.queue.len() >= QUEUE_LEN {
                    self.drops.count(DropReason::NoPath);
                    if let Some(old) = p.queue.pop_front() {
                        out.recycle(old);
                    }
                }
                p.queue.push_back(buf);
            } else {
                out.recycle(buf);
            }
            if self.peers.get(&peer).is_some_and(|p| p.pending.is_none()) {
                self.initiate(now, peer, out);
            }
            return;
        }
        p.path.bytes_out += plain_len as u64;
        self.send_message(now, peer, buf, via, out);
    }

    /// Sends a complete inner message at `buf[RELAY_PREFIX..]` to `peer` along
    /// `via` or the peer's current route.
    fn send_message(
        &mut self,
        now: Instant,
        peer: PeerId,
        buf: Vec<u8>,
        via: Option<Via>,
        out: &mut Outputs,
    ) {
        let relay = self.relay_usable(&peer);
        let Some(p) = self.peers.get_mut(&peer) else {
            out.recycle(buf);
            return;
        };
        let route = match via {
            Some(Via::Direct(a)) => Route::Direct(a),
            Some(Via::Relay) => Route::Relay,
            None => p.path.route(relay.is_some()),
        };
        match route {
            Route::Direct(a) => {
                if via.is_none() {
                    p.path.on_direct_tx(now);
                }
                out.transmit(a, buf, RELAY_PREFIX);
            }
            Route::Spray => {
                let cands = p.path.candidates();
                for a in &cands[1..] {
                    let mut copy = out.buffer();
                    copy.extend_from_slice(&buf);
                    out.transmit(*a, copy, RELAY_PREFIX);
                }
                out.transmit(cands[0], buf, RELAY_PREFIX);
            }
            Route::Relay => self.wrap_for_relay(now, peer, relay, buf, out),
            Route::Unreachable => {
                out.recycle(buf);
                self.drops.count(DropReason::NoPath);
            }
        }
    }

    fn wrap_for_relay(
        &mut self,
        now: Instant,
        dst: PeerId,
        relay: Option<(PeerId, SocketAddr)>,
        mut buf: Vec<u8>,
        out: &mut Outputs,
    ) {
        let Some((r, addr)) = relay else {
            out.recycle(buf);
            return self.drops.count(DropReason::NoPath);
        };
        buf[DATA_HEADER_LEN..RELAY_TAG_AT].copy_from_slice(&dst.0);
        let sealed = self
            .peers
            .get_mut(&r)
            .and_then(|p| p.current.as_mut())
            .is_some_and(|s| s.seal_relay(now, TYPE_RELAY_TO, &mut buf, 0).is_ok());
        if sealed {
            out.transmit(addr, buf, 0);
        } else {
            out.recycle(buf);
            self.drops.count(DropReason::NoPath);
        }
    }

    fn initiate(&mut self, now: Instant, peer: PeerId, out: &mut Outputs) {
        let ts = self.timestamp(now);
        let index = self.new_index(peer);
        let mut buf = out.buffer();
        let relay = self.relay_usable(&peer);
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        let started = p.pending.as_ref().map_or(now, |x| x.started);
        if let Some(old) = p.pending.take() {
            self.indices.remove(&old.local_index);
        }
        let mut msg = Vec::new();
        match handshake::initiate(
            &self.config.secret_key,
            &self.config.psk,
            &p.public,
            index,
            ts,
            &mut msg,
        ) {
            Ok(init) => {
                let without_relay = p.path.direct().is_none() && relay.is_none();
                p.pending = Some(Pending {
                    init,
                    without_relay,
                    local_index: index,
                    sent: now,
                    started,
                });
                buf.resize(RELAY_PREFIX, 0);
                buf.extend_from_slice(&msg);
                self.send_message(now, peer, buf, None, out);
            }
            Err(_) => {
                self.indices.remove(&index);
                out.recycle(buf);
            }
        }
    }

    // ---- inbound -------------------------------------------------------

    /// Handles one UDP datagram received from `from`.
    pub fn handle_udp(
        &mut self,
        now: Instant,
        from: SocketAddr,
        datagram: &[u8],
        out: &mut Outputs,
    ) {
        let mut buf = out.buffer();
        buf.extend_from_slice(datagram);
        self.handle_message(now, Source::Direct(from), buf, 0, out);
    }

    fn handle_message(
        &mut self,
        now: Instant,
        src: Source,
        buf: Vec<u8>,
        start: usize,
        out: &mut Outputs,
    ) {
        let msg = match decode(&buf[start..]) {
            Ok(m) => m,
            Err(_) => {
                out.recycle(buf);
                return self.drops.count(DropReason::Malformed);
            }
        };
        match msg {
            Message::Init { sender, noise } => {
                let noise: [u8; crate::wire::NOISE_INIT_LEN] =
                    noise.try_into().expect("decode checked the length");
                out.recycle(buf);
                self.on_init(now, src, sender, &noise, out);
            }
            Message::Response {
                sender,
                receiver,
                noise,
            } => {
                let noise: [u8; crate::wire::NOISE_RESPONSE_LEN] =
                    noise.try_into().expect("decode checked the length");
                out.recycle(buf);
                self.on_response(now, src, sender, receiver, &noise, out);
            }
            Message::Transport {
                kind,
                receiver,
                counter,
            } => self.on_transport(now, src, kind, receiver, counter, buf, start, out),
        }
    }

    fn on_init(&mut self, now: Instant, src: Source, sender: u32, noise: &[u8], out: &mut Outputs) {
        let got = match handshake::read_init(&self.config.secret_key, &self.config.psk, noise) {
            Ok(g) => g,
            Err(_) => return self.drops.count(DropReason::Forged),
        };
        let Some(&peer) = self.by_key.get(&got.remote) else {
            return self.drops.count(DropReason::UnknownPeer);
        };
        if matches!(src, Source::Relayed(origin) if origin != peer) {
            return self.drops.count(DropReason::Forged);
        }
        let p = self.peers.get_mut(&peer).expect("by_key and peers agree");
        if got.timestamp <= p.last_init_timestamp {
            return self.drops.count(DropReason::StaleHandshake);
        }
        p.last_init_timestamp = got.timestamp;
        let index = self.new_index(peer);
        let mut msg = Vec::new();
        let keys = match got.respond(index, sender, &mut msg) {
            Ok(k) => k,
            Err(_) => {
                self.indices.remove(&index);
                return self.drops.count(DropReason::Forged);
            }
        };
        let p = self.peers.get_mut(&peer).expect("checked above");
        if let Some(old) = p
            .next
            .replace(Session::new(&keys, index, sender, false, now))
        {
            self.indices.remove(&old.local_index);
        }
        let via = match src {
            Source::Direct(a) => {
                p.path.on_direct_rx(now, a);
                Via::Direct(a)
            }
            Source::Relayed(_) => Via::Relay,
        };
        let mut buf = out.buffer();
        buf.resize(RELAY_PREFIX, 0);
        buf.extend_from_slice(&msg);
        self.send_message(now, peer, buf, Some(via), out);
    }

    fn on_response(
        &mut self,
        now: Instant,
        src: Source,
        sender: u32,
        receiver: u32,
        noise: &[u8],
        out: &mut Outputs,
    ) {
        let Some(&peer) = self.indices.get(&receiver) else {
            return self.drops.count(DropReason::UnknownPeer);
        };
        let Some(p) = self.peers.get_mut(&peer) else {
            return self.drops.count(DropReason::UnknownPeer);
        };
        if p.pending.as_ref().is_none_or(|x| x.local_index != receiver) {
            return self.drops.count(DropReason::UnknownPeer);
        }
        if matches!(src, Source::Relayed(origin) if origin != peer) {
            return self.drops.count(DropReason::Forged);
        }
        let pending = p.pending.take().expect("checked above");
        let keys = match pending.init.finish(noise) {
            Ok(k) => k,
            Err(_) => {
                self.indices.remove(&receiver);
                return self.drops.count(DropReason::Forged);
            }
        };
        let session = Session::new(&keys, receiver, sender, true, now);
        if let Some(old) = p.previous.take() {
            self.indices.remove(&old.local_index);
        }
        p.previous = p.current.replace(session);
        if let Source::Direct(a) = src {
            p.path
                .on_handshake_direct(now, a, now.saturating_duration_since(pending.sent));
        }
        let queued: Vec<Vec<u8>> = p.queue.drain(..).collect();
        if queued.is_empty() {
            let mut ka = out.buffer();
            ka.resize(TUN_HEADROOM, 0);
            self.send_plain(now, peer, ka, None, out);
        }
        for b in queued {
            self.send_plain(now, peer, b, None, out);
        }
    }

    fn find_session(&mut self, receiver: u32) -> Option<(PeerId, Slot)> {
        let peer = *self.indices.get(&receiver)?;
        let p = self.peers.get(&peer)?;
        let is = |s: &Option<Session>| s.as_ref().is_some_and(|s| s.local_index == receiver);
        if is(&p.current) {
            Some((peer, Slot::Current))
        } else if is(&p.next) {
            Some((peer, Slot::Next))
        } else if is(&p.previous) {
            Some((peer, Slot::Previous))
        } else {
            None
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn on_transport(
        &mut self,
        now: Instant,
        src: Source,
        kind: u8,
        receiver: u32,
        counter: u64,
        mut buf: Vec<u8>,
        start: usize,
        out: &mut Outputs,
    ) {
        let Some((peer, slot)) = self.find_session(receiver) else {
            out.recycle(buf);
            return self.drops.count(DropReason::UnknownPeer);
        };
        if matches!(src, Source::Relayed(origin) if origin != peer)
            || (kind != TYPE_DATA && matches!(src, Source::Relayed(_)))
        {
            out.recycle(buf);
            return self.drops.count(DropReason::Forged);
        }
        let p = self.peers.get_mut(&peer).expect("find_session checked");
        let session = match slot {
            Slot::Current => p.current.as_mut(),
            Slot::Next => p.next.as_mut(),
            Slot::Previous => p.previous.as_mut(),
        }
        .expect("find_session checked");
        let opened = if kind == TYPE_DATA {
            session
                .open(now, counter, &mut buf[start..])
                .map(|r| (r.start + start)..(r.end + start))
        } else {
            session
                .open_relay(now, counter, &buf[start..])
                .map(|()| start..buf.len())
        };
        let range = match opened {
            Ok(r) => r,
            Err(e) => {
                out.recycle(buf);
                return self.drops.count(match e {
                    SessionError::Forged(_) => DropReason::Forged,
                    SessionError::Short(_) => DropReason::Malformed,
                    _ => DropReason::Replay,
                });
            }
        };
        if slot == Slot::Next {
            // The initiator used the new session: it is confirmed.
            if let Some(old) = p.previous.take() {
                self.indices.remove(&old.local_index);
            }
            p.previous = p.current.take();
            p.current = p.next.take();
        }
        if let Source::Direct(a) = src {
            p.path.on_direct_rx(now, a);
        }
        buf.truncate(range.end);
        match kind {
            TYPE_DATA => self.on_plain(now, peer, src, buf, range.start, out),
            TYPE_RELAY_TO => self.forward_relay(now, peer, buf, range.start, out),
            _ => self.on_relay_from(now, buf, range.start, out),
        }
    }

    fn on_plain(
        &mut self,
        now: Instant,
        peer: PeerId,
        src: Source,
        mut buf: Vec<u8>,
        at: usize,
        out: &mut Outputs,
    ) {
        let p = self.peers.get_mut(&peer).expect("caller checked");
        let plain = &buf[at..];
        let via = match src {
            Source::Direct(a) => Via::Direct(a),
            Source::Relayed(_) => Via::Relay,
        };
        match plain.first().map(|b| b >> 4) {
            None => out.recycle(buf), // keepalive
            Some(4) => {
                if let Err(r) = self.router.check_inbound(&peer, plain) {
                    out.recycle(buf);
                    return self.drops.count(r);
                }
                p.path.bytes_in += plain.len() as u64;
                let mss = (self.config.mtu - 40) as u16;
                mtu::clamp_mss(&mut buf[at..], mss);
                out.deliver(buf, at);
            }
            Some(0)
                if plain.len() == PROBE_LEN
                    && (plain[0] == PROBE_REQUEST || plain[0] == PROBE_REPLY) =>
            {
                let mut id = [0u8; 8];
                id.copy_from_slice(&plain[4..12]);
                let id = u64::from_le_bytes(id);
                if plain[0] == PROBE_REPLY {
                    p.path.on_probe_reply(now, id, via);
                    out.recycle(buf);
                } else {
                    out.recycle(buf);
                    self.send_probe(now, peer, PROBE_REPLY, id, via, out);
                }
            }
            Some(_) => {
                out.recycle(buf);
                self.drops.count(DropReason::NotIpv4);
            }
        }
    }

    fn send_probe(
        &mut self,
        now: Instant,
        peer: PeerId,
        kind: u8,
        id: u64,
        via: Via,
        out: &mut Outputs,
    ) {
        let mut b = out.buffer();
        b.resize(TUN_HEADROOM, 0);
        b.extend_from_slice(&[kind, 0, 0, 0]);
        b.extend_from_slice(&id.to_le_bytes());
        self.send_plain(now, peer, b, Some(via), out);
    }

    /// We are the relay: `from` sent the relay-to message at `buf[at..]`.
    fn forward_relay(
        &mut self,
        now: Instant,
        from: PeerId,
        mut buf: Vec<u8>,
        at: usize,
        out: &mut Outputs,
    ) {
        if !self.config.relay_for_others {
            out.recycle(buf);
            return self.drops.count(DropReason::RelayRefused);
        }
        let mut dst = [0u8; 32];
        dst.copy_from_slice(&buf[at + DATA_HEADER_LEN..at + RELAY_TAG_AT]);
        let dst = PeerId(dst);
        let inner_type = buf[at + RELAY_INNER_AT];
        if dst == self.id
            || dst == from
            || ![TYPE_INIT, TYPE_RESPONSE, TYPE_DATA].contains(&inner_type)
        {
            out.recycle(buf);
            return self.drops.count(DropReason::RelayRefused);
        }
        let Some(p) = self.peers.get_mut(&dst) else {
            out.recycle(buf);
            return self.drops.count(DropReason::RelayRefused);
        };
        let (Some(addr), Some(s)) = (p.path.direct(), p.current.as_mut()) else {
            out.recycle(buf);
            return self.drops.count(DropReason::NoPath);
        };
        buf[at + DATA_HEADER_LEN..at + RELAY_TAG_AT].copy_from_slice(&from.0);
        if s.seal_relay(now, TYPE_RELAY_FROM, &mut buf, at).is_err() {
            out.recycle(buf);
            return self.drops.count(DropReason::NoPath);
        }
        self.relayed += 1;
        out.transmit(addr, buf, at);
    }

    /// A relay handed us the relay-from message at `buf[at..]`.
    fn on_relay_from(&mut self, now: Instant, buf: Vec<u8>, at: usize, out: &mut Outputs) {
        let mut origin = [0u8; 32];
        origin.copy_from_slice(&buf[at + DATA_HEADER_LEN..at + RELAY_TAG_AT]);
        if ![TYPE_INIT, TYPE_RESPONSE, TYPE_DATA].contains(&buf[at + RELAY_INNER_AT]) {
            out.recycle(buf);
            return self.drops.count(DropReason::Malformed);
        }
        self.handle_message(
            now,
            Source::Relayed(PeerId(origin)),
            buf,
            at + RELAY_INNER_AT,
            out,
        );
    }

    // ---- timers --------------------------------------------------------

    /// The next instant [`Node::handle_timeout`] has work to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.peers
            .iter()
            .flat_map(|(id, p)| {
                let pending = p.pending.as_ref().map(|x| {
                    if x.without_relay && self.relay_usable(id).is_some() {
                        x.sent
                    } else {
                        x.sent + REKEY_TIMEOUT
                    }
                });
                let session = p.current.as_ref().map(|s| {
                    let rekey = if s.initiator {
                        REKEY_AFTER_TIME
                    } else {
                        RESPONDER_REKEY_AFTER
                    };
                    (s.created + rekey).min(p.path.poll_timeout())
                });
                let proactive =
                    (p.current.is_none() && p.pending.is_none()).then_some(if self.id < *id {
                        self.epoch
                    } else {
                        p.added + REKEY_TIMEOUT
                    });
                [pending, session, proactive]
            })
            .flatten()
            .min()
    }

    /// Runs due timers: handshake retries, rekeys, expiry, probes, keepalives.
    pub fn handle_timeout(&mut self, now: Instant, out: &mut Outputs) {
        let ids: Vec<PeerId> = self.peers.keys().copied().collect();
        for id in ids {
            self.peer_timers(now, id, out);
        }
    }

    fn peer_timers(&mut self, now: Instant, id: PeerId, out: &mut Outputs) {
        let relay_usable = self.relay_usable(&id).is_some();
        let me = self.id;
        let Some(p) = self.peers.get_mut(&id) else {
            return;
        };
        for slot in [&mut p.current, &mut p.previous, &mut p.next] {
            if slot
                .as_ref()
                .is_some_and(|s| now.saturating_duration_since(s.created) >= REJECT_AFTER_TIME)
            {
                if let Some(s) = slot.take() {
                    self.indices.remove(&s.local_index);
                }
            }
        }
        let mut initiate = false;
        if let Some(x) = &p.pending {
            if now.saturating_duration_since(x.started) >= REKEY_ATTEMPT_TIME {
                self.indices.remove(&x.local_index);
                p.pending = None;
                for b in p.queue.drain(..) {
                    self.drops.count(DropReason::NoPath);
                    out.recycle(b);
                }
            } else if now.saturating_duration_since(x.sent) >= REKEY_TIMEOUT
                || (x.without_relay && relay_usable)
            {
                initiate = true;
            }
        } else if let Some(s) = &p.current {
            let age = now.saturating_duration_since(s.created);
            initiate = s.wants_rekey(now) && (s.initiator || age >= RESPONDER_REKEY_AFTER);
        } else if me < id || now >= p.added + REKEY_TIMEOUT {
            // The lower id opens sessions proactively, so paths are ready
            // before the first packet and both sides rarely collide. The
            // higher id follows if nothing came: behind a NAT, its own
            // outbound handshake is what opens the mapping for the peer
            // (simultaneous open), so waiting forever would deadlock.
            initiate = true;
        }
        if initiate {
            return self.initiate(now, id, out);
        }
        if p.current.is_none() {
            return;
        }
        let mut via = std::mem::take(&mut self.scratch_via);
        if let Some(probe_id) = p.path.poll_probe(now, relay_usable, &mut via) {
            for v in &via {
                self.send_probe(now, id, PROBE_REQUEST, probe_id, *v, out);
            }
        }
        self.scratch_via = via;
    }

    // ---- status --------------------------------------------------------

    /// Status of every member, for `cpushare net status`.
    pub fn status(&self, now: Instant) -> NodeStatus {
        let mut peers: Vec<PeerStatus> = self
            .peers
            .iter()
            .map(|(id, p)| {
                let relay = self.relay_usable(id).is_some();
                PeerStatus {
                    peer: id.to_string(),
                    address: p.address.to_string(),
                    path: match p.path.route(relay) {
                        Route::Direct(_) => PathKind::Direct,
                        Route::Relay if p.current.is_some() => PathKind::Relayed,
                        Route::Spray if p.current.is_some() => PathKind::Unconfirmed,
                        _ => PathKind::Unreachable,
                    },
                    endpoint: p.path.direct(),
                    rtt_us: p.path.rtt().map(|d| d.as_micros() as u64),
                    bytes_in: p.path.bytes_in,
                    bytes_out: p.path.bytes_out,
                    session: p.current.is_some(),
                    session_age_s: p
                        .current
                        .as_ref()
                        .map(|s| now.saturating_duration_since(s.created).as_secs()),
                    fallbacks: p.path.fallbacks,
                }
            })
            .collect();
        peers.sort_by(|a, b| a.address.cmp(&b.address));
        NodeStatus {
            peer: self.id.to_string(),
            address: self.config.address,
            subnet: self.config.subnet,
            peers,
            drops: self.drops.to_map(),
            relayed: self.relayed,
        }
    }
}

#[cfg(test)]
mod tests;
