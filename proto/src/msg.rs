//! Messages between buyers, sellers and the broker.
//!
//! Every exchange happens on its own QUIC bidirectional stream: the client
//! sends one [`Request`] frame and reads [`Response`] frames until the
//! broker finishes the stream. Two requests keep their stream open:
//! [`Request::Buy`] with `follow` streams the job's events back, and
//! [`Request::Sell`] turns the stream into the seller session, where the
//! seller sends [`SellerMsg`] and the broker sends [`BrokerMsg`].

use crate::id::ContentId;
use crate::money::Micros;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};

/// Largest job stdin a buy order may carry.
pub const MAX_STDIN: usize = 1 << 20;
/// Most arguments plus environment variables a job may carry.
pub const MAX_ARGS: usize = 4096;
/// Size of one upload or download chunk.
pub const CHUNK: usize = 1 << 20;
/// Largest module or image the broker stores (a live ISO fits; wasm modules are far smaller).
pub const MAX_IMAGE: u64 = 2 << 30;
/// Largest WebAssembly module accepted.
pub const MAX_WASM: u64 = 256 << 20;
/// Most UDP endpoint candidates one vnet member may register.
pub const MAX_VNET_ENDPOINTS: usize = 16;

/// One member of a buyer's virtual network, as the broker describes it to
/// the other members of that network (and only to them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VnetMember {
    /// Its address in the buyer's subnet.
    pub address: Ipv4Addr,
    /// Its static X25519 public key, registered over its authenticated connection.
    pub key: [u8; 32],
    /// The lease it belongs to; `None` for the buyer's own host.
    pub lease: Option<String>,
    /// UDP endpoint candidates: its local addresses and the address the broker observed.
    pub endpoints: Vec<SocketAddr>,
}

/// What one member of a buyer's virtual network needs to run its node;
/// the broker sends a fresh one whenever the membership changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VnetView {
    /// The buyer's subnet (network address).
    pub subnet: Ipv4Addr,
    /// Its prefix length.
    pub prefix: u8,
    /// This member's own address.
    pub address: Ipv4Addr,
    /// Key of the member that relays when no direct path exists (the buyer's host).
    pub relay: Option<[u8; 32]>,
    /// Every other member.
    pub peers: Vec<VnetMember>,
}

/// What a party is allowed to do; written into its certificate by the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Places buy orders and runs jobs.
    Buyer,
    /// Offers capacity and runs leases.
    Seller,
}

impl Role {
    /// Lower-case name used in certificates, tokens and the database.
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Buyer => "buyer",
            Role::Seller => "seller",
        }
    }

    /// Parses `buyer` or `seller`.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "buyer" => Some(Role::Buyer),
            "seller" => Some(Role::Seller),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The kind of sandbox a lease runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SandboxKind {
    /// A WebAssembly (WASI preview 1) module in wasmtime.
    Wasm,
    /// A live ISO booted in the seller's KVM microVM.
    Vm,
}

impl SandboxKind {
    /// Every kind, in [`SandboxKind::index`] order.
    pub const ALL: [SandboxKind; 2] = [SandboxKind::Wasm, SandboxKind::Vm];

    /// Dense index for per-kind tables (the order book's).
    pub const fn index(self) -> usize {
        match self {
            SandboxKind::Wasm => 0,
            SandboxKind::Vm => 1,
        }
    }

    /// Lower-case name: `wasm` or `vm`.
    pub fn as_str(&self) -> &'static str {
        match self {
            SandboxKind::Wasm => "wasm",
            SandboxKind::Vm => "vm",
        }
    }

    /// Parses `wasm` or `vm`.
    pub fn parse(s: &str) -> Option<SandboxKind> {
        match s {
            "wasm" => Some(SandboxKind::Wasm),
            "vm" => Some(SandboxKind::Vm),
            _ => None,
        }
    }
}

impl fmt::Display for SandboxKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `pad`, so table columns (`{:<5}`) line up.
        f.pad(self.as_str())
    }
}

/// Arguments, environment and input of a job.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    /// Arguments after the program name.
    pub args: Vec<String>,
    /// Environment variables.
    pub env: Vec<(String, String)>,
    /// Bytes on the job's standard input (at most [`MAX_STDIN`]).
    #[serde(with = "crate::bytes")]
    pub stdin: Vec<u8>,
    /// Directories of the buyer's machine the job sees (wasm jobs: staged
    /// in and shipped back, see [`ShareSpec`]).
    #[serde(default)]
    pub shares: Vec<ShareSpec>,
}

