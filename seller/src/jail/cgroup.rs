//! One cgroup per lease, on cgroup v2 where the host delegates its
//! controllers and on the v1 memory, pids and cpu hierarchies otherwise.
//! It bounds the sandbox's memory (guest memory plus a stated overhead),
//! its tasks and its CPU time, gives it the lowest CPU weight, tells an
//! OOM kill from other deaths, and kills every process of a lease at once.

use super::JailError;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Memory a sandbox process needs beyond its guest's: the runtime's own
/// heap, stacks, the compiled module and page tables (a tiny job's sandbox
/// peaks at about 20 MiB resident; the rest is margin).
pub const OVERHEAD_BYTES: u64 = 64 << 20;

/// Tasks (processes and threads) a lease's cgroup may hold, beyond one per vCPU.
pub const MAX_TASKS: u64 = 32;

/// CFS period for the CPU quota, microseconds.
const PERIOD_US: u64 = 100_000;

/// Directory under each hierarchy that holds all lease cgroups.
const BASE: &str = "cpushare-leases";

/// The cgroup hierarchies this host offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hierarchy {
    /// Unified hierarchy; `leases` has memory, pids and cpu enabled for its children.
    V2 {
        /// Parent of every lease cgroup.
        leases: PathBuf,
    },
    /// Legacy per-controller hierarchies; each path is the parent of lease cgroups.
    V1 {
        /// Under the memory controller.
        memory: PathBuf,
        /// Under the pids controller.
        pids: PathBuf,
        /// Under the cpu controller.
        cpu: PathBuf,
    },
}

/// Limits of one lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CgroupLimits {
    /// Guest memory, bytes.
    pub guest_memory_bytes: u64,
    /// Machine code the sandbox maps for its guest, bytes: a wasm module's
    /// compiled form, counted twice (the bytes received, and wasmtime's
    /// copy while it loads them). A 69 MB real-world module compiles to
    /// 240 MB, which no fixed overhead covers.
    pub code_bytes: u64,
    /// vCPUs paid for: the CPU quota.
    pub cpus: u32,
}

impl CgroupLimits {
    /// The cgroup's memory limit: guest memory, code, and [`OVERHEAD_BYTES`].
    pub fn memory_bytes(&self) -> u64 {
        self.guest_memory_bytes
            .saturating_add(self.code_bytes)
            .saturating_add(OVERHEAD_BYTES)
    }
}

fn write_file(path: &Path, value: &str) -> Result<(), JailError> {
    fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|mut f| f.write_all(value.as_bytes()))
        .map_err(|source| JailError::Cgroup {
            path: path.to_path_buf(),
            source,
        })
}

fn make_dir(path: &Path) -> Result<(), JailError> {
    match fs::create_dir(path) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => Err(JailError::Cgroup {
            path: path.to_path_buf(),
            source: e,
        }),
        _ => Ok(()),
    }
}

/// Mount points from `/proc/self/mountinfo`: (mount point, fs type, super options).
fn mounts() -> Vec<(PathBuf, String, String)> {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mount_point = left.split(' ').nth(4)?;
            let mut r = right.split(' ');
            let fstype = r.next()?.to_string();
            let opts = r.nth(1).unwrap_or("").to_string();
            Some((PathBuf::from(mount_point), fstype, opts))
        })
        .collect()
}

/// The v2 mount point if it has memory, pids and cpu available.
pub fn v2_mount() -> Option<PathBuf> {
    mounts()
        .into_iter()
        .find(|(_, t, _)| t == "cgroup2")
        .map(|(p, _, _)| p)
        .filter(|p| {
            let c = fs::read_to_string(p.join("cgroup.controllers")).unwrap_or_default();
            ["memory", "pids", "cpu"]
                .iter()
                .all(|want| c.split_whitespace().any(|have| have == *want))
        })
}

/// The v1 mount point of `controller`, if mounted.
pub fn v1_mount(controller: &str) -> Option<PathBuf> {
    mounts()
        .into_iter()
        .find(|(_, t, o)| t == "cgroup" && o.split(',').any(|c| c == controller))
        .map(|(p, _, _)| p)
}

