//! Messages between the seller daemon and one sandbox child it started
//! (`cpushare-seller sandbox`), over the child's stdin and stdout pipes.
//!
//! Both sides use [`crate::frame`] framing. The daemon writes
//! [`ToSandbox`]: the module in chunks (a module may exceed one frame),
//! then the job, then at most a stop. The child writes [`FromSandbox`]:
//! ready once confined, output as the guest writes it, then its end. The
//! child has no async runtime (it must stay single-threaded until it is
//! confined), so it uses the blocking readers and writers of [`crate::frame`].

use crate::msg::StdStream;
use serde::{Deserialize, Serialize};

/// Largest piece of module or compiled code in one [`ToSandbox`] frame.
pub const CHUNK_BYTES: usize = 1 << 20;

/// Daemon to sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToSandbox {
    /// The next piece of the module's wasm bytes.
    WasmChunk(#[serde(with = "crate::bytes")] Vec<u8>),
    /// The next piece of the daemon's own compiled form of the module
    /// (trusted: produced by the daemon's engine, never by a sandbox).
    CompiledChunk(#[serde(with = "crate::bytes")] Vec<u8>),
    /// Everything else about the job; the child starts the guest on it.
    Job(SandboxJob),
    /// The lease is over: stop the guest at its next epoch tick.
    Stop,
    /// A VM lease's job (the child was started in VM mode); the child boots it.
    VmJob(SandboxVmJob),
    /// Bytes the buyer typed, for a VM's serial console.
    ConsoleInput(#[serde(with = "crate::bytes")] Vec<u8>),
    /// The lease was renewed: the running job's budgets, counted from its
    /// start, are now these (they only ever grow).
    Extend {
        /// New CPU time budget, milliseconds.
        cpu_time_ms: u64,
        /// New wall-clock budget, milliseconds.
        wall_time_ms: u64,
    },
}

/// One VM job for a sandbox child started in VM mode (`--vm-iso`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxVmJob {
    /// vCPUs, one thread each.
    pub vcpus: u8,
    /// Guest memory, bytes.
    pub mem_bytes: u64,
    /// Items appended to the ISO's kernel command line, e.g. the buyer's
    /// `cpushare.nfs=ADDR:/out:/out:rw` shares (each one word, no spaces).
    #[serde(default)]
    pub cmdline: Vec<String>,
    /// KVM's supported CPUID list, read once by the daemon (function,
    /// index, flags, eax, ebx, ecx, edx per entry); empty: the sandbox
    /// reads it itself.
    #[serde(default)]
    pub host_cpuid: Vec<[u32; 7]>,
}

/// One job for a sandbox child.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxJob {
    /// Content id of the module (64 hex digits); the child checks the bytes against it.
    pub image_hex: String,
    /// Arguments after `argv[0]`.
    pub args: Vec<String>,
    /// The guest's complete environment.
    pub env: Vec<(String, String)>,
    /// The guest's stdin.
    #[serde(with = "crate::bytes")]
    pub stdin: Vec<u8>,
    /// Ceiling on the guest's linear memory, bytes.
    pub memory_bytes: u64,
    /// CPU time budget, milliseconds.
    pub cpu_time_ms: u64,
    /// Wall-clock budget, milliseconds.
    pub wall_time_ms: u64,
}

/// Sandbox to daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FromSandbox {
    /// The child is confined and waits for a job.
    Ready,
    /// The module loaded; the guest is about to run (billing may start).
    Started,
    /// One guest write to stdout or stderr.
    Output {
        /// Which stream.
        stream: StdStream,
        /// The bytes written.
        #[serde(with = "crate::bytes")]
        data: Vec<u8>,
    },
    /// The guest ended; nothing follows.
    Ended(SandboxEnd),
}

/// How the guest ended, as the child saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SandboxEnd {
    /// `_start` returned or the guest called `proc_exit`.
    Exited {
        /// Exit status.
        code: i32,
    },
    /// The guest trapped.
    Trapped {
        /// wasmtime's description.
        message: String,
    },
    /// CPU budget used up.
    CpuTimeExceeded,
    /// Wall-clock budget used up.
    WallTimeExceeded,
    /// Refused memory beyond its limit, then failed.
    MemoryExceeded {
        /// The limit, bytes.
        limit_bytes: u64,
    },
    /// Stopped by [`ToSandbox::Stop`].
    Interrupted,
    /// A VM guest powered off with this status.
    PowerOff {
        /// The status it wrote (0 for an ACPI-style shutdown).
        status: u32,
    },
    /// A VM guest asked for a reset (not rebooted: the lease ends).
    GuestReset,
    /// A VM guest's vCPU triple-faulted.
    TripleFault,
    /// The child could not run the job (bad module, bad job).
    Failed {
        /// What went wrong.
        message: String,
    },
}

pub use crate::frame::{read_blocking, write_blocking};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::FrameError;

    #[test]
    fn blocking_frames_round_trip() {
        let msgs = vec![
            FromSandbox::Ready,
            FromSandbox::Output {
                stream: StdStream::Stderr,
                data: b"hi".to_vec(),
            },
            FromSandbox::Ended(SandboxEnd::Exited { code: 3 }),
        ];
        let mut buf = Vec::new();
        for m in &msgs {
            write_blocking(&mut buf, m).unwrap();
        }
        let mut r = &buf[..];
        for m in &msgs {
            assert_eq!(
                read_blocking::<FromSandbox, _>(&mut r).unwrap().as_ref(),
                Some(m)
            );
        }
        assert_eq!(read_blocking::<FromSandbox, _>(&mut r).unwrap(), None);
    }

    #[test]
    fn a_cut_frame_is_truncated() {
        let mut buf = Vec::new();
        write_blocking(&mut buf, &ToSandbox::WasmChunk(vec![7; 100])).unwrap();
        buf.truncate(50);
        assert!(matches!(
            read_blocking::<ToSandbox, _>(&mut &buf[..]),
            Err(FrameError::Truncated { .. })
        ));
    }
}
