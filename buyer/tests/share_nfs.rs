//! The share server against a real NFS client: libnfs (Debian
//! `libnfs-utils` tools and the `libnfs-dev` library), over loopback and
//! from a network namespace. Must run as root on Linux with libnfs
//! installed; missing tools fail the test rather than skip it.

mod libnfs;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use std::process::Command;
use std::time::Duration;

use cpushare_buyer::share::{AllowList, Share, ShareServer};
use sha2::{Digest, Sha256};

/// A server on its own runtime with a read-only `/src` and a writable
/// `/out`, each a temporary directory.
struct Fixture {
    rt: tokio::runtime::Runtime,
    server: Option<ShareServer>,
    src: tempfile::TempDir,
    out: tempfile::TempDir,
}

impl Fixture {
    fn start(listen: &str, allow: AllowList) -> Self {
        let src = tempfile::tempdir().unwrap();
        let out = tempfile::tempdir().unwrap();
        std::fs::write(src.path().join("hello.txt"), b"hello from the buyer\n").unwrap();
        std::fs::create_dir(src.path().join("sub")).unwrap();
        std::fs::write(src.path().join("sub/deep.txt"), b"deep\n").unwrap();
        std::os::unix::fs::symlink("/etc", src.path().join("etc_link")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", src.path().join("abs_passwd")).unwrap();
        std::os::unix::fs::symlink(
            "../../../../../../etc/passwd",
            src.path().join("rel_passwd"),
        )
        .unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let shares = vec![
            Share::parse(&format!("{}:/src", src.path().display())).unwrap(),
            Share::parse(&format!("{}:/out:rw", out.path().display())).unwrap(),
        ];
        let listen: SocketAddr = listen.parse().unwrap();
        let server = rt
            .block_on(ShareServer::start(listen, shares, allow))
            .unwrap();
        Fixture {
            rt,
            server: Some(server),
            src,
            out,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.server.as_ref().unwrap().local_addr()
    }

    fn url_at(&self, host: &str, export: &str) -> String {
        let port = self.addr().port();
        format!("nfs://{host}{export}?nfsport={port}&mountport={port}")
    }

    fn url(&self, export: &str) -> String {
        self.url_at("127.0.0.1", export)
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            self.rt.block_on(s.stop());
        }
    }
}

fn require_tool(name: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "{name} not found: install Debian's libnfs-utils (scripts/install-deps.sh)"
    );
}

