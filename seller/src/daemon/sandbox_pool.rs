//! Wasm sandboxes started and confined ahead of their leases.
//!
//! Starting a sandbox (process, namespaces, jail root, cgroup, wasm
//! runtime, filters) takes milliseconds that a tiny job would otherwise
//! wait for. The pool keeps a few sandboxes confined and waiting for a
//! job, each with its own uid, scratch directory and cgroup; a lease takes
//! one, the cgroup gets the lease's limits, and a replacement is started
//! in the background. A pooled sandbox still serves exactly one lease and
//! then dies: nothing of one lease's process is ever seen by another.

use super::JailSetup;
use crate::jail::cgroup::{CgroupLimits, LeaseCgroup};
use crate::jail::supervisor::{self, Sandbox, SpawnSpec};
use cpushare_proto::sandbox::FromSandbox;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long a new sandbox may take to report itself confined.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// Memory a waiting sandbox may use before it has a lease.
const IDLE_MEMORY_BYTES: u64 = 16 << 20;

/// A confined sandbox waiting for its job.
#[derive(Debug)]
pub(crate) struct Pooled {
    /// The sandbox; it has already said `Ready`.
    pub(crate) sandbox: Sandbox,
    /// Its uid (owner of `scratch`).
    pub(crate) uid: u32,
    /// Its scratch directory on the host.
    pub(crate) scratch: PathBuf,
}

/// The pool; cheap to clone.
#[derive(Clone)]
pub(crate) struct SandboxPool {
    inner: Arc<Inner>,
}

struct Inner {
    ready: Mutex<Vec<Pooled>>,
    /// Sandboxes being started now.
    starting: AtomicUsize,
    target: usize,
    jail: Arc<JailSetup>,
    scratch_root: PathBuf,
    max_memory_bytes: u64,
    seq: AtomicU64,
}

/// Creates a sandbox's scratch directory, owned by its uid, private.
pub(crate) fn make_scratch(dir: &Path, uid: u32) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::os::unix::fs::chown(dir, Some(uid), Some(uid))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// Debug builds pass the attack hook of the daemon's environment on to
/// the sandbox (tests drive it through a real daemon); release builds
/// give the sandbox an empty environment.
pub(crate) fn attack_env() -> Vec<(String, String)> {
    #[cfg(debug_assertions)]
    if let Ok(attack) = std::env::var(crate::jail::attack::ENV) {
        return vec![(crate::jail::attack::ENV.to_string(), attack)];
    }
    Vec::new()
}

impl SandboxPool {
    /// A pool that keeps `target` sandboxes waiting (none if 0), each able
    /// to run a guest of up to `max_memory_bytes`.
    pub(crate) fn new(
        target: usize,
        jail: Arc<JailSetup>,
        scratch_root: PathBuf,
        max_memory_bytes: u64,
    ) -> SandboxPool {
        SandboxPool {
            inner: Arc::new(Inner {
                ready: Mutex::new(Vec::new()),
                starting: AtomicUsize::new(0),
                target,
                jail,
                scratch_root,
                max_memory_bytes,
                seq: AtomicU64::new(0),
            }),
        }
    }

    /// Largest guest memory a pooled sandbox can run.
    pub(crate) fn max_memory_bytes(&self) -> u64 {
        self.inner.max_memory_bytes
    }

    /// A waiting sandbox for a lease of `limits`, if one is ready; starts
    /// its replacement either way.
    pub(crate) fn take(&self, limits: CgroupLimits) -> Option<Pooled> {
        let taken = loop {
            let next = self.inner.ready.lock().expect("pool lock").pop();
            match next {
                None => break None,
                Some(mut p) => {
                    if p.sandbox.is_alive() {
                        break Some(p);
                    }
                    tracing::warn!("a waiting sandbox died; discarding it");
                    discard(p);
                }
            }
        };
        self.fill();
        let p = taken?;
        let limited = p
            .sandbox
            .cgroup()
            .map(|cg| cg.set_limits(limits))
            .transpose();
        match limited {
            Ok(Some(())) => Some(p),
            Ok(None) | Err(_) => {
                tracing::warn!("could not give a waiting sandbox its lease's limits");
                discard(p);
                None
            }
        }
    }

    /// Starts sandboxes in the background until `target` are ready or starting.
    pub(crate) fn fill(&self) {
        let inner = &self.inner;
        loop {
            let ready = inner.ready.lock().expect("pool lock").len();
            let starting = inner.starting.load(Ordering::Acquire);
            if ready + starting >= inner.target {
                return;
            }
            if inner
                .starting
                .compare_exchange(starting, starting + 1, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                continue;
            }
            let pool = self.clone();
            tokio::spawn(async move {
                let started = pool.start_one().await;
                pool.inner.starting.fetch_sub(1, Ordering::AcqRel);
                match started {
                    Ok(p) => pool.inner.ready.lock().expect("pool lock").push(p),
                    // Leases still start sandboxes themselves; the next
                    // `take` tries again.
                    Err(e) => tracing::warn!("could not start a waiting sandbox: {e}"),
                }
            });
        }
    }

    async fn start_one(&self) -> Result<Pooled, String> {
        let inner = &self.inner;
        let n = inner.seq.fetch_add(1, Ordering::Relaxed);
        let name = format!("{}-pool{n}", std::process::id());
        let uid = supervisor::next_uid();
        let scratch = inner.scratch_root.join(&name);
        make_scratch(&scratch, uid).map_err(|e| format!("scratch space: {e}"))?;
        let started = self.spawn_confined(&name, uid, &scratch);
        if started.is_err() {
            let _ = std::fs::remove_dir_all(&scratch);
        }
        let mut sandbox = started?;
        let ready = tokio::time::timeout(READY_TIMEOUT, sandbox.next()).await;
        let pooled = Pooled {
            sandbox,
            uid,
            scratch,
        };
        match ready {
            Ok(Some(FromSandbox::Ready)) => Ok(pooled),
            other => {
                let why = format!("it did not report ready ({other:?})");
                discard(pooled);
                Err(why)
            }
        }
    }

    /// Starts one sandbox in a cgroup of its own with idle limits.
    fn spawn_confined(&self, name: &str, uid: u32, scratch: &Path) -> Result<Sandbox, String> {
        let inner = &self.inner;
        let cgroup = LeaseCgroup::create(
            &inner.jail.cgroups,
            name,
            CgroupLimits {
                guest_memory_bytes: IDLE_MEMORY_BYTES,
                code_bytes: 0,
                cpus: 1,
            },
        )
        .map_err(|e| e.to_string())?;
        let spec = SpawnSpec {
            exe: inner.jail.exe.clone(),
            jail_root: inner.jail.root.clone(),
            scratch: scratch.to_path_buf(),
            uid,
            max_memory_bytes: inner.max_memory_bytes,
            jail: true,
            seccomp: true,
            env: attack_env(),
        };
        inner
            .jail
            .start_wasm(&spec, cgroup)
            .map_err(|e| e.to_string())
    }
}

/// Kills and reaps a pooled sandbox and removes its scratch directory.
fn discard(mut p: Pooled) {
    p.sandbox.kill();
    tokio::spawn(async move {
        let _ = p.sandbox.reap(None).await;
        let _ = std::fs::remove_dir_all(&p.scratch);
    });
}
