//! A harness for cross-part tests: real `cpushare-broker`, `cpushare-seller`
//! and `cpushare` processes on loopback, each in its own temporary
//! directory, killed when the test ends (even when it fails).

pub mod netlab;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The directory cargo put the workspace's binaries in.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // target/debug/deps/this-test -> target/debug
    exe.parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/PROFILE/deps")
        .to_path_buf()
}

/// Path of a workspace binary; panics with what to do if it is not built.
pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} is not built; run `cargo build --workspace --bins` (add `--release` for benchmarks) first",
        p.display()
    );
    p
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the repo")
        .to_path_buf()
}

/// An exclusive lock on building a test artifact, shared by every test
/// process of a run (they run in parallel); released on drop.
struct BuildLock {
    _file: std::fs::File,
}

impl BuildLock {
    fn take(name: &str) -> BuildLock {
        use std::os::fd::AsRawFd;
        let path = bin_dir().join(format!("{name}.lock"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .expect("lock file");
        // SAFETY: flock on a descriptor that `file` keeps open for as long
        // as the lock is held; closing it on drop releases the lock.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        assert_eq!(rc, 0, "could not lock {}", path.display());
        BuildLock { _file: file }
    }
}

/// Builds the example wasm modules once per test run and returns their
/// directory. Fails (does not skip) if clang or wasi-libc is missing.
pub fn wasm_modules() -> PathBuf {
    let out = bin_dir().join("test-wasm");
    let _lock = BuildLock::take("test-wasm");
    let src = repo_root().join("guest-images/wasm");
    let stale = std::fs::read_dir(&src)
        .expect("guest-images/wasm")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "c"))
        .any(|c| {
            let wasm = out
                .join(c.file_stem().expect("file name"))
                .with_extension("wasm");
            let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
            modified(&wasm) < modified(&c)
        });
    if stale {
        let status = Command::new("bash")
            .arg(repo_root().join("guest-images/wasm/build.sh"))
            .arg(&out)
            .status()
            .expect("run guest-images/wasm/build.sh");
        assert!(
            status.success(),
            "building the example wasm modules failed; install clang, lld and wasi-libc (scripts/install-deps.sh)"
        );
    }
    out
}

/// Builds the freestanding test guest (again when its sources changed) and packs it into an ISO whose
/// `cpushare.toml` boots it with `cmdline`; returns the ISO's path.
pub fn test_guest_iso(name: &str, cmdline: &str) -> PathBuf {
    let out = bin_dir().join("test-guest");
    let _lock = BuildLock::take("test-guest");
    let dir = repo_root().join("guest-images/test-guest");
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let built = modified(&out.join("guest.elf"));
    // Rebuilt when any source is newer than the last build (or there is none).
    let stale = std::fs::read_dir(&dir)
        .expect("guest-images/test-guest")
        .filter_map(Result::ok)
        .any(|e| built < modified(&e.path()));
    if stale {
        let status = Command::new("bash")
            .arg(dir.join("build.sh"))
            .arg(&out)
            .status()
            .expect("run guest-images/test-guest/build.sh");
        assert!(
            status.success(),
            "building the test guest failed; install gcc and binutils"
        );
    }
    let iso = out.join(format!("{name}.iso"));
    let status = Command::new("bash")
        .arg(dir.join("mkiso.sh"))
        .arg(out.join("guest.elf"))
        .arg(&iso)
        .arg(cmdline)
        .stdout(Stdio::null())
        .status()
        .expect("run guest-images/test-guest/mkiso.sh");
    assert!(
        status.success(),
        "packing the test guest ISO failed; install xorriso"
    );
    iso
}

/// A child process whose stdout lines arrive on a channel; killed on drop.
pub struct Proc {
    /// The process.
    pub child: Child,
    /// Lines of stdout, as they come.
    pub lines: mpsc::Receiver<String>,
    /// What the test calls it.
    pub name: String,
}

impl Proc {
    /// Spawns `cmd` with its stdout read line by line (stderr inherited).
    pub fn spawn(name: &str, mut cmd: Command) -> Proc {
        cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Proc {
            child,
            lines: rx,
            name: name.to_string(),
        }
    }

    /// Waits for a stdout line containing `needle`.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.contains(needle) => return l,
                Ok(_) => {}
                Err(_) => panic!("{} did not print `{needle}` within {timeout:?}", self.name),
            }
        }
    }

    /// SIGKILLs the process now.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A broker with its data directory.
