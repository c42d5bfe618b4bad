//! I/O shell: drives a [`Node`] with a real UDP socket and TUN device.
//!
//! Three threads share the node behind a mutex, each holding it only while
//! the pure core processes a batch: the TUN reader (drains up to [`udp::BATCH`]
//! packets, seals them, one `sendmmsg`), the UDP reader (one `recvmmsg`,
//! opens them, writes to the TUN) and the timer (handshakes, probes, status
//! file). Sealing on one core while opening on the other is what lets two
//! cores beat single-threaded userspace WireGuard.
//!
//! Each source is read under its own lock, so either I/O thread may drain
//! either source in order: after moving packets a thread also takes what
//! the other source has queued (the reply the kernel made while we wrote
//! into the TUN) and busy polls both for an adaptive window
//! ([`busy_poll`]), so a request/reply round trip does not wait for
//! sleeping threads to wake.

pub mod busy_poll;
pub mod config;
pub mod endpoints;
pub mod frames;
pub mod offload;
pub mod tun;
pub mod udp;

use crate::keys::PublicKey;
use crate::node::{Node, NodeError, Output, Outputs, PeerConfig, TUN_HEADROOM};
use crate::router::DropReason;
use config::Config;
use frames::{Frame, FrameLink};
use std::io;
use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tun::{Tun, TunError};

