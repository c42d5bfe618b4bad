//! A network lab for tests that need root: network namespaces joined by
//! veth pairs, NATs, processes spawned inside them (killed on drop), and
//! probes across a buyer's vnet (ping, TCP, `net status`, lease node
//! status). Shared by `tests/vnet_nat.rs` and `tests/share_vnet.rs`.

use crate::bin;
use cpushare_vnet::node::NodeStatus;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The broker's address, on the loopback of the lab's `inet` namespace.
pub const BROKER_IP: &str = "172.30.255.1";

/// Produces diagnostics printed when a probe fails.
pub type Diag = Box<dyn Fn() -> String>;

thread_local! {
    /// What to print when a ping fails: every node's view of its paths.
    pub static DIAG: std::cell::RefCell<Option<Diag>> = const { std::cell::RefCell::new(None) };
}

/// Runs a command; panics with its stderr if it fails.
pub fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("spawn {args:?}: {e}"));
    assert!(
        out.status.success(),
        "command failed: {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub use crate::Proc;

/// How long a lab process may take to print what a test waits for.
pub const LAB_WAIT: Duration = Duration::from_secs(90);

/// The namespaces and processes of the test; torn down on drop.
pub struct Lab {
    /// Prefix of every namespace name (unique per test process).
    pub tag: String,
    /// Namespaces made, deleted on drop.
    pub namespaces: Vec<String>,
    /// Processes spawned, in order, killed on drop.
    pub procs: Vec<Proc>,
    /// Homes and data directories.
    pub dir: tempfile::TempDir,
}

impl Lab {
    /// An empty lab; panics unless root with iptables.
    #[allow(clippy::new_without_default)] // checks root: not a plain default
    pub fn new() -> Lab {
        // SAFETY: geteuid has no preconditions.
        let uid = unsafe { libc::geteuid() };
        assert_eq!(
            uid, 0,
            "this test needs root (network namespaces, veth, TUN, iptables)"
        );
        assert!(
            Command::new("iptables")
                .arg("-V")
                .output()
                .is_ok_and(|o| o.status.success()),
            "iptables is missing; install it (Debian package `iptables`, listed in scripts/apt-packages.txt)"
        );
        Lab {
            tag: format!("vn{}", std::process::id() % 100_000),
            namespaces: Vec::new(),
            procs: Vec::new(),
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    /// Makes namespace `name` (prefixed with the tag) with `lo` up.
    pub fn ns(&mut self, name: &str) -> String {
        let ns = format!("{}{name}", self.tag);
        sh(&["ip", "netns", "add", &ns]);
        self.namespaces.push(ns.clone());
        sh(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        ns
    }

    /// A veth pair `a_if`/`b_if` between two namespaces with /24 addresses.
    pub fn link(&self, a: &str, a_if: &str, a_ip: &str, b: &str, b_if: &str, b_ip: &str) {
        sh(&[
            "ip", "link", "add", a_if, "netns", a, "type", "veth", "peer", "name", b_if, "netns", b,
        ]);
        for (ns, dev, ip) in [(a, a_if, a_ip), (b, b_if, b_ip)] {
            sh(&[
                "ip",
                "-n",
                ns,
                "addr",
                "add",
                &format!("{ip}/24"),
                "dev",
                dev,
            ]);
            sh(&["ip", "-n", ns, "link", "set", dev, "up"]);
        }
    }

    /// Sets the default route of `ns`.
    pub fn route_default(&self, ns: &str, via: &str) {
        sh(&["ip", "-n", ns, "route", "add", "default", "via", via]);
    }

    /// Turns on IPv4 forwarding in `ns`.
    pub fn forward(&self, ns: &str) {
        sh(&[
            "ip",
            "netns",
            "exec",
            ns,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ]);
    }

    /// Source-NATs what leaves `ns` by `wan` (`random_fully`: a hard NAT).
    pub fn masquerade(&self, ns: &str, wan: &str, random_fully: bool) {
        let mut args = vec![
            "ip",
            "netns",
            "exec",
            ns,
            "iptables",
            "-t",
            "nat",
            "-A",
            "POSTROUTING",
            "-o",
            wan,
            "-j",
            "MASQUERADE",
        ];
        if random_fully {
            args.push("--random-fully");
        }
        sh(&args);
    }

    /// `exe` in namespace `ns`. `nsenter` rather than `ip netns exec`,
    /// which remounts /sys and so hides the cgroup hierarchy the seller needs.
    pub fn cmd(ns: &str, exe: &Path) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/var/run/netns/{ns}"))
            .arg("--")
            .arg(exe);
        c
    }

    /// Spawns `cmd` (stdout read line by line); it is killed on drop.
    pub fn spawn(&mut self, name: &str, cmd: Command) -> &Proc {
        self.procs.push(Proc::spawn(name, cmd));
        self.procs.last().expect("just pushed")
    }

    /// A directory `name` in the lab's temporary directory.
    pub fn home(&self, name: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::create_dir_all(&p).expect("home dir");
        p
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Reverse order: buyers and sellers before the broker.
        while let Some(mut p) = self.procs.pop() {
            p.kill();
        }
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Runs `f` on a thread inside namespace `ns`.
pub fn in_ns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("open netns");
        // SAFETY: a valid namespace fd; setns changes only this thread's network namespace.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}");
        f()
    })
}

/// A broker serving in a namespace of a [`Lab`], with its data directory.
pub struct LabBroker {
    /// The broker's data directory (for its admin commands).
    pub data: PathBuf,
}

impl Lab {
    /// Starts a broker in `ns` listening on `ip` (added to the namespace's
    /// loopback), with 1-s heartbeats so lost sellers are noticed in ~3 s.
    pub fn broker(&mut self, ns: &str, ip: &str) -> LabBroker {
        sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        sh(&[
            "ip",
            "-n",
            ns,
            "addr",
            "add",
            &format!("{ip}/32"),
            "dev",
            "lo",
        ]);
        let data = self.home("broker");
        let mut cmd = Lab::cmd(ns, &bin("cpushare-broker"));
        cmd.arg("--data").arg(&data).args([
            "serve",
            "--listen",
            &format!("{ip}:0"),
            "--heartbeat-secs",
            "1",
        ]);
        self.spawn("broker", cmd).wait_for("listening on", LAB_WAIT);
        LabBroker { data }
    }
}

impl Lab {
    /// Enrolls seller `name` with `broker` and runs it in `ns` with `run
    /// ARGS...` (its vnet lease nodes on TUN stand-ins if `tun_standin`);
    /// returns its home once it is offering.
    pub fn seller(
        &mut self,
        broker: &LabBroker,
        ns: &str,
        name: &str,
        tun_standin: bool,
        run_args: &[&str],
    ) -> PathBuf {
        let home = self.home(name);
        let t = broker.token(name, "seller");
        run_ok(
            Lab::cmd(ns, &bin("cpushare-seller"))
                .arg("--home")
                .arg(&home)
                .args(["enroll", &t]),
        );
        let mut cmd = Lab::cmd(ns, Path::new("/usr/bin/env"));
        if tun_standin {
            cmd.arg("CPUSHARE_SELLER_VNET_TUN=1");
        }
        cmd.arg(bin("cpushare-seller"))
            .arg("--home")
            .arg(&home)
            .arg("run")
            .args(run_args);
        self.spawn(name, cmd).wait_for("offering", LAB_WAIT);
        home
    }

    /// Creates buyer `name` with 100 credits and logs it in from `ns`;
    /// returns its home.
    pub fn buyer(&self, broker: &LabBroker, ns: &str, name: &str) -> PathBuf {
        let home = self.home(name);
        let t = broker.token(name, "buyer");
        broker.admin(&["credit", name, "100"]);
        run_ok(
            Lab::cmd(ns, &bin("cpushare"))
                .arg("--home")
                .arg(&home)
                .args(["login", &t]),
        );
        home
    }
}

impl LabBroker {
    /// Runs `cpushare-broker --data DATA ARGS...`; returns its stdout.
    pub fn admin(&self, args: &[&str]) -> String {
        run_ok(
            Command::new(bin("cpushare-broker"))
                .arg("--data")
                .arg(&self.data)
                .args(args),
        )
    }

    /// Creates account `name` with `role`; returns its enrollment token.
    pub fn token(&self, name: &str, role: &str) -> String {
        self.admin(&["account", "add", name, "--role", role])
            .lines()
            .last()
            .expect("token line")
            .to_string()
    }
}

/// Runs `cmd`, panics unless it succeeds, returns its stdout.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run command");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf8 output")
}

/// `ping` from `ns` until one reply comes (handshakes, path search), then
/// `count` more that must all be answered.
pub fn ping(ns: &str, dst: Ipv4Addr, count: u32) {
    let deadline = Instant::now() + Duration::from_secs(40);
    let dst = dst.to_string();
    while !Command::new("ip")
        .args(["netns", "exec", ns, "ping", "-c", "1", "-W", "1", &dst])
        .stdout(Stdio::null())
        .status()
        .expect("ping")
        .success()
    {
        if Instant::now() > deadline {
            let dump = DIAG.with(|d| d.borrow().as_ref().map(|f| f()).unwrap_or_default());
            panic!("{dst} never answered from {ns}\n{dump}");
        }
    }
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "ping", "-c"])
        .arg(count.to_string())
        .args(["-i", "0.2", "-W", "3", &dst])
        .output()
        .expect("ping");
    assert!(
        out.status.success(),
        "ping {dst} from {ns}: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Whether two pings from `ns` to `dst` both go unanswered.
pub fn ping_fails(ns: &str, dst: Ipv4Addr) -> bool {
    !Command::new("ip")
        .args(["netns", "exec", ns, "ping", "-c", "2", "-W", "1"])
        .arg(dst.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("ping")
        .success()
}

/// Sends `len` bytes over TCP from `from_ns` to `to`:`port` (in `to_ns`) and checks them.
pub fn tcp_transfer(from_ns: &str, to_ns: &str, to: Ipv4Addr, port: u16, len: usize) {
    let listener = in_ns(to_ns, move || {
        std::net::TcpListener::bind((to, port)).expect("bind in ns")
    })
    .join()
    .expect("bind thread");
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        let mut got = Vec::new();
        s.read_to_end(&mut got).expect("read");
        got
    });
    let payload: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
    let expect = payload.clone();
    in_ns(from_ns, move || {
        let mut c = std::net::TcpStream::connect_timeout(
            &SocketAddr::from((to, port)),
            Duration::from_secs(20),
        )
        .expect("connect across the vnet");
        c.write_all(&payload).expect("write");
    })
    .join()
    .expect("client thread");
    let got = server.join().expect("server thread");
    assert!(got == expect, "TCP payload to {to} corrupted or cut");
}