/// Most shares one job may have.
pub const MAX_SHARES: usize = 16;

/// One `--share HOST:GUEST[:rw]` of a job, as sellers see it.
///
/// For a wasm job a read-only share travels as a bundle
/// ([`crate::bundle`]) the buyer uploaded by content id, staged into the
/// guest's filesystem at `guest`; a writable share starts empty, and what
/// the guest leaves in it is shipped back as [`SellerMsg::Outputs`] when the
/// job exits with status 0.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareSpec {
    /// Absolute path in the guest (`/in`).
    pub guest: String,
    /// For a read-only share: the bundle's content id and size.
    pub input: Option<(ContentId, u64)>,
    /// Whether the guest writes it (its contents come back to the buyer).
    pub writable: bool,
}

impl ShareSpec {
    /// Checks the guest path: absolute, `/`-separated, no `.`/`..`/empty
    /// component, at most 255 bytes, not `/` itself nor `/scratch`.
    pub fn check_guest_path(path: &str) -> Result<(), String> {
        let Some(rest) = path.strip_prefix('/') else {
            return Err(format!("guest path `{path}` must be absolute"));
        };
        if path.len() > 255 {
            return Err(format!("guest path `{path}` is longer than 255 bytes"));
        }
        if rest.is_empty()
            || rest
                .split('/')
                .any(|c| c.is_empty() || c == "." || c == ".." || c.contains('\0'))
        {
            return Err(format!("guest path `{path}` must name a directory below / without `.`, `..` or empty parts"));
        }
        if rest == "scratch" || rest.starts_with("scratch/") {
            return Err(format!(
                "guest path `{path}` is inside /scratch, which the seller provides"
            ));
        }
        Ok(())
    }
}

/// A buyer's order: `instances` leases of `cpus`/`mem_mib` each.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuyRequest {
    /// Sandbox the image needs.
    pub kind: SandboxKind,
    /// Content id of the module or ISO, uploaded beforehand.
    pub image: ContentId,
    /// Leases wanted.
    pub instances: u32,
    /// vCPUs per lease.
    pub cpus: u32,
    /// Memory per lease, MiB.
    pub mem_mib: u64,
    /// Length of each lease, minutes.
    pub minutes: u32,
    /// Highest price per vCPU-minute the buyer accepts.
    pub max_price: Micros,
    /// What to run.
    pub job: JobSpec,
    /// Seconds the order may wait unmatched before it expires.
    pub wait_secs: Option<u32>,
    /// Keep the stream open and stream the job's events back.
    pub follow: bool,
    /// Most minutes one lease may reach through sticky renewals with its
    /// seller (`--renew-up-to`), its first minutes included; `None` (what
    /// a client that predates the field means) renews nothing.
    #[serde(default)]
    pub renew_up_to: Option<u32>,
}

/// A seller's standing offer of capacity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SellOffer {
    /// vCPUs offered.
    pub cpus: u32,
    /// Memory offered, MiB.
    pub mem_mib: u64,
    /// Sandboxes this seller can run.
    pub kinds: Vec<SandboxKind>,
    /// Asking price per vCPU-minute.
    pub price: Micros,
    /// Shortest lease accepted, minutes.
    pub min_minutes: u32,
    /// Longest lease accepted, minutes.
    pub max_minutes: u32,
}

/// Which output stream bytes came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StdStream {
    /// Standard output (or a VM's serial console).
    Stdout,
    /// Standard error.
    Stderr,
}

/// How a lease ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LeaseEnd {
    /// The program exited (WASI `proc_exit` or return from `_start`).
    Exited {
        /// Exit code.
        code: i32,
    },
    /// The guest powered off.
    PowerOff {
        /// Status the guest reported.
        status: u32,
    },
    /// The module trapped.
    Trapped {
        /// Trap description.
        message: String,
    },
    /// The job used up its CPU time (the lease's minutes).
    CpuTimeExceeded,
    /// The job outlived its wall-clock watchdog.
    WallTimeExceeded,
    /// The job tried to use more memory than the lease allows.
    MemoryExceeded {
        /// The limit, MiB.
        limit_mib: u64,
    },
    /// The sandbox was killed for breaking a confinement rule.
    Killed {
        /// What it did (`seccomp (syscall ptrace)`, `out of memory`, ...).
        reason: String,
    },
    /// The seller could not run the job (bad module, image fetch failed...).
    Failed {
        /// Why.
        message: String,
    },
    /// The seller vanished (missed heartbeats or lost its connection).
    SellerLost,
    /// The buyer cancelled, or went away while following.
    Cancelled,
}