impl Hierarchy {
    /// Finds usable controllers and prepares the parent of lease cgroups
    /// (on v2, moving this process into a leaf so its cgroup may delegate).
    /// Lease cgroups are named `<daemon pid>-<lease>`; empty ones left by a
    /// daemon that is gone are removed.
    pub fn detect() -> Result<Hierarchy, JailError> {
        let h = Hierarchy::find()?;
        h.remove_stale();
        Ok(h)
    }

    fn parents(&self) -> Vec<&PathBuf> {
        match self {
            Hierarchy::V2 { leases } => vec![leases],
            Hierarchy::V1 { memory, pids, cpu } => vec![memory, pids, cpu],
        }
    }

    fn remove_stale(&self) {
        for parent in self.parents() {
            let Ok(entries) = fs::read_dir(parent) else {
                continue;
            };
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let owner_gone = name
                    .split_once('-')
                    .and_then(|(pid, _)| pid.parse::<u32>().ok())
                    .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists());
                if owner_gone && e.path().is_dir() {
                    // Fails harmlessly while processes remain in it.
                    let _ = fs::remove_dir(e.path());
                }
            }
        }
    }

    fn find() -> Result<Hierarchy, JailError> {
        if let Some(mount) = v2_mount() {
            return Hierarchy::prepare_v2(&mount);
        }
        match (v1_mount("memory"), v1_mount("pids"), v1_mount("cpu")) {
            (Some(m), Some(p), Some(c)) => {
                let h = Hierarchy::V1 {
                    memory: m.join(BASE),
                    pids: p.join(BASE),
                    cpu: c.join(BASE),
                };
                if let Hierarchy::V1 { memory, pids, cpu } = &h {
                    for d in [memory, pids, cpu] {
                        make_dir(d)?;
                    }
                    // The weight that matters is the group's against the
                    // host's own tasks, one level up.
                    write_file(&cpu.join("cpu.shares"), "2")?;
                }
                Ok(h)
            }
            (m, p, c) => Err(JailError::NoCgroups {
                detail: format!(
                    "no cgroup v2 with memory+pids+cpu, and v1 memory {}, pids {}, cpu {}",
                    found(m.is_some()),
                    found(p.is_some()),
                    found(c.is_some())
                ),
            }),
        }
    }

    fn prepare_v2(mount: &Path) -> Result<Hierarchy, JailError> {
        let own = fs::read_to_string("/proc/self/cgroup")
            .unwrap_or_default()
            .lines()
            .find_map(|l| {
                l.strip_prefix("0::")
                    .map(|p| p.trim_start_matches('/').to_string())
            })
            .unwrap_or_default();
        let base = mount.join(own);
        let procs = fs::read_to_string(base.join("cgroup.procs")).unwrap_or_default();
        if base != mount && !procs.trim().is_empty() {
            // "No internal processes": leave room to delegate controllers.
            let leaf = base.join("seller");
            make_dir(&leaf)?;
            for pid in procs.split_whitespace() {
                let _ = write_file(&leaf.join("cgroup.procs"), pid);
            }
        }
        write_file(&base.join("cgroup.subtree_control"), "+memory +pids +cpu")?;
        let leases = base.join(BASE);
        make_dir(&leases)?;
        write_file(&leases.join("cgroup.subtree_control"), "+memory +pids +cpu")?;
        write_file(&leases.join("cpu.weight"), "1")?;
        Ok(Hierarchy::V2 { leases })
    }
}

fn found(yes: bool) -> &'static str {
    if yes {
        "found"
    } else {
        "missing"
    }
}

/// The cgroup of one lease; removed when dropped (after its processes died).
#[derive(Debug)]
pub struct LeaseCgroup {
    v2: bool,
    /// memory (v1) or the only directory (v2) first.
    dirs: Vec<PathBuf>,
}

