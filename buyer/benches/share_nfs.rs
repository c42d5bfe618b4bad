//! Side-by-side benchmark of the share server and nfs-ganesha (VFS FSAL)
//! exporting the same directory on 127.0.0.1, driven by the same libnfs
//! client: sequential write and read of a 256 MiB file, and a
//! metadata-heavy run (small files created, listed, stat'd, read).
//!
//! Run as root: `cargo bench -p cpushare-buyer --bench share_nfs`.
//! Needs Debian's nfs-ganesha, nfs-ganesha-vfs, rpcbind and libnfs-dev.
//! Knobs: SHARE_BENCH_MIB (256), SHARE_BENCH_FILES (3000),
//! SHARE_BENCH_ROUNDS (2; the best round of each is reported).

#[path = "../tests/libnfs/mod.rs"]
mod libnfs;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cpushare_buyer::share::{AllowList, Share, ShareServer};

fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A process started here, killed (by its own pid) when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        // SAFETY: plain syscall on the pid of our own child, not yet reaped.
        unsafe { libc_kill(self.0.id() as i32, 15) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

fn start_rpcbind() -> Option<Proc> {
    // ganesha refuses to start unless it can register with a portmapper.
    let running = Command::new("pgrep")
        .args(["-x", "rpcbind"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if running {
        return None;
    }
    let _ = std::fs::remove_file("/run/rpcbind.sock");
    let child = Command::new("rpcbind")
        .arg("-f")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start rpcbind (Debian package rpcbind)");
    std::thread::sleep(Duration::from_millis(500));
    Some(Proc(child))
}

fn start_ganesha(dir: &Path, export: &Path, nfs_port: u16, mnt_port: u16) -> Proc {
    let conf = dir.join("ganesha.conf");
    std::fs::write(
        &conf,
        format!(
            r#"NFS_CORE_PARAM {{
    NFS_Port = {nfs_port};
    MNT_Port = {mnt_port};
    NLM_Port = {nlm};
    Rquota_Port = {rq};
    Enable_NLM = false;
    Enable_RQUOTA = false;
    Enable_UDP = false;
    Protocols = 3;
    Bind_addr = 127.0.0.1;
    Plugins_Dir = /usr/lib/x86_64-linux-gnu/ganesha;
}}
NFSV4 {{ Graceless = true; RecoveryBackend = fs; RecoveryRoot = {dir}/recov; }}
EXPORT {{
    Export_Id = 77;
    Path = {export};
    Pseudo = /bench;
    Access_Type = RW;
    Squash = No_Root_Squash;
    SecType = sys;
    Protocols = 3;
    Transports = TCP;
    FSAL {{ Name = VFS; }}
}}
LOG {{ Default_Log_Level = WARN; }}
"#,
            nlm = free_port(),
            rq = free_port(),
            dir = dir.display(),
            export = export.display()
        ),
    )
    .unwrap();
    let child = Command::new("ganesha.nfsd")
        .arg("-F")
        .arg("-f")
        .arg(&conf)
        .arg("-L")
        .arg(dir.join("ganesha.log"))
        .arg("-p")
        .arg(dir.join("ganesha.pid"))
        .arg("-N")
        .arg("NIV_WARN")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start ganesha.nfsd (Debian packages nfs-ganesha, nfs-ganesha-vfs)");
    Proc(child)
}

fn mount_retry(url: &str) -> libnfs::Nfs {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match libnfs::Nfs::mount(url) {
            Ok(n) => return n,
            Err(e) if Instant::now() > deadline => panic!("cannot mount {url}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(250)),
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Figures {
    write_mib_s: f64,
    read_mib_s: f64,
    create_per_s: f64,
    list_per_s: f64,
    stat_per_s: f64,
    readsmall_per_s: f64,
    meta_total_s: f64,
}

impl Figures {
    fn best(self, o: Figures) -> Figures {
        Figures {
            write_mib_s: self.write_mib_s.max(o.write_mib_s),
            read_mib_s: self.read_mib_s.max(o.read_mib_s),
            create_per_s: self.create_per_s.max(o.create_per_s),
            list_per_s: self.list_per_s.max(o.list_per_s),
            stat_per_s: self.stat_per_s.max(o.stat_per_s),
            readsmall_per_s: self.readsmall_per_s.max(o.readsmall_per_s),
            meta_total_s: if self.meta_total_s == 0.0 {
                o.meta_total_s
            } else {
                self.meta_total_s.min(o.meta_total_s)
            },
        }
    }
}

fn run(url: &str, host_dir: &Path, sub: &str, mib: usize, files: usize, big: &[u8]) -> Figures {
    let _ = std::fs::remove_dir_all(host_dir.join(sub));
    std::fs::create_dir_all(host_dir.join(sub).join("meta")).unwrap();
    let nfs = mount_retry(url);
    let chunk = 4 << 20;
    let path = format!("/{sub}/big.bin");

    let t = Instant::now();
    nfs.write_file(&path, big, chunk).unwrap();
    let write_s = t.elapsed().as_secs_f64();
    assert_eq!(
        std::fs::metadata(host_dir.join(sub).join("big.bin"))
            .unwrap()
            .len(),
        big.len() as u64
    );

    let t = Instant::now();
    let n = nfs.read_count(&path, chunk).unwrap();
    let read_s = t.elapsed().as_secs_f64();
    assert_eq!(n, big.len() as u64);

    let small = vec![0x5au8; 1024];
    let meta = Instant::now();
    let t = Instant::now();
    for i in 0..files {
        nfs.write_file(&format!("/{sub}/meta/f{i:05}"), &small, 4096)
            .unwrap();
    }
    let create_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let names = nfs.list(&format!("/{sub}/meta")).unwrap();
    let list_s = t.elapsed().as_secs_f64();
    assert_eq!(names.len(), files);
    let t = Instant::now();
    for i in 0..files {
        assert_eq!(
            nfs.stat(&format!("/{sub}/meta/f{i:05}")).unwrap().size,
            1024
        );
    }
    let stat_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    for i in 0..files {
        assert_eq!(
            nfs.read_count(&format!("/{sub}/meta/f{i:05}"), 4096)
                .unwrap(),
            1024
        );
    }
    let readsmall_s = t.elapsed().as_secs_f64();
    let meta_total_s = meta.elapsed().as_secs_f64();
    drop(nfs);
    let _ = std::fs::remove_dir_all(host_dir.join(sub));
    Figures {
        write_mib_s: mib as f64 / write_s,
        read_mib_s: mib as f64 / read_s,
        create_per_s: files as f64 / create_s,
        list_per_s: files as f64 / list_s,
        stat_per_s: files as f64 / stat_s,
        readsmall_per_s: files as f64 / readsmall_s,
        meta_total_s,
    }
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    let mib = env_num("SHARE_BENCH_MIB", 256);
    let files = env_num("SHARE_BENCH_FILES", 3000);
    let rounds = env_num("SHARE_BENCH_ROUNDS", 2).max(1);
    let base_dir = tempfile::Builder::new()
        .prefix("share-bench")
        .tempdir_in("/var/tmp")
        .unwrap();
    let base: PathBuf = base_dir.path().to_path_buf();
    let export = base.join("export");
    let gdir = base.join("ganesha");
    std::fs::create_dir_all(&export).unwrap();
    std::fs::create_dir_all(gdir.join("recov")).unwrap();

    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let big: Vec<u8> = (0..mib << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let share = Share {
        host_dir: export.clone(),
        guest_path: "/bench".into(),
        writable: true,
    };
    let listen: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let server = rt
        .block_on(ShareServer::start(
            listen,
            vec![share],
            AllowList::loopback(),
        ))
        .unwrap();
    let ours_port = server.local_addr().port();
    let ours_url = format!("nfs://127.0.0.1/bench?nfsport={ours_port}&mountport={ours_port}");

    let rpcbind = start_rpcbind();
    let (gn, gm) = (free_port(), free_port());
    let ganesha = start_ganesha(&gdir, &export, gn, gm);
    let g_url = format!(
        "nfs://127.0.0.1{}?nfsport={gn}&mountport={gm}",
        export.display()
    );
    {
        let o = mount_retry(&ours_url);
        let g = mount_retry(&g_url);
        println!(
            "negotiated (readmax, writemax): ours {:?}, ganesha {:?}",
            o.io_max(),
            g.io_max()
        );
    }

    let mut ours = Figures::default();
    let mut gan = Figures::default();
    for round in 0..rounds {
        let o = run(
            &ours_url,
            &export,
            &format!("ours{round}"),
            mib,
            files,
            &big,
        );
        let g = run(
            &g_url,
            &export,
            &format!("ganesha{round}"),
            mib,
            files,
            &big,
        );
        println!("round {round}: ours {o:.1?}\nround {round}: ganesha {g:.1?}");
        ours = if round == 0 { o } else { ours.best(o) };
        gan = if round == 0 { g } else { gan.best(g) };
    }
    drop(ganesha);
    drop(rpcbind);
    rt.block_on(server.stop());
    drop(base_dir);

    let version = Command::new("dpkg-query")
        .args(["-W", "-f=${Version}", "nfs-ganesha"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    println!("\nshare server vs nfs-ganesha {version} (VFS FSAL), libnfs client, 127.0.0.1, best of {rounds}");
    println!("{:<34} {:>12} {:>12} {:>8}", "", "ours", "ganesha", "ratio");
    let rows = [
        (
            format!("seq write {mib} MiB (MiB/s)"),
            ours.write_mib_s,
            gan.write_mib_s,
        ),
        (
            format!("seq read {mib} MiB (MiB/s)"),
            ours.read_mib_s,
            gan.read_mib_s,
        ),
        (
            format!("create+write {files} x 1 KiB (/s)"),
            ours.create_per_s,
            gan.create_per_s,
        ),
        (
            "list dir (entries/s)".to_string(),
            ours.list_per_s,
            gan.list_per_s,
        ),
        ("stat (/s)".to_string(), ours.stat_per_s, gan.stat_per_s),
        (
            "open+read+close 1 KiB (/s)".to_string(),
            ours.readsmall_per_s,
            gan.readsmall_per_s,
        ),
    ];
    for (name, o, g) in rows {
        println!("{name:<34} {o:>12.1} {g:>12.1} {:>7.2}x", o / g);
    }
    println!(
        "{:<34} {:>12.2} {:>12.2} {:>7.2}x",
        "metadata run total (s, lower=better)",
        ours.meta_total_s,
        gan.meta_total_s,
        gan.meta_total_s / ours.meta_total_s
    );
}