impl LeaseEnd {
    /// The exit code `cpushare run` should exit with for this end.
    pub fn exit_code(&self) -> i32 {
        match self {
            LeaseEnd::Exited { code } => *code,
            LeaseEnd::PowerOff { status } => *status as i32,
            LeaseEnd::Cancelled => 130,
            _ => 125,
        }
    }

    /// Whether the buyer's job itself ran to an end (as opposed to the
    /// seller or the platform failing it).
    pub fn is_job_end(&self) -> bool {
        !matches!(
            self,
            LeaseEnd::SellerLost | LeaseEnd::Failed { .. } | LeaseEnd::Cancelled
        )
    }
}

impl fmt::Display for LeaseEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LeaseEnd::Exited { code } => write!(f, "exited with code {code}"),
            LeaseEnd::PowerOff { status } => write!(f, "powered off with status {status}"),
            LeaseEnd::Trapped { message } => write!(f, "trapped: {message}"),
            LeaseEnd::CpuTimeExceeded => f.write_str("killed: CPU time exceeded"),
            LeaseEnd::WallTimeExceeded => f.write_str("killed: wall-clock time exceeded"),
            LeaseEnd::MemoryExceeded { limit_mib } => {
                write!(f, "killed: out of memory (limit {limit_mib} MiB)")
            }
            LeaseEnd::Killed { reason } => write!(f, "killed: {reason}"),
            LeaseEnd::Failed { message } => write!(f, "failed on the seller: {message}"),
            LeaseEnd::SellerLost => f.write_str("seller lost"),
            LeaseEnd::Cancelled => f.write_str("cancelled"),
        }
    }
}

/// What a seller needs to start one lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseSpec {
    /// Lease id (`K-...`).
    pub lease: String,
    /// The buyer's account name.
    pub buyer: String,
    /// Sandbox kind.
    pub kind: SandboxKind,
    /// Content id of the image; fetch it with [`Request::Fetch`] unless cached.
    pub image: ContentId,
    /// Image size in bytes.
    pub image_len: u64,
    /// vCPUs.
    pub cpus: u32,
    /// Memory, MiB.
    pub mem_mib: u64,
    /// Paid minutes; the sandbox's CPU-time limit.
    pub minutes: u32,
    /// What to run.
    pub job: JobSpec,
}

/// Error categories a client can act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    /// The request is malformed or out of bounds.
    BadRequest,
    /// The named order, lease, account or image does not exist.
    NotFound,
    /// This identity may not do that.
    Forbidden,
    /// The buyer's balance cannot cover the order.
    InsufficientFunds,
    /// Enrollment token was never issued.
    TokenUnknown,
    /// Enrollment token was already used.
    TokenUsed,
    /// Enrollment token expired.
    TokenExpired,
    /// The image failed its content-id check.
    HashMismatch,
    /// Something failed inside the broker.
    Internal,
}

/// A refusal with a message that says what to do next.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    /// Category.
    pub code: ErrorCode,
    /// Human message.
    pub message: String,
}

impl fmt::Display for ErrorReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ErrorReply {}