/// Errors starting or running the shell.
#[derive(Debug, thiserror::Error)]
pub enum ShellError {
    /// The configuration was rejected by the core.
    #[error("invalid vnet configuration: {0}")]
    Config(#[from] crate::node::NodeError),
    /// TUN creation failed.
    #[error(transparent)]
    Tun(#[from] TunError),
    /// Binding the UDP socket failed.
    #[error("binding UDP {addr}: {source}")]
    Bind {
        /// Address we tried.
        addr: std::net::SocketAddr,
        /// OS error.
        source: io::Error,
    },
    /// A thread could not be spawned.
    #[error("spawning thread: {0}")]
    Spawn(io::Error),
}

/// What a node's packets are delivered to on this host.
pub enum Local {
    /// A TUN interface (the buyer's host, or a test stand-in for a guest).
    Tun(Tun),
    /// A guest's virtio-net link: one Ethernet frame per seqpacket message.
    Frames(FrameLink),
    /// Nothing yet (a wasm lease has no NIC): the node still answers
    /// handshakes and probes, and inbound packets are dropped.
    Detached,
}

struct Shared {
    node: Mutex<Node>,
    sock: UdpSocket,
    local: Local,
    stop: AtomicBool,
    /// UDP GSO in use; cleared if the kernel refuses it once.
    gso: AtomicBool,
    /// TCP coalescing of TUN writes in use; cleared if the kernel refuses it once.
    gro_writes: AtomicBool,
    /// Held while reading the TUN and handling what was read.
    tun_rx: Mutex<TunRx>,
    /// Held while reading the socket and handling what was read.
    udp_rx: Mutex<UdpRx>,
    /// How long the I/O threads keep polling after traffic.
    busy: busy_poll::BusyPoll,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Node> {
        // A panic while holding the lock leaves a node that is still
        // consistent per packet; keep serving rather than cascade.
        self.node.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn flush(&self, out: &mut Outputs) {
        if out.is_empty() {
            return;
        }
        let transmits: Vec<(std::net::SocketAddr, &[u8])> = out
            .iter()
            .filter_map(|o| match o {
                Output::Transmit { dst, bytes } => Some((*dst, bytes.as_slice())),
                Output::Deliver { .. } => None,
            })
            .collect();
        let gso = self.gso.load(Ordering::Relaxed);
        if let Err(e) = udp::send_batch(&self.sock, &transmits, gso) {
            if gso && e.raw_os_error() == Some(libc::EIO) {
                self.gso.store(false, Ordering::Relaxed);
                let _ = udp::send_batch(&self.sock, &transmits, false);
            }
        }
        let delivers: Vec<&[u8]> = out
            .iter()
            .filter_map(|o| match o {
                Output::Deliver { ip_packet } => Some(ip_packet.as_slice()),
                Output::Transmit { .. } => None,
            })
            .collect();
        let tun = match &self.local {
            Local::Tun(t) => t,
            Local::Frames(link) => {
                let mut scratch = Vec::with_capacity(2048);
                for p in &delivers {
                    let _ = link.write_ip(p, &mut scratch);
                }
                out.clear();
                return;
            }
            Local::Detached => {
                out.clear();
                return;
            }
        };
        if tun.offload() && self.gro_writes.load(Ordering::Relaxed) {
            let mut merged = Vec::new();
            let mut i = 0;
            while i < delivers.len() {
                let n = offload::coalesce(&delivers[i..], &mut merged);
                let refused = n > 1
                    && tun
                        .write_raw(&merged)
                        .is_err_and(|e| e.raw_os_error() == Some(libc::EINVAL));
                if refused {
                    // This kernel does not take GSO writes: stop trying.
                    self.gro_writes.store(false, Ordering::Relaxed);
                    for p in &delivers[i..i + n] {
                        let _ = tun.write(p);
                    }
                } else if n == 1 {
                    let _ = tun.write_raw(&merged);
                }
                i += n.max(1);
            }
        } else {
            for p in &delivers {
                let _ = tun.write(p);
            }
        }
        out.clear();
    }

    fn run_timers(&self, node: &mut Node, now: Instant, out: &mut Outputs) {
        if node.poll_timeout().is_some_and(|t| t <= now) {
            node.handle_timeout(now, out);
        }
    }
}

/// A running vnet node; stops its threads when dropped.
pub struct Running {
    shared: Arc<Shared>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Running {
    /// The TUN interface name (empty without a TUN).
    pub fn tun_name(&self) -> &str {
        match &self.shared.local {
            Local::Tun(t) => t.name(),
            _ => "",
        }
    }

    /// Replaces the member list and relay with a new rendezvous view:
    /// members not in `peers` are removed, the rest added or updated
    /// (existing sessions survive new endpoints).
    pub fn apply(&self, peers: &[PeerConfig], relay: Option<PublicKey>) -> Result<(), NodeError> {
        let now = Instant::now();
        let mut node = self.shared.lock();
        let keep: Vec<_> = peers.iter().map(|p| p.public_key.peer_id()).collect();
        for id in node.peer_ids() {
            if !keep.contains(&id) {
                node.remove_peer(&id);
            }
        }
        node.set_relay(relay);
        for p in peers {
            node.add_peer(p.clone(), now)?;
        }
        Ok(())
    }

    /// The bound UDP address.
    pub fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.shared.sock.local_addr()
    }

    /// Current status.
    pub fn status(&self) -> crate::node::NodeStatus {
        self.shared.lock().status(Instant::now())
    }

    /// Stops the threads and gives back the node and its socket, so the
    /// node can go on (sessions intact) with another local side.
    pub fn into_parts(mut self) -> (Node, UdpSocket) {
        self.shared.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        let shared = self.shared.clone();
        drop(self);
        let shared = Arc::try_unwrap(shared)
            .unwrap_or_else(|_| unreachable!("every thread holding the node has been joined"));
        let node = shared.node.into_inner().unwrap_or_else(|p| p.into_inner());
        (node, shared.sock)
    }

    /// Blocks until the threads end (they run until the process exits).
    pub fn join(mut self) {
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
    }
}

/// Wall-clock time now, for [`crate::NodeConfig::unix_time`].
pub fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// Binds a UDP socket for a node (large buffers set).
pub fn bind(addr: std::net::SocketAddr) -> Result<UdpSocket, ShellError> {
    let sock = UdpSocket::bind(addr).map_err(|source| ShellError::Bind { addr, source })?;
    set_buffers(&sock);
    Ok(sock)
}

/// Builds the node from `cfg`, opens the TUN device and socket, and starts the threads.
pub fn start(cfg: &Config) -> Result<Running, ShellError> {
    let now = Instant::now();
    let node_cfg = cfg.node_config(unix_now());
    let mtu = node_cfg.mtu;
    let mut node = Node::new(node_cfg, now)?;
    for p in &cfg.peers {
        node.add_peer(p.clone(), now)?;
    }
    let tun = Tun::create(&cfg.tun, cfg.address, cfg.subnet.netmask(), mtu, cfg.gso)?;
    let sock = bind(cfg.listen)?;
    run(
        node,
        sock,
        Local::Tun(tun),
        cfg.gso,
        cfg.status_file.clone(),
    )
}

/// Starts the threads for a node, its bound socket and its local side.
pub fn run(
    node: Node,
    sock: UdpSocket,
    local: Local,
    gso: bool,
    status_file: Option<std::path::PathBuf>,
) -> Result<Running, ShellError> {
    let mtu = node.mtu();
    let gso = gso && udp::enable_gro(&sock);
    let shared = Arc::new(Shared {
        node: Mutex::new(node),
        sock,
        local,
        stop: AtomicBool::new(false),
        gso: AtomicBool::new(gso),
        gro_writes: AtomicBool::new(true),
        tun_rx: Mutex::new(TunRx::new(mtu)),
        udp_rx: Mutex::new(UdpRx {
            out: Outputs::new(),
            rx: udp::RecvBatch::new(),
        }),
        busy: busy_poll::BusyPoll::new(busy_window()),
    });
    let mut threads = Vec::new();
    let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
        std::thread::Builder::new()
            .name(name.into())
            .spawn(f)
            .map_err(ShellError::Spawn)
    };
    let s = shared.clone();
    match &shared.local {
        Local::Tun(_) => threads.push(spawn(
            "vnet-tun",
            Box::new(move || io_loop(&s, Source::Tun)),
        )?),
        Local::Frames(_) => threads.push(spawn("vnet-frames", Box::new(move || frames_loop(&s)))?),
        Local::Detached => {}
    }
    let s = shared.clone();
    threads.push(spawn(
        "vnet-udp",
        Box::new(move || io_loop(&s, Source::Udp)),
    )?);
    let s = shared.clone();
    threads.push(spawn(
        "vnet-timer",
        Box::new(move || timer_loop(&s, status_file)),
    )?);
    Ok(Running { shared, threads })
}

/// The busy-poll window's maximum: [`busy_poll::MAX_WINDOW`], or
/// `VNET_BUSY_POLL_US` microseconds (0 turns busy polling off).
fn busy_window() -> Duration {
    std::env::var("VNET_BUSY_POLL_US")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(busy_poll::MAX_WINDOW, Duration::from_micros)
}

fn set_buffers(sock: &UdpSocket) {
    let size: libc::c_int = 8 << 20;
    for opt in [
        libc::SO_RCVBUF,
        libc::SO_SNDBUF,
        libc::SO_RCVBUFFORCE,
        libc::SO_SNDBUFFORCE,
    ] {
        // SAFETY: valid socket, pointer to a c_int of the advertised size.
        unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(sock),
                libc::SOL_SOCKET,
                opt,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
}

/// What the thread reading the TUN keeps between batches; behind a mutex
/// so the UDP thread may drain the TUN too (see [`io_loop`]).
struct TunRx {
    out: Outputs,
    batch: Vec<Vec<u8>>,
    big: Vec<u8>,
    scratch: Vec<u8>,
    /// Largest plain read: a little more than the MTU so oversize packets
    /// are seen (and get ICMP).
    max: usize,
}

impl TunRx {
    fn new(mtu: usize) -> Self {
        Self {
            out: Outputs::new(),
            batch: Vec::with_capacity(udp::BATCH),
            big: Vec::with_capacity(offload::VNET_HDR_LEN + 65_536),
            scratch: Vec::with_capacity(2048),
            max: mtu + 256,
        }
    }
}

/// What the thread reading the UDP socket keeps between batches.
struct UdpRx {
    out: Outputs,
    rx: udp::RecvBatch,
}

/// The two packet sources a node's I/O threads read.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Source {
    Tun,
    Udp,
}

impl Shared {
    /// Reads what the TUN has queued (without blocking), seals and sends
    /// it; the caller holds the TUN side, so packets stay in order.
    /// Returns whether any packet was read.
    fn service_tun(&self, st: &mut TunRx) -> bool {
        let Local::Tun(tun) = &self.local else {
            return false;
        };
        let TunRx {
            out,
            batch,
            big,
            scratch,
            max,
        } = st;
        while batch.len() < udp::BATCH {
            if tun.offload() {
                big.clear();
                if tun.read_into(big, offload::VNET_HDR_LEN + 65_536).is_err() {
                    break;
                }
                let _ = offload::split(big, scratch, |p| {
                    let mut buf = out.buffer();
                    buf.resize(TUN_HEADROOM, 0);
                    buf.extend_from_slice(p);
                    batch.push(buf);
                });
                continue;
            }
            let mut buf = out.buffer();
            buf.resize(TUN_HEADROOM, 0);
            match tun.read_into(&mut buf, *max) {
                Ok(_) => batch.push(buf),
                Err(_) => break,
            }
        }
        if batch.is_empty() {
            return false;
        }
        let now = Instant::now();
        {
            let mut node = self.lock();
            for buf in batch.drain(..) {
                node.handle_tun_buffer(now, buf, out);
            }
            self.run_timers(&mut node, now, out);
        }
        self.flush(out);
        true
    }

    /// Receives what the socket has queued (without blocking), opens and
    /// delivers it. Returns whether any datagram was received.
    fn service_udp(&self, st: &mut UdpRx) -> bool {
        match st.rx.try_recv(&self.sock) {
            Ok(n) if n > 0 => {}
            _ => return false,
        }
        let now = Instant::now();
        {
            let mut node = self.lock();
            for (from, bytes) in st.rx.iter() {
                node.handle_udp(now, from, bytes, &mut st.out);
            }
            self.run_timers(&mut node, now, &mut st.out);
        }
        self.flush(&mut st.out);
        true
    }

    /// Services `src`, waiting for the other thread if it is on it.
    fn service(&self, src: Source) -> bool {
        match src {
            Source::Tun => self.service_tun(&mut lock(&self.tun_rx)),
            Source::Udp => self.service_udp(&mut lock(&self.udp_rx)),
        }
    }

    /// Services `src` only if no other thread is on it.
    fn try_service(&self, src: Source) -> bool {
        match src {
            Source::Tun => match self.tun_rx.try_lock() {
                Ok(mut st) => self.service_tun(&mut st),
                Err(std::sync::TryLockError::Poisoned(p)) => self.service_tun(&mut p.into_inner()),
                Err(std::sync::TryLockError::WouldBlock) => false,
            },
            Source::Udp => match self.udp_rx.try_lock() {
                Ok(mut st) => self.service_udp(&mut st),
                Err(std::sync::TryLockError::Poisoned(p)) => self.service_udp(&mut p.into_inner()),
                Err(std::sync::TryLockError::WouldBlock) => false,
            },
        }
    }

    fn raw_fd(&self, src: Source) -> Option<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        match (src, &self.local) {
            (Source::Udp, _) => Some(self.sock.as_raw_fd()),
            (Source::Tun, Local::Tun(t)) => Some(t.as_raw_fd()),
            (Source::Tun, _) => None,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One I/O thread: sleeps on `own` source, and after real traffic busy
/// polls both sources for a bounded window (see [`busy_poll`]). Taking the
/// other source while spinning is what saves a wake-up on the request/reply
/// path: the ICMP or TCP reply the kernel makes while we write a packet
/// into the TUN is queued before the write returns, and a reply from the
/// peer comes back while the thread that sent the request still runs.
/// Each source is drained under its own lock, so order is kept per source.
fn io_loop(s: &Shared, own: Source) {
    let other = match own {
        Source::Tun => Source::Udp,
        Source::Udp => Source::Tun,
    };
    let Some(own_fd) = s.raw_fd(own) else {
        return;
    };
    let steal = s.raw_fd(other).is_some();
    let busy = &s.busy;
    while !s.stop.load(Ordering::Relaxed) {
        if s.service(own) || (steal && s.try_service(other)) {
            busy.traffic(Instant::now());
            continue;
        }
        if busy.spinning(Instant::now()) {
            // Let a task woken on this CPU (the ping, the iperf3 that
            // reads what we delivered) run rather than wait behind us.
            std::thread::yield_now();
            continue;
        }
        match busy_poll::wait_readable(own_fd, 200) {
            Ok(_) => {}
            Err(_) if own == Source::Tun => return,
            // Unexpected socket error: do not spin.
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// Guest frames in, sealed datagrams out (one frame per message).
fn frames_loop(s: &Shared) {
    let Local::Frames(link) = &s.local else {
        return;
    };
    let mut out = Outputs::new();
    let mut scratch = Vec::with_capacity(frames::MAX_FRAME);
    while !s.stop.load(Ordering::Relaxed) {
        match link.wait_readable(200) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(_) => return,
        }
        let mut batch = Vec::new();
        let mut denied = 0;
        while batch.len() < udp::BATCH {
            let mut buf = out.buffer();
            buf.resize(TUN_HEADROOM, 0);
            match link.read(&mut scratch, &mut buf) {
                Ok(Frame::Ip) => batch.push(buf),
                Ok(Frame::Handled) => {}
                Ok(Frame::Denied) => denied += 1,
                Ok(Frame::Closed) => return,
                Err(_) => break,
            }
        }
        let now = Instant::now();
        {
            let mut node = s.lock();
            for _ in 0..denied {
                node.count_drop(DropReason::EgressDenied);
            }
            for buf in batch {
                node.handle_tun_buffer(now, buf, &mut out);
            }
            s.run_timers(&mut node, now, &mut out);
        }
        s.flush(&mut out);
    }
}

fn timer_loop(s: &Shared, status_file: Option<std::path::PathBuf>) {
    let mut out = Outputs::new();
    let mut next_status = Instant::now();
    while !s.stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        let next = {
            let mut node = s.lock();
            s.run_timers(&mut node, now, &mut out);
            if now >= next_status {
                if let Some(path) = &status_file {
                    if let Ok(json) = serde_json::to_vec_pretty(&node.status(now)) {
                        let tmp = path.with_extension("tmp");
                        if std::fs::write(&tmp, json).is_ok() {
                            let _ = std::fs::rename(&tmp, path);
                        }
                    }
                }
                next_status = now + Duration::from_millis(250);
            }
            node.poll_timeout()
        };
        s.flush(&mut out);
        let wake = next
            .unwrap_or(now + Duration::from_millis(100))
            .min(next_status);
        std::thread::sleep(
            wake.saturating_duration_since(Instant::now())
                .clamp(Duration::from_millis(1), Duration::from_millis(100)),
        );
    }
}