pub struct Broker {
    /// The process.
    pub proc: Proc,
    /// Its data directory.
    pub data: tempfile::TempDir,
    db: Option<String>,
}

fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("run command");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

impl Broker {
    /// Starts a broker on loopback with SQLite (or `db`), fast heartbeats.
    pub fn start(db: Option<&str>) -> Broker {
        Broker::start_with_heartbeat(db, 1)
    }

    /// Like [`Broker::start`], with sellers expected to beat every `secs`
    /// seconds (the broker's default is 2).
    pub fn start_with_heartbeat(db: Option<&str>, secs: u32) -> Broker {
        let data = tempfile::tempdir().expect("tempdir");
        let mut cmd = Command::new(bin("cpushare-broker"));
        cmd.arg("--data").arg(data.path());
        if let Some(db) = db {
            cmd.arg("--db").arg(db);
        }
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--heartbeat-secs"])
            .arg(secs.to_string());
        let proc = Proc::spawn("cpushare-broker", cmd);
        proc.wait_for("listening on", Duration::from_secs(60));
        Broker {
            proc,
            data,
            db: db.map(str::to_string),
        }
    }

    /// SIGKILLs the broker and starts it again on the same data directory
    /// (so the same database) and the same addresses, as an operator
    /// restarting a crashed broker would.
    pub fn kill_and_restart(&mut self) {
        self.proc.kill();
        let endpoints: serde_json::Value = serde_json::from_slice(
            &std::fs::read(self.data.path().join("endpoints.json")).expect("endpoints.json"),
        )
        .expect("endpoints json");
        let addr = |k: &str| endpoints[k].as_str().expect("address").to_string();
        let mut cmd = Command::new(bin("cpushare-broker"));
        cmd.arg("--data").arg(self.data.path());
        if let Some(db) = &self.db {
            cmd.arg("--db").arg(db);
        }
        cmd.args(["serve", "--listen", &addr("broker")])
            .args(["--enroll-listen", &addr("enroll")])
            .args(["--heartbeat-secs", "1"]);
        let proc = Proc::spawn("cpushare-broker (restarted)", cmd);
        proc.wait_for("listening on", Duration::from_secs(60));
        self.proc = proc;
    }

    /// A `cpushare-broker` admin command against this broker's data.
    pub fn admin(&self) -> Command {
        let mut cmd = Command::new(bin("cpushare-broker"));
        cmd.arg("--data").arg(self.data.path());
        if let Some(db) = &self.db {
            cmd.arg("--db").arg(db);
        }
        cmd
    }

    /// Creates an account; returns its token.
    pub fn account(&self, name: &str, role: &str) -> String {
        let out = run_ok(self.admin().args(["account", "add", name, "--role", role]));
        String::from_utf8(out.stdout)
            .expect("utf8")
            .lines()
            .last()
            .expect("token line")
            .to_string()
    }

    /// Deposits credits.
    pub fn credit(&self, name: &str, amount: &str) {
        run_ok(self.admin().args(["credit", name, amount]));
    }

    /// Every ledger balance (micro-credits), checked to sum to zero.
    pub fn ledger(&self) -> Vec<(String, i64)> {
        let out = run_ok(self.admin().args(["ledger", "--json"]));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ledger json");
        assert_eq!(v["sum"], "0", "ledger must balance");
        v["balances"]
            .as_array()
            .expect("balances")
            .iter()
            .map(|b| {
                (
                    b[0].as_str().expect("account").to_string(),
                    b[1].as_i64().expect("amount"),
                )
            })
            .collect()
    }

    /// The ledger once every order has closed: it sums to zero (checked
    /// by [`Broker::ledger`]), no hold or escrow account keeps money, and
    /// the seller `seller` plus the broker's fee account earned exactly
    /// `earned` micro-credits. Returns the ledger for further checks.
    pub fn assert_settled(&self, seller: &str, earned: i64) -> Vec<(String, i64)> {
        let ledger = self.ledger();
        for (account, b) in &ledger {
            if account.starts_with("hold:") || account.starts_with("escrow:") {
                assert_eq!(*b, 0, "{account} still holds {b}: {ledger:?}");
            }
        }
        let got: i64 = ledger
            .iter()
            .filter(|(a, _)| *a == format!("user:{seller}") || a == "broker:fees")
            .map(|(_, b)| b)
            .sum();
        assert_eq!(got, earned, "seller {seller} and fees: {ledger:?}");
        ledger
    }