/// The first frame a client sends on a stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Turn an enrollment token's secret and a CSR into a certificate (enrollment endpoint only).
    Enroll {
        /// Secret from the token.
        secret: String,
        /// PKCS#10 request, DER.
        csr_der: Vec<u8>,
    },
    /// Who am I to the broker?
    Whoami,
    /// My balance.
    Balance,
    /// The aggregated order book.
    Book,
    /// My orders.
    Orders,
    /// My leases (as buyer or seller).
    Leases,
    /// Cancel one of my orders by its `K-` id.
    Cancel {
        /// Order id.
        order: String,
    },
    /// How much of this image does the broker already hold?
    UploadStatus {
        /// Content id.
        id: ContentId,
        /// Total size.
        len: u64,
    },
    /// Upload `len - offset` bytes of an image as [`Response::Data`]-shaped
    /// [`Request::Data`] frames following this one.
    Upload {
        /// Content id.
        id: ContentId,
        /// Total size.
        len: u64,
        /// Where these bytes start (resuming an earlier upload).
        offset: u64,
    },
    /// A chunk of an upload (at most [`CHUNK`] bytes), or, on a followed
    /// buy order's stream, input typed for its leases' consoles.
    Data(#[serde(with = "crate::bytes")] Vec<u8>),
    /// Download an image from `offset`.
    Fetch {
        /// Content id.
        id: ContentId,
        /// Where to start.
        offset: u64,
    },
    /// Place a buy order.
    Buy(BuyRequest),
    /// Post a sell order and open the seller session on this stream.
    Sell(SellOffer),
    /// Follow one of my buy orders again (after a lost connection or a
    /// broker restart): answered with [`Response::OrderPlaced`] and then
    /// the order's events, as for a followed [`Request::Buy`].
    Follow {
        /// Order id.
        order: String,
    },
    /// Join my virtual network as its host member (`cpushare net up`): the
    /// stream stays open and carries a [`Response::Vnet`] on every change;
    /// closing it leaves the network.
    VnetJoin {
        /// The host node's static X25519 public key.
        key: [u8; 32],
        /// Local UDP endpoint candidates (at most [`MAX_VNET_ENDPOINTS`]).
        endpoints: Vec<SocketAddr>,
    },
}

/// Aggregated book level for `cpushare book`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BookLevel {
    /// `buy` or `sell`.
    pub side: String,
    /// Sandbox kind.
    pub kind: SandboxKind,
    /// Price per vCPU-minute (ask for sells, max for buys).
    pub price: Micros,
    /// vCPUs free at this level (sells) or wanted (buys).
    pub cpus: u64,
    /// Orders at this level.
    pub orders: u32,
}

/// One order as its owner sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderView {
    /// `K-` id.
    pub id: String,
    /// `buy` or `sell`.
    pub side: String,
    /// Sandbox kind(s), comma separated.
    pub kind: String,
    /// vCPUs (per instance for buys).
    pub cpus: u32,
    /// Memory MiB (per instance for buys).
    pub mem_mib: u64,
    /// Instances ordered (buys).
    pub instances: u32,
    /// Instances filled so far (buys).
    pub filled: u32,
    /// Minutes per lease (buys).
    pub minutes: u32,
    /// Ask (sells) or max price (buys) per vCPU-minute.
    pub price: Micros,
    /// `open`, `filled`, `cancelled`, `expired`, `closed`.
    pub state: String,
    /// Unix ms.
    pub created_ms: u64,
}

/// One lease as a party to it sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseView {
    /// `K-` id.
    pub id: String,
    /// Buy order it filled.
    pub order: String,
    /// Buyer account.
    pub buyer: String,
    /// Seller account.
    pub seller: String,
    /// Sandbox kind.
    pub kind: SandboxKind,
    /// vCPUs.
    pub cpus: u32,
    /// Memory MiB.
    pub mem_mib: u64,
    /// Paid minutes.
    pub minutes: u32,
    /// Price per vCPU-minute.
    pub price: Micros,
    /// Minutes settled to the seller so far.
    pub settled_minutes: u32,
    /// Billed so far.
    pub cost: Micros,
    /// `running` or `ended`.
    pub state: String,
    /// How it ended, if it did.
    pub end: Option<String>,
    /// Unix ms.
    pub started_ms: u64,
    /// Unix ms.
    pub ended_ms: Option<u64>,
}