/// Runs a libnfs tool; returns (success, stdout, stderr).
fn tool(args: &[&str]) -> (bool, Vec<u8>, String) {
    require_tool(args[0]);
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    (
        out.status.success(),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn sha(data: &[u8]) -> Vec<u8> {
    Sha256::digest(data).to_vec()
}

#[test]
fn ro_share_lists_and_reads_with_libnfs_tools() {
    let f = Fixture::start("127.0.0.1:0", AllowList::loopback());
    let (ok, out, err) = tool(&["nfs-ls", &f.url("/src")]);
    assert!(ok, "nfs-ls failed: {err}");
    let listing = String::from_utf8_lossy(&out);
    for name in ["hello.txt", "sub", "etc_link"] {
        assert!(
            listing.contains(name),
            "{name} missing from listing:\n{listing}"
        );
    }
    let (ok, out, err) = tool(&[
        "nfs-cat",
        &format!(
            "nfs://127.0.0.1/src/hello.txt?nfsport={0}&mountport={0}",
            f.addr().port()
        ),
    ]);
    assert!(ok, "nfs-cat failed: {err}");
    assert_eq!(out, b"hello from the buyer\n");

    let nfs = libnfs::Nfs::mount(&f.url("/src")).unwrap();
    assert_eq!(nfs.read_file("/sub/deep.txt", 4096).unwrap(), b"deep\n");
    assert_eq!(nfs.stat("/hello.txt").unwrap().size, 21);
    let mut names = nfs.list("/").unwrap();
    names.sort();
    assert_eq!(
        names,
        ["abs_passwd", "etc_link", "hello.txt", "rel_passwd", "sub"]
    );
    assert_eq!(nfs.readlink("/abs_passwd").unwrap(), "/etc/passwd");
}

#[test]
fn unknown_export_path_is_not_mounted() {
    let f = Fixture::start("127.0.0.1:0", AllowList::loopback());
    let err = libnfs::Nfs::mount(&f.url("/etc"))
        .err()
        .expect("mounting /etc must fail");
    assert!(
        err.to_lowercase().contains("mnt") || err.contains("NOENT"),
        "{err}"
    );
}

#[test]
fn rw_share_takes_nfs_cp_writes_with_matching_checksums() {
    let f = Fixture::start("127.0.0.1:0", AllowList::loopback());
    let local = tempfile::tempdir().unwrap();
    let data: Vec<u8> = (0..5 * 1024 * 1024 + 123)
        .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let src = local.path().join("big.bin");
    std::fs::write(&src, &data).unwrap();
    let port = f.addr().port();
    let dest = format!("nfs://127.0.0.1/out/big.bin?nfsport={port}&mountport={port}");
    let (ok, _, err) = tool(&["nfs-cp", src.to_str().unwrap(), &dest]);
    assert!(ok, "nfs-cp to rw share failed: {err}");
    assert_eq!(
        sha(&std::fs::read(f.out.path().join("big.bin")).unwrap()),
        sha(&data)
    );

    // And back, through the server's READ path.
    let back = local.path().join("back.bin");
    let (ok, _, err) = tool(&["nfs-cp", &dest, back.to_str().unwrap()]);
    assert!(ok, "nfs-cp from rw share failed: {err}");
    assert_eq!(sha(&std::fs::read(back).unwrap()), sha(&data));

    let nfs = libnfs::Nfs::mount(&f.url("/out")).unwrap();
    nfs.mkdir("/d").unwrap();
    nfs.write_file("/d/small", b"xyz", 4096).unwrap();
    assert_eq!(std::fs::read(f.out.path().join("d/small")).unwrap(), b"xyz");
    nfs.unlink("/d/small").unwrap();
    assert!(!f.out.path().join("d/small").exists());
}

#[test]
fn writes_to_a_ro_share_fail() {
    let f = Fixture::start("127.0.0.1:0", AllowList::loopback());
    let local = tempfile::tempdir().unwrap();
    let src = local.path().join("x");
    std::fs::write(&src, b"should not land").unwrap();
    let port = f.addr().port();
    let (ok, _, _) = tool(&[
        "nfs-cp",
        src.to_str().unwrap(),
        &format!("nfs://127.0.0.1/src/x?nfsport={port}&mountport={port}"),
    ]);
    assert!(!ok, "nfs-cp into a read-only share succeeded");
    assert!(!f.src.path().join("x").exists());

    let nfs = libnfs::Nfs::mount(&f.url("/src")).unwrap();
    let err = nfs
        .write_file("/hello.txt", b"overwrite", 4096)
        .unwrap_err();
    assert!(
        err.contains("ROFS") || err.to_lowercase().contains("read-only"),
        "{err}"
    );
    assert!(nfs.mkdir("/newdir").is_err());
    assert!(nfs.unlink("/hello.txt").is_err());
    assert_eq!(
        std::fs::read(f.src.path().join("hello.txt")).unwrap(),
        b"hello from the buyer\n"
    );
}

#[test]
fn path_escapes_fail() {
    let f = Fixture::start("127.0.0.1:0", AllowList::loopback());
    let passwd = std::fs::read("/etc/passwd").unwrap();
    let nfs = libnfs::Nfs::mount(&f.url("/src")).unwrap();
    for path in [
        "/../../../../etc/passwd",
        "/sub/../../etc/passwd",
        "/etc_link/passwd",
        "/abs_passwd",
        "/rel_passwd",
    ] {
        if let Ok(bytes) = nfs.read_file(path, 4096) {
            assert_ne!(bytes, passwd, "{path} read the host's /etc/passwd");
        }
    }
    // The links themselves are visible as links.
    assert_eq!(nfs.readlink("/etc_link").unwrap(), "/etc");
    let port = f.addr().port();
    let (ok, out, _) = tool(&[
        "nfs-cat",
        &format!("nfs://127.0.0.1/src/etc_link/passwd?nfsport={port}&mountport={port}"),
    ]);
    assert!(
        !ok || out != passwd,
        "nfs-cat through a symlink read the host's /etc/passwd"
    );

    // On the wire: LOOKUP ".." at the root is the root itself, and forged
    // or cross-export handles are refused.
    let mut c = RawClient::connect(f.addr());
    let root = c.mount("/src").expect("mount /src");
    let out_root = c.mount("/out").expect("mount /out");
    let (stat, body) = c.nfs(3, &diropargs(&root, b".."));
    assert_eq!(stat, 0);
    assert_eq!(
        opaque_at(&body, 0),
        root,
        "LOOKUP .. at the export root left the export"
    );
    let (stat, _) = c.nfs(3, &diropargs(&root, b"../etc"));
    assert_ne!(stat, 0);
    let mut forged = root.clone();
    forged[12] ^= 1;
    assert_eq!(
        c.nfs(1, &opaque(&forged)).0,
        10001,
        "forged handle not BADHANDLE"
    );
    let mut moved = out_root.clone();
    moved[4] = root[4];
    assert_eq!(
        c.nfs(1, &opaque(&moved)).0,
        10001,
        "handle moved to another export not BADHANDLE"
    );
}

#[test]
fn garbage_and_oversized_records_do_not_crash_the_server() {
    let f = Fixture::start("127.0.0.1:0", AllowList::loopback());
    // Random bytes.
    let mut s = TcpStream::connect(f.addr()).unwrap();
    let mut x: u32 = 0x1234_5678;
    let junk: Vec<u8> = (0..256 * 1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    let _ = s.write_all(&junk);
    drop(s);
    // A fragment header claiming 2 GiB, then a little data.
    let mut s = TcpStream::connect(f.addr()).unwrap();
    let _ = s.write_all(&0xffff_ffffu32.to_be_bytes());
    let _ = s.write_all(&[0u8; 1024]);
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 16];
    assert!(
        matches!(s.read(&mut buf), Ok(0) | Err(_)),
        "oversized record was not dropped"
    );
    // Many non-final fragments that add up past the bound.
    let mut s = TcpStream::connect(f.addr()).unwrap();
    let frag = vec![0u8; 64 * 1024];
    for _ in 0..40 {
        if s.write_all(&(frag.len() as u32).to_be_bytes()).is_err() || s.write_all(&frag).is_err() {
            break;
        }
    }
    drop(s);
    // A well-framed record with a garbage body gets GARBAGE_ARGS or an
    // error reply, and the connection keeps working.
    let mut c = RawClient::connect(f.addr());
    let root = c.mount("/src").unwrap();
    let reply = c.call_raw(100_003, 3, 1, &[0xff, 0xff, 0xff, 0xff]);
    assert_eq!(
        u32::from_be_bytes(reply[20..24].try_into().unwrap()),
        4,
        "expected GARBAGE_ARGS"
    );
    let reply = c.call_raw(100_003, 3, 6, &[&opaque(&root)[..], &[0xff; 3]].concat());
    assert_eq!(
        u32::from_be_bytes(reply[20..24].try_into().unwrap()),
        4,
        "expected GARBAGE_ARGS"
    );
    assert_eq!(c.nfs(1, &opaque(&root)).0, 0, "GETATTR after garbage");
    // Unknown program and procedure.
    let reply = c.call_raw(100_021, 4, 0, &[]);
    assert_eq!(
        u32::from_be_bytes(reply[20..24].try_into().unwrap()),
        1,
        "expected PROG_UNAVAIL"
    );
    let reply = c.call_raw(100_003, 3, 99, &[]);
    assert_eq!(
        u32::from_be_bytes(reply[20..24].try_into().unwrap()),
        3,
        "expected PROC_UNAVAIL"
    );

    // A good client is still served.
    let nfs = libnfs::Nfs::mount(&f.url("/src")).unwrap();
    assert_eq!(
        nfs.read_file("/hello.txt", 4096).unwrap(),
        b"hello from the buyer\n"
    );
}

/// A network namespace joined to the host by a veth pair, removed on drop
/// even when the test fails.
struct Netns {
    name: String,
    host_ip: String,
    ns_ip: String,
}

fn ip(args: &[&str]) {
    let st = Command::new("ip")
        .args(args)
        .status()
        .expect("run ip (iproute2)");
    assert!(st.success(), "ip {args:?} failed");
}

impl Netns {
    fn new() -> Self {
        let id = std::process::id() % 200 + 20;
        let name = format!("cpsh-nfs-{}", std::process::id());
        let (h, n) = (format!("cpsh{id}h"), format!("cpsh{id}n"));
        let ns = Netns {
            name: name.clone(),
            host_ip: format!("10.213.{id}.1"),
            ns_ip: format!("10.213.{id}.2"),
        };
        let _ = Command::new("ip").args(["link", "del", &h]).output();
        ip(&["netns", "add", &name]);
        ip(&["link", "add", &h, "type", "veth", "peer", "name", &n]);
        ip(&["link", "set", &n, "netns", &name]);
        ip(&["addr", "add", &format!("{}/24", ns.host_ip), "dev", &h]);
        ip(&["link", "set", &h, "up"]);
        ip(&[
            "-n",
            &name,
            "addr",
            "add",
            &format!("{}/24", ns.ns_ip),
            "dev",
            &n,
        ]);
        ip(&["-n", &name, "link", "set", &n, "up"]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        ns
    }

    fn run(&self, args: &[&str]) -> (bool, Vec<u8>, String) {
        require_tool(args[0]);
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            out.stdout,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace deletes the veth pair with it.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

#[test]
fn client_from_an_address_not_allowed_is_refused() {
    let ns = Netns::new();
    // Refused: the server allows loopback only.
    let f = Fixture::start(&format!("{}:0", ns.host_ip), AllowList::loopback());
    let (ok, out, _) = ns.run(&["nfs-cat", &f.url_at(&ns.host_ip, "/src/hello.txt")]);
    assert!(
        !ok && out.is_empty(),
        "a client outside the allow list read a file"
    );
    drop(f);
    // Control: the same client is served once its address is allowed.
    let allow = AllowList::from_addrs([ns.ns_ip.parse().unwrap()]);
    let f = Fixture::start(&format!("{}:0", ns.host_ip), allow);
    let (ok, out, err) = ns.run(&["nfs-cat", &f.url_at(&ns.host_ip, "/src/hello.txt")]);
    assert!(ok, "allowed namespace client failed: {err}");
    assert_eq!(out, b"hello from the buyer\n");
    // ...and loopback is now refused.
    assert!(libnfs::Nfs::mount(&f.url_at(&ns.host_ip, "/src")).is_err());
}

#[test]
fn connections_of_a_client_taken_off_the_allow_list_are_closed_at_once() {
    let f = Fixture::start("127.0.0.1:0", AllowList::loopback());
    let server = f.server.as_ref().unwrap();
    let mut c = RawClient::connect(f.addr());
    let root = c.mount("/src").unwrap();
    assert_eq!(c.nfs(1, &opaque(&root)).0, 0, "served while allowed");
    // Control: a refresh that keeps the client keeps its connection.
    server.set_allowed(AllowList::loopback());
    assert_eq!(c.nfs(1, &opaque(&root)).0, 0, "served while still allowed");
    // Its lease ended: the list no longer has it. The connection it
    // already holds ends now, not when the client lets it go. (The read
    // timeout of 10 s only bounds a failing run.)
    server.set_allowed(AllowList::default());
    let mut buf = [0u8; 4];
    match c.s.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("the removed client's connection is still open: {other:?}"),
    }
    // And it cannot come back on a new one.
    let mut s = TcpStream::connect(f.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert!(matches!(s.read(&mut buf), Ok(0) | Err(_)));
}

// ---- a minimal raw ONC RPC client, for what libnfs will not send ----

struct RawClient {
    s: TcpStream,
    xid: u32,
}

fn opaque(b: &[u8]) -> Vec<u8> {
    let mut v = (b.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(b);
    v.resize(v.len() + (4 - b.len() % 4) % 4, 0);
    v
}

fn diropargs(fh: &[u8], name: &[u8]) -> Vec<u8> {
    [opaque(fh), opaque(name)].concat()
}

fn opaque_at(body: &[u8], at: usize) -> Vec<u8> {
    let len = u32::from_be_bytes(body[at..at + 4].try_into().unwrap()) as usize;
    body[at + 4..at + 4 + len].to_vec()
}

impl RawClient {
    fn connect(addr: SocketAddr) -> Self {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        RawClient { s, xid: 1 }
    }

    /// Sends one call; returns the whole reply record.
    fn call_raw(&mut self, prog: u32, vers: u32, proc_: u32, args: &[u8]) -> Vec<u8> {
        self.xid += 1;
        let mut m = Vec::new();
        for v in [self.xid, 0, 2, prog, vers, proc_, 0, 0, 0, 0] {
            m.extend_from_slice(&u32::to_be_bytes(v));
        }
        m.extend_from_slice(args);
        let mut rec = (m.len() as u32 | 0x8000_0000).to_be_bytes().to_vec();
        rec.extend_from_slice(&m);
        self.s.write_all(&rec).unwrap();
        let mut hdr = [0u8; 4];
        self.s.read_exact(&mut hdr).unwrap();
        let len = (u32::from_be_bytes(hdr) & 0x7fff_ffff) as usize;
        let mut reply = vec![0u8; len];
        self.s.read_exact(&mut reply).unwrap();
        assert_eq!(u32::from_be_bytes(reply[..4].try_into().unwrap()), self.xid);
        reply
    }

    /// An NFSv3 call; returns (nfsstat3, body after the status).
    fn nfs(&mut self, proc_: u32, args: &[u8]) -> (u32, Vec<u8>) {
        let r = self.call_raw(100_003, 3, proc_, args);
        assert_eq!(
            u32::from_be_bytes(r[20..24].try_into().unwrap()),
            0,
            "RPC not accepted"
        );
        (
            u32::from_be_bytes(r[24..28].try_into().unwrap()),
            r[28..].to_vec(),
        )
    }

    /// MNT; returns the root handle.
    fn mount(&mut self, path: &str) -> Option<Vec<u8>> {
        let r = self.call_raw(100_005, 3, 1, &opaque(path.as_bytes()));
        if u32::from_be_bytes(r[24..28].try_into().unwrap()) != 0 {
            return None;
        }
        Some(opaque_at(&r, 28))
    }
}
