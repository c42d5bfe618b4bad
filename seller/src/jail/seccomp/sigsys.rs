//! Learning which syscall broke the rules: filters answer with
//! `SECCOMP_RET_TRAP`, the kernel raises SIGSYS on the offending thread,
//! and this handler writes the syscall number to an inherited pipe (one
//! 8-byte write, atomic and async-signal-safe) and ends the process. The
//! daemon reads the record after reaping the sandbox.

use std::io::Read;

/// The fd, inherited from the daemon, the handler writes its record to.
pub const REPORT_FD: libc::c_int = 3;

/// Exit status of a sandbox ended by its SIGSYS handler (128 + SIGSYS).
pub const EXIT_SECCOMP: libc::c_int = 128 + libc::SIGSYS;

/// Marks a record, so stray bytes are not read as a syscall number.
const MAGIC: [u8; 4] = *b"SYS!";

/// `si_code` of a SIGSYS raised by seccomp (`SYS_SECCOMP` in the kernel).
const SYS_SECCOMP: libc::c_int = 1;

/// Offset of `_sigsys._syscall` in x86_64 `siginfo_t`: three ints and a
/// pad, then `void *_call_addr`, then `int _syscall`.
#[cfg(target_arch = "x86_64")]
const SI_SYSCALL_OFFSET: usize = 24;

extern "C" fn on_sigsys(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel hands an SA_SIGINFO handler a valid siginfo; for
    // SIGSYS with si_code SYS_SECCOMP the `_sigsys` member is the live one.
    let (code, nr) = unsafe {
        (
            (*info).si_code,
            *info.cast::<u8>().add(SI_SYSCALL_OFFSET).cast::<i32>(),
        )
    };
    let nr = if code == SYS_SECCOMP { nr } else { -1 };
    let mut record = [0u8; 8];
    record[..4].copy_from_slice(&MAGIC);
    record[4..].copy_from_slice(&nr.to_le_bytes());
    // SAFETY: write and _exit are async-signal-safe; the buffer is valid.
    unsafe {
        libc::write(REPORT_FD, record.as_ptr().cast(), record.len());
        libc::_exit(EXIT_SECCOMP);
    }
}

/// Installs the SIGSYS handler for the whole process and unblocks SIGSYS
/// on this thread (threads started later inherit the mask).
pub fn install_handler() -> Result<(), super::super::JailError> {
    // SAFETY: a zeroed sigaction is a valid starting point; the handler
    // has the SA_SIGINFO signature and touches only async-signal-safe calls.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_sigsys as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut action.sa_mask);
        super::super::error::check(
            libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut()),
            "sigaction(SIGSYS)",
        )?;
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGSYS);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
    }
    Ok(())
}

/// Reads the syscall number a dead sandbox reported, if it reported one.
pub fn read_report(mut from: impl Read) -> Option<i64> {
    let mut record = [0u8; 8];
    from.read_exact(&mut record).ok()?;
    if record[..4] != MAGIC {
        return None;
    }
    let nr = i32::from_le_bytes([record[4], record[5], record[6], record[7]]);
    (nr >= 0).then_some(i64::from(nr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_reads_back_and_junk_does_not() {
        let mut rec = MAGIC.to_vec();
        rec.extend_from_slice(&101i32.to_le_bytes());
        assert_eq!(read_report(&rec[..]), Some(101));
        assert_eq!(read_report(&b"nonsense"[..]), None);
        assert_eq!(read_report(&b"SYS"[..]), None);
    }
}