/// Frames the broker sends back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// The request was refused.
    Error(ErrorReply),
    /// Enrollment succeeded.
    Enrolled {
        /// Account name.
        name: String,
        /// Role granted.
        role: Role,
        /// The new certificate, DER.
        cert_der: Vec<u8>,
        /// The broker's CA certificate, DER.
        ca_der: Vec<u8>,
    },
    /// Answer to [`Request::Whoami`].
    Whoami {
        /// Account name.
        name: String,
        /// Role.
        role: Role,
        /// `K-` id of the certificate's public key.
        key_id: String,
    },
    /// Answer to [`Request::Balance`].
    Balance {
        /// Spendable.
        available: Micros,
        /// Reserved by open buy orders.
        held: Micros,
        /// In escrow for running leases.
        escrow: Micros,
    },
    /// Answer to [`Request::Book`].
    Book(Vec<BookLevel>),
    /// Answer to [`Request::Orders`].
    Orders(Vec<OrderView>),
    /// Answer to [`Request::Leases`].
    Leases(Vec<LeaseView>),
    /// An order was cancelled; its unused reserve returned.
    Cancelled {
        /// Order id.
        order: String,
        /// Credits returned.
        refunded: Micros,
    },
    /// Bytes of an image the broker already holds.
    UploadState {
        /// Bytes held (the image is complete when this equals its size).
        have: u64,
    },
    /// The upload completed and matched its content id.
    Stored {
        /// Content id.
        id: ContentId,
    },
    /// A download follows as [`Response::Data`] frames.
    Blob {
        /// Total size.
        len: u64,
    },
    /// A chunk of a download.
    Data(#[serde(with = "crate::bytes")] Vec<u8>),
    /// The buy order is in the book; funds are reserved.
    OrderPlaced {
        /// Order id.
        order: String,
        /// Credits reserved.
        held: Micros,
    },
    /// A lease began on a seller.
    LeaseStarted {
        /// Lease id.
        lease: String,
        /// Seller account.
        seller: String,
        /// Price per vCPU-minute.
        price: Micros,
    },
    /// Output of a running lease.
    Output {
        /// Lease id.
        lease: String,
        /// Which stream.
        stream: StdStream,
        /// Bytes.
        #[serde(with = "crate::bytes")]
        data: Vec<u8>,
    },
    /// A lease ended.
    LeaseEnded {
        /// Lease id.
        lease: String,
        /// How.
        end: LeaseEnd,
        /// What it cost the buyer.
        cost: Micros,
    },
    /// A running lease was renewed with its seller (sticky renewal): its
    /// guest goes on, billed minute by minute as before.
    LeaseRenewed {
        /// Lease id.
        lease: String,
        /// Minutes it is paid for in all now.
        minutes: u32,
        /// What it cost the buyer so far (settled minutes).
        cost: Micros,
    },
    /// The buy order is done: all its leases ended, or it was cancelled or expired.
    OrderClosed {
        /// Order id.
        order: String,
        /// `filled`, `cancelled`, `expired`.
        state: String,
        /// Total billed for the order's leases.
        cost: Micros,
        /// Credits returned to the buyer.
        refunded: Micros,
    },
    /// The buyer's virtual network as its host member sees it.
    Vnet(VnetView),
    /// Part of the bundle of a lease's writable shares, forwarded from
    /// [`SellerMsg::Outputs`]; the lease's `LeaseEnded` follows.
    Outputs {
        /// Lease id.
        lease: String,
        /// Bytes of the bundle.
        #[serde(with = "crate::bytes")]
        data: Vec<u8>,
    },
    /// The broker will not renew a running lease (the buyer asked for
    /// renewals with `--renew-up-to`): it ends when its paid minutes run out.
    LeaseNotRenewed {
        /// Lease id.
        lease: String,
        /// Minutes it is paid for in all, and ends at.
        minutes: u32,
        /// Why, in words for the buyer (balance, price, seller gone).
        reason: String,
    },
}

/// What a seller sends in its session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SellerMsg {
    /// Still here; these leases are running.
    Heartbeat {
        /// Running lease ids.
        running: Vec<String>,
    },
    /// The sandbox for a lease is up and the job started.
    Started {
        /// Lease id.
        lease: String,
    },
    /// Output of a lease.
    Output {
        /// Lease id.
        lease: String,
        /// Which stream.
        stream: StdStream,
        /// Bytes.
        #[serde(with = "crate::bytes")]
        data: Vec<u8>,
    },
    /// A lease's sandbox is gone.
    Ended {
        /// Lease id.
        lease: String,
        /// How.
        end: LeaseEnd,
    },
    /// Part of the bundle of a wasm lease's writable shares (their
    /// contents, each under its index: `0/...`, `1/...`), sent before
    /// `Ended` when the job exited with status 0.
    Outputs {
        /// Lease id.
        lease: String,
        /// At most [`CHUNK`] bytes of the bundle.
        #[serde(with = "crate::bytes")]
        data: Vec<u8>,
    },
    /// Join the lease's buyer's virtual network with this node.
    VnetJoin {
        /// Lease id.
        lease: String,
        /// The lease node's static X25519 public key.
        key: [u8; 32],
        /// Local UDP endpoint candidates (at most [`MAX_VNET_ENDPOINTS`]).
        endpoints: Vec<SocketAddr>,
    },
}

