//! Debug builds only: `CPUSHARE_SANDBOX_ATTACK=NAME` makes a confined
//! sandbox try something it must not, so tests can check the jail stops
//! it and the daemon names it. Compiled out of release builds.

use std::ffi::CString;

/// Environment variable naming the attack.
pub const ENV: &str = "CPUSHARE_SANDBOX_ATTACK";

/// Runs the attack named in [`ENV`], if any, right after confinement.
/// Attacks the filter should stop end the process in the SIGSYS handler;
/// probes that survive print what they saw to stderr (`probe NAME: ...`)
/// and let the job go on.
pub fn from_env() {
    let Ok(name) = std::env::var(ENV) else {
        return;
    };
    let path = CString::new("/etc/passwd").expect("no NUL");
    let root = CString::new("/").expect("no NUL");
    // SAFETY: each call gets valid pointers or none; they are attacks the
    // filter is meant to refuse, run in a process that is meant to die.
    let result: i64 = unsafe {
        match name.as_str() {
            "openat" => i64::from(libc::openat(libc::AT_FDCWD, path.as_ptr(), libc::O_RDONLY)),
            "socket" => i64::from(libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0)),
            "execve" => {
                let argv = [path.as_ptr(), std::ptr::null()];
                i64::from(libc::execve(path.as_ptr(), argv.as_ptr(), std::ptr::null()))
            }
            "ptrace" => libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0),
            "mount" => i64::from(libc::mount(
                root.as_ptr(),
                root.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND,
                std::ptr::null(),
            )),
            "kexec_load" => libc::syscall(libc::SYS_kexec_load, 0, 0, 0, 0),
            "fork" => i64::from(libc::fork()),
            "memory" => {
                // Touch native memory past any lease's cgroup limit.
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 16 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            _ => return,
        }
    };
    eprintln!("probe {name}: survived with {result}");
}

/// With `look` in [`ENV`], describes what the jailed process can see
/// (before its seccomp filter, which would refuse most of these calls).
pub fn look_if_asked() -> Option<String> {
    if std::env::var(ENV).as_deref() != Ok("look") {
        return None;
    }
    let mut out = String::new();
    let entries = |p: &str| {
        std::fs::read_dir(p)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_else(|e| format!("error {e}"))
    };
    out += &format!("probe root: {}\n", entries("/"));
    out += &format!("probe proc: {}\n", entries("/proc"));
    out += &format!("probe net: {}\n", entries("/sys/class/net"));
    // SAFETY: getppid cannot fail; the parent lives outside the pid namespace.
    out += &format!("probe ppid: {}\n", unsafe { libc::getppid() });
    out += &format!("probe pid: {}\n", std::process::id());
    out += &format!("probe interfaces: {}\n", interfaces());
    let writable = std::fs::write("/probe-file", b"x").is_ok();
    out += &format!("probe write-root: {writable}\n");
    Some(out)
}

fn interfaces() -> String {
    let mut names = Vec::new();
    // SAFETY: if_nameindex returns an array ended by a zero entry, freed
    // with if_freenameindex; names are NUL-terminated.
    unsafe {
        let list = libc::if_nameindex();
        if list.is_null() {
            return "error".into();
        }
        let mut p = list;
        while (*p).if_index != 0 {
            names.push(
                std::ffi::CStr::from_ptr((*p).if_name)
                    .to_string_lossy()
                    .into_owned(),
            );
            p = p.add(1);
        }
        libc::if_freenameindex(list);
    }
    names.join(",")
}
