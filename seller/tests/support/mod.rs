//! The seller daemon's side of the sandbox tests, shared by every test
//! binary that starts sandboxes or runtimes: a root check, a seller home
//! with its jail and scratch directories, the host's cgroups, one lease's
//! scratch directory, cgroup and spawn spec, a wasm runtime, and reading
//! a thread's `/proc` status. Fails loudly when the host lacks something:
//! these tests never pass by skipping.

// Each test binary compiles this module and uses only part of it.
#![allow(dead_code)]

use cpushare_seller::jail::cgroup::{CgroupLimits, Hierarchy, LeaseCgroup};
use cpushare_seller::jail::supervisor::{self, SpawnSpec};
use cpushare_seller::wasm::{RuntimeConfig, WasmRuntime};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

/// One mebibyte.
pub const MIB: u64 = 1 << 20;

/// A seller home (`jail/`, `scratch/`) and the host's cgroups, as the
/// daemon has them.
pub struct TestHost {
    home: tempfile::TempDir,
    cgroups: Hierarchy,
    /// Starts every lease name, so a test finds its own cgroups.
    prefix: &'static str,
    next: AtomicU32,
}

/// One lease's confinement, ready to spawn: its name, cgroup and spec.
pub struct TestLease {
    /// Unique within the host; names the scratch dir and the cgroup.
    pub name: String,
    /// The lease's cgroup, already created with its limits.
    pub cgroup: LeaseCgroup,
    /// How to start the sandbox for it.
    pub spec: SpawnSpec,
}

impl TestHost {
    /// Checks that we are root (`what` names the tests, for the message)
    /// and sets up a fresh home; lease names start with `prefix`.
    pub fn new(what: &str, prefix: &'static str) -> TestHost {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let euid = unsafe { libc::geteuid() };
        assert_eq!(
            euid, 0,
            "{what} tests must run as root (CI does); see `cpushare-seller doctor`"
        );
        let home = tempfile::tempdir().unwrap();
        std::fs::create_dir(home.path().join("jail")).unwrap();
        std::fs::create_dir(home.path().join("scratch")).unwrap();
        let cgroups =
            Hierarchy::detect().expect("this host must offer cgroup v2 or v1 controllers");
        TestHost {
            home,
            cgroups,
            prefix,
            next: AtomicU32::new(0),
        }
    }

    /// The seller binary sandboxes are started from
    /// (`CPUSHARE_TEST_SANDBOX_EXE` overrides it).
    pub fn lease_exe(&self) -> PathBuf {
        std::env::var_os("CPUSHARE_TEST_SANDBOX_EXE")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_cpushare-seller")))
    }

    /// The home directory.
    pub fn home(&self) -> &Path {
        self.home.path()
    }

    /// A name no other lease of this test process has.
    pub fn lease_name(&self) -> String {
        format!(
            "{}-{}-{}",
            self.prefix,
            std::process::id(),
            self.next.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// A new lease: its own uid, a scratch dir only that uid may enter,
    /// a cgroup with `limits`, and a spec for the real seller binary that
    /// sets the debug-only attack hook to `attack`.
    ///
    /// Debugging knobs: `CPUSHARE_TEST_SANDBOX_EXE` wraps the sandbox (in
    /// strace, say); `CPUSHARE_TEST_NO_JAIL` and `CPUSHARE_TEST_NO_SECCOMP`
    /// turn confinement parts off.
    pub fn lease(
        &self,
        limits: CgroupLimits,
        max_memory_bytes: u64,
        attack: Option<&str>,
    ) -> TestLease {
        let name = self.lease_name();
        let uid = supervisor::next_uid();
        let scratch = self.home().join("scratch").join(&name);
        std::fs::create_dir(&scratch).unwrap();
        std::os::unix::fs::chown(&scratch, Some(uid), Some(uid)).unwrap();
        std::fs::set_permissions(&scratch, std::fs::Permissions::from_mode(0o700)).unwrap();
        let cgroup = LeaseCgroup::create(&self.cgroups, &name, limits).unwrap();
        let spec = SpawnSpec {
            exe: self.lease_exe(),
            jail_root: self.home().join("jail"),
            scratch,
            uid,
            max_memory_bytes,
            jail: std::env::var_os("CPUSHARE_TEST_NO_JAIL").is_none(),
            seccomp: std::env::var_os("CPUSHARE_TEST_NO_SECCOMP").is_none(),
            env: attack
                .map(|a| vec![("CPUSHARE_SANDBOX_ATTACK".to_string(), a.to_string())])
                .unwrap_or_default(),
        };
        TestLease { name, cgroup, spec }
    }
}

/// A wasm runtime caching compiled modules in `dir/compiled`.
pub fn wasm_runtime(dir: &Path, max_instances: u32, max_memory_bytes: u64) -> WasmRuntime {
    WasmRuntime::new(RuntimeConfig {
        compiled_cache_dir: dir.join("compiled"),
        max_instances,
        max_memory_bytes,
    })
    .expect("runtime starts")
}

/// Field `field` of `/proc/PID/task/TID/status` (TID = PID: the main thread).
pub fn status_field(pid: u32, tid: u32, field: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in status of {pid}/{tid}"))
        .trim()
        .to_string()
}