/// A seller lease node's status, from the file the daemon rewrites every 250 ms.
pub fn lease_status(seller_home: &Path) -> Option<NodeStatus> {
    let dir = std::fs::read_dir(seller_home.join("vnet")).ok()?;
    for e in dir.filter_map(Result::ok) {
        if e.path().extension().is_some_and(|x| x == "json") {
            if let Ok(s) = serde_json::from_slice(&std::fs::read(e.path()).ok()?) {
                return Some(s);
            }
        }
    }
    None
}

/// The path kind `st` has to `addr` (`direct`, `relayed`, ... or `absent`).
pub fn path_to(st: &NodeStatus, addr: Ipv4Addr) -> String {
    st.peers
        .iter()
        .find(|p| p.address == addr.to_string())
        .map(|p| serde_json::to_value(p.path).expect("path kind").to_string())
        .unwrap_or_else(|| "\"absent\"".into())
        .trim_matches('"')
        .to_string()
}

/// Polls `f` until it returns Some, for at most `secs`.
pub fn eventually<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// `cpushare net status --json` of the buyer at `home`, if `net up` runs.
pub fn net_status(home: &Path) -> Option<Value> {
    let out = Command::new(bin("cpushare"))
        .arg("--home")
        .arg(home)
        .args(["--json", "net", "status"])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

/// Packets the node dropped, all reasons.
pub fn drops_total(st: &NodeStatus) -> u64 {
    st.drops.values().sum()
}
