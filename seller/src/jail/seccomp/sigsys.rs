//! Learning which syscall broke the rules: filters answer with
//! `SECCOMP_RET_TRAP`, the kernel raises SIGSYS on the offending thread,
//! and this handler writes one marked line naming the syscall number to
//! the sandbox's stderr (a pipe the daemon reads; one short write, atomic
//! and async-signal-safe) and ends the process. The daemon picks the line
//! out of the sandbox's stderr and names the syscall after reaping it.

/// The fd the handler writes its record to: the sandbox's stderr pipe.
pub const REPORT_FD: libc::c_int = 2;

/// Exit status of a sandbox ended by its SIGSYS handler (128 + SIGSYS).
pub const EXIT_SECCOMP: libc::c_int = 128 + libc::SIGSYS;

/// Starts a record line, so other stderr output is not read as one.
const MARKER: &[u8] = b"cpushare-sigsys ";

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
    let mut record = [0u8; 40];
    let len = format_record(nr, &mut record);
    // SAFETY: write and _exit are async-signal-safe; the buffer is valid.
    unsafe {
        libc::write(REPORT_FD, record.as_ptr().cast(), len);
        libc::_exit(EXIT_SECCOMP);
    }
}

/// Writes `\ncpushare-sigsys NR\n` into `buf` without allocating (it runs
/// in a signal handler); returns its length. The leading newline ends
/// any half-written line before it.
fn format_record(nr: i32, buf: &mut [u8; 40]) -> usize {
    buf[0] = b'\n';
    let mut len = 1;
    buf[len..len + MARKER.len()].copy_from_slice(MARKER);
    len += MARKER.len();
    if nr < 0 {
        buf[len] = b'-';
        len += 1;
    }
    let mut digits = [0u8; 10];
    let mut n = nr.unsigned_abs();
    let mut count = 0;
    loop {
        digits[count] = b'0' + (n % 10) as u8;
        count += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for i in (0..count).rev() {
        buf[len] = digits[i];
        len += 1;
    }
    buf[len] = b'\n';
    len + 1
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

/// The syscall number in one line of a sandbox's stderr, if the line is
/// a record (`Some(None)` for a SIGSYS that did not come from seccomp).
pub fn parse_record(line: &[u8]) -> Option<Option<i64>> {
    let rest = line.strip_prefix(MARKER)?;
    let text = std::str::from_utf8(rest).ok()?.trim_end();
    let nr: i64 = text.parse().ok()?;
    Some((nr >= 0).then_some(nr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_reads_back_and_junk_does_not() {
        for nr in [0, 7, 101, 1_000_000, i32::MAX, -1] {
            let mut buf = [0u8; 40];
            let len = format_record(nr, &mut buf);
            let text = &buf[..len];
            assert_eq!(text[0], b'\n');
            assert_eq!(text[len - 1], b'\n');
            let want = (nr >= 0).then_some(i64::from(nr));
            assert_eq!(parse_record(&text[1..len - 1]), Some(want), "{nr}");
        }
        assert_eq!(parse_record(b"nonsense"), None);
        assert_eq!(parse_record(b"cpushare-sigsys x"), None);
        assert_eq!(parse_record(b"cpushare sandbox: cpushare-sigsys 5"), None);
    }
}