impl LeaseCgroup {
    /// Creates the lease's cgroup named `name` with `limits`.
    pub fn create(
        h: &Hierarchy,
        name: &str,
        limits: CgroupLimits,
    ) -> Result<LeaseCgroup, JailError> {
        let cg = match h {
            Hierarchy::V2 { leases } => LeaseCgroup {
                v2: true,
                dirs: vec![leases.join(name)],
            },
            Hierarchy::V1 { memory, pids, cpu } => LeaseCgroup {
                v2: false,
                dirs: vec![memory.join(name), pids.join(name), cpu.join(name)],
            },
        };
        for d in &cg.dirs {
            make_dir(d)?;
        }
        cg.set_limits(limits)?;
        Ok(cg)
    }

    /// Sets (or changes: a sandbox made ahead of its lease gets the
    /// lease's limits when it is handed one) the cgroup's limits.
    pub fn set_limits(&self, limits: CgroupLimits) -> Result<(), JailError> {
        let memory = limits.memory_bytes().to_string();
        let quota = u64::from(limits.cpus.max(1)) * PERIOD_US;
        // A VM has a thread per vCPU beyond its fixed ones.
        let tasks = (MAX_TASKS + u64::from(limits.cpus)).to_string();
        let d = &self.dirs;
        if self.v2 {
            write_file(&d[0].join("memory.max"), &memory)?;
            let _ = write_file(&d[0].join("memory.swap.max"), "0");
            write_file(&d[0].join("pids.max"), &tasks)?;
            write_file(&d[0].join("cpu.max"), &format!("{quota} {PERIOD_US}"))?;
            write_file(&d[0].join("cpu.weight"), "1")?;
        } else {
            // memsw must never be below the memory limit: lower it last,
            // raise it first.
            let _ = write_file(&d[0].join("memory.memsw.limit_in_bytes"), &memory);
            write_file(&d[0].join("memory.limit_in_bytes"), &memory)?;
            let _ = write_file(&d[0].join("memory.memsw.limit_in_bytes"), &memory);
            write_file(&d[1].join("pids.max"), &tasks)?;
            write_file(&d[2].join("cpu.cfs_period_us"), &PERIOD_US.to_string())?;
            write_file(&d[2].join("cpu.cfs_quota_us"), &quota.to_string())?;
            write_file(&d[2].join("cpu.shares"), "2")?;
        }
        Ok(())
    }

    /// The directories of this cgroup (one on v2, memory/pids/cpu on v1).
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// `cgroup.procs` of every directory: a new sandbox joins them all
    /// by writing `0` to each before it runs anything else.
    pub fn procs_paths(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.join("cgroup.procs")).collect()
    }

    /// Whether the kernel's OOM killer struck inside this cgroup.
    pub fn oom_killed(&self) -> bool {
        let file = if self.v2 {
            "memory.events"
        } else {
            "memory.oom_control"
        };
        fs::read_to_string(self.dirs[0].join(file))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.strip_prefix("oom_kill "))
            .any(|n| n.trim().parse::<u64>().unwrap_or(0) > 0)
    }

    fn pids(&self) -> Vec<i32> {
        fs::read_to_string(self.dirs[0].join("cgroup.procs"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }

    /// SIGKILLs every process in the cgroup.
    pub fn kill_all(&self) {
        if self.v2 && write_file(&self.dirs[0].join("cgroup.kill"), "1").is_ok() {
            return;
        }
        for pid in self.pids() {
            // SAFETY: kill with integer arguments; a pid that already
            // exited makes it fail harmlessly.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

impl Drop for LeaseCgroup {
    fn drop(&mut self) {
        for _ in 0..50 {
            if self.pids().is_empty() {
                break;
            }
            self.kill_all();
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        for d in &self.dirs {
            if let Err(e) = fs::remove_dir(d) {
                tracing::warn!(path = %d.display(), error = %e, "could not remove lease cgroup");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_memory_limit_covers_guest_code_and_overhead() {
        let l = CgroupLimits {
            guest_memory_bytes: 256 << 20,
            code_bytes: 2 * 240_102_704,
            cpus: 1,
        };
        assert_eq!(l.memory_bytes(), (256 << 20) + 480_205_408 + OVERHEAD_BYTES);
        let huge = CgroupLimits {
            guest_memory_bytes: u64::MAX,
            ..l
        };
        assert_eq!(huge.memory_bytes(), u64::MAX);
    }
}