/// What the broker sends in a seller session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BrokerMsg {
    /// The sell order is in the book.
    Welcome {
        /// Sell order id.
        order: String,
        /// Seconds between heartbeats the broker expects.
        heartbeat_secs: u32,
    },
    /// Start a lease.
    Start(LeaseSpec),
    /// A running lease was renewed: it may now run `minutes` in all from
    /// its start; raise the sandbox's wall-clock and CPU budgets to match.
    Extend {
        /// Lease id.
        lease: String,
        /// Minutes paid for in all (first minutes plus renewals).
        minutes: u32,
    },
    /// Stop a lease now (buyer cancelled, or its minutes ran out).
    Stop {
        /// Lease id.
        lease: String,
    },
    /// The session is refused or ends.
    Error(ErrorReply),
    /// Input typed by the buyer for a lease's console (VM leases).
    Input {
        /// Lease id.
        lease: String,
        /// Bytes for the guest's serial console.
        #[serde(with = "crate::bytes")]
        data: Vec<u8>,
    },
    /// The lease's virtual network changed (or was just joined).
    Vnet {
        /// Lease id.
        lease: String,
        /// The lease node's view.
        view: VnetView,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame;

    #[test]
    fn sandbox_kinds_pad_in_tables() {
        assert_eq!(
            format!("{:<5}|{:>5}", SandboxKind::Vm, SandboxKind::Wasm),
            "vm   | wasm"
        );
    }

    #[test]
    fn messages_round_trip_through_frames() {
        let req = Request::Buy(BuyRequest {
            kind: SandboxKind::Wasm,
            image: ContentId::of(b"m"),
            instances: 2,
            cpus: 1,
            mem_mib: 64,
            minutes: 3,
            max_price: Micros(20_000),
            job: JobSpec {
                args: vec!["a".into()],
                env: vec![("K".into(), "V".into())],
                stdin: b"in".to_vec(),
                shares: Vec::new(),
            },
            wait_secs: Some(5),
            follow: true,
            renew_up_to: Some(9),
        });
        let bytes = frame::encode(&req).unwrap();
        let (back, _): (Request, _) = frame::decode(&bytes).unwrap();
        assert_eq!(back, req);
        let msg = SellerMsg::Ended {
            lease: "K-1".into(),
            end: LeaseEnd::MemoryExceeded { limit_mib: 64 },
        };
        let (back, _): (SellerMsg, _) = frame::decode(&frame::encode(&msg).unwrap()).unwrap();
        assert_eq!(back, msg);
    }

    #[test]
    fn vnet_messages_round_trip_through_frames() {
        let view = VnetView {
            subnet: Ipv4Addr::new(10, 1, 2, 0),
            prefix: 24,
            address: Ipv4Addr::new(10, 1, 2, 3),
            relay: Some([7; 32]),
            peers: vec![VnetMember {
                address: Ipv4Addr::new(10, 1, 2, 1),
                key: [9; 32],
                lease: None,
                endpoints: vec!["192.0.2.1:4000".parse().unwrap()],
            }],
        };
        let msg = BrokerMsg::Vnet {
            lease: "K-1".into(),
            view: view.clone(),
        };
        let (back, _): (BrokerMsg, _) = frame::decode(&frame::encode(&msg).unwrap()).unwrap();
        assert_eq!(back, msg);
        let req = Request::VnetJoin {
            key: [3; 32],
            endpoints: vec!["[2001:db8::1]:9".parse().unwrap()],
        };
        let (back, _): (Request, _) = frame::decode(&frame::encode(&req).unwrap()).unwrap();
        assert_eq!(back, req);
        let (back, _): (Response, _) =
            frame::decode(&frame::encode(&Response::Vnet(view.clone())).unwrap()).unwrap();
        assert_eq!(back, Response::Vnet(view));
    }

    #[test]
    fn lease_end_exit_codes() {
        assert_eq!(LeaseEnd::Exited { code: 3 }.exit_code(), 3);
        assert_eq!(LeaseEnd::SellerLost.exit_code(), 125);
        assert!(!LeaseEnd::SellerLost.is_job_end());
        assert!(LeaseEnd::CpuTimeExceeded.is_job_end());
    }
}