    /// One account's balance in micro-credits (0 if absent).
    pub fn balance(&self, account: &str) -> i64 {
        self.ledger()
            .into_iter()
            .find(|(a, _)| a == account)
            .map(|(_, b)| b)
            .unwrap_or(0)
    }
}

/// A running seller daemon.
pub struct Seller {
    /// The process.
    pub proc: Proc,
    /// Its home.
    pub home: tempfile::TempDir,
}

impl Seller {
    /// Creates the account, enrolls and runs a seller offering `cpus` at `price`.
    pub fn start(broker: &Broker, name: &str, cpus: u32, price: &str) -> Seller {
        Seller::start_with(broker, name, cpus, price, &[])
    }

    /// Like [`Seller::start`], with extra `cpushare-seller run` arguments.
    pub fn start_with(
        broker: &Broker,
        name: &str,
        cpus: u32,
        price: &str,
        extra: &[&str],
    ) -> Seller {
        let token = broker.account(name, "seller");
        let home = tempfile::tempdir().expect("tempdir");
        run_ok(
            Command::new(bin("cpushare-seller"))
                .arg("--home")
                .arg(home.path())
                .args(["enroll", &token]),
        );
        let mut cmd = Command::new(bin("cpushare-seller"));
        cmd.arg("--home").arg(home.path()).args([
            "run",
            "--cpus",
            &cpus.to_string(),
            "--mem",
            "2G",
            "--price",
            price,
        ]);
        cmd.args(extra);
        let proc = Proc::spawn(&format!("seller {name}"), cmd);
        proc.wait_for("offering", Duration::from_secs(60));
        Seller { proc, home }
    }
}

/// A buyer identity.
pub struct Buyer {
    /// Its home.
    pub home: tempfile::TempDir,
}

impl Buyer {
    /// Creates the account with `credits`, and logs in.
    pub fn login(broker: &Broker, name: &str, credits: &str) -> Buyer {
        let token = broker.account(name, "buyer");
        if credits != "0" {
            broker.credit(name, credits);
        }
        let home = tempfile::tempdir().expect("tempdir");
        run_ok(
            Command::new(bin("cpushare"))
                .arg("--home")
                .arg(home.path())
                .args(["login", &token]),
        );
        Buyer { home }
    }

    /// A `cpushare` command as this buyer.
    pub fn cmd(&self) -> Command {
        let mut cmd = Command::new(bin("cpushare"));
        cmd.arg("--home").arg(self.home.path());
        cmd
    }

    /// Runs `cpushare ARGS` to completion.
    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().expect("run cpushare")
    }

    /// Runs a `--json` listing and parses it.
    pub fn json(&self, what: &str) -> serde_json::Value {
        let out = self.run(&["--json", what]);
        assert!(
            out.status.success(),
            "cpushare {what}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("json listing")
    }
}

/// Starts `cpushare --json run ARGS` as `buyer` in the background, its
/// output piped.
pub fn spawn_run(buyer: &Buyer, args: &[&str]) -> Child {
    buyer
        .cmd()
        .args(["--json", "run"])
        .args(args)
        .stderr(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn cpushare run")
}

/// Waits until `buyer` has `count` leases and the newest is running;
/// returns the leases listing (newest first).
pub fn wait_running(buyer: &Buyer, count: usize, timeout: Duration) -> serde_json::Value {
    let deadline = Instant::now() + timeout;
    loop {
        let leases = buyer.json("leases");
        let n = leases.as_array().map_or(0, Vec::len);
        if n == count && leases[0]["state"] == "running" {
            return leases;
        }
        assert!(
            Instant::now() < deadline,
            "no running lease #{count} within {timeout:?}: {leases}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits for a child started by [`spawn_run`] and collects its output;
/// kills it and panics with its stderr if it outlives `timeout`.
pub fn wait_output(child: &mut Child, timeout: Duration) -> Output {
    use std::io::Read;
    // Drain the pipes while waiting, so a chatty child cannot block.
    let drain = |s: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut s) = s {
                let _ = s.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let err = err.join().unwrap_or_default();
            panic!(
                "process did not finish within {timeout:?}; its stderr:\n{}",
                String::from_utf8_lossy(&err)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}
