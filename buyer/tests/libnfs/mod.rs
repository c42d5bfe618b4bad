//! A thin binding to libnfs's synchronous API (Debian `libnfs-dev`), the
//! real userspace NFSv3 client the share tests and benchmark drive.
#![allow(dead_code)]

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::ptr;

#[repr(C)]
struct NfsContext {
    _p: [u8; 0],
}
#[repr(C)]
struct NfsFh {
    _p: [u8; 0],
}
#[repr(C)]
struct NfsDir {
    _p: [u8; 0],
}
#[repr(C)]
struct NfsUrl {
    server: *mut c_char,
    path: *mut c_char,
    file: *mut c_char,
}

/// `struct nfs_stat_64` from libnfs.h.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct NfsStat64 {
    pub dev: u64,
    pub ino: u64,
    pub mode: u64,
    pub nlink: u64,
    pub uid: u64,
    pub gid: u64,
    pub rdev: u64,
    pub size: u64,
    pub blksize: u64,
    pub blocks: u64,
    pub atime: u64,
    pub mtime: u64,
    pub ctime: u64,
    pub atime_nsec: u64,
    pub mtime_nsec: u64,
    pub ctime_nsec: u64,
    pub used: u64,
}

#[repr(C)]
struct NfsDirent {
    next: *mut NfsDirent,
    name: *mut c_char,
    inode: u64,
}

#[link(name = "nfs")]
extern "C" {
    fn nfs_init_context() -> *mut NfsContext;
    fn nfs_destroy_context(nfs: *mut NfsContext);
    fn nfs_get_error(nfs: *mut NfsContext) -> *mut c_char;
    fn nfs_parse_url_dir(nfs: *mut NfsContext, url: *const c_char) -> *mut NfsUrl;
    fn nfs_destroy_url(url: *mut NfsUrl);
    fn nfs_mount(nfs: *mut NfsContext, server: *const c_char, export: *const c_char) -> c_int;
    fn nfs_open(
        nfs: *mut NfsContext,
        path: *const c_char,
        flags: c_int,
        fh: *mut *mut NfsFh,
    ) -> c_int;
    fn nfs_create(
        nfs: *mut NfsContext,
        path: *const c_char,
        flags: c_int,
        mode: c_int,
        fh: *mut *mut NfsFh,
    ) -> c_int;
    fn nfs_close(nfs: *mut NfsContext, fh: *mut NfsFh) -> c_int;
    fn nfs_pread(
        nfs: *mut NfsContext,
        fh: *mut NfsFh,
        offset: u64,
        count: u64,
        buf: *mut c_void,
    ) -> c_int;
    fn nfs_pwrite(
        nfs: *mut NfsContext,
        fh: *mut NfsFh,
        offset: u64,
        count: u64,
        buf: *const c_void,
    ) -> c_int;
    fn nfs_stat64(nfs: *mut NfsContext, path: *const c_char, st: *mut NfsStat64) -> c_int;
    fn nfs_lstat64(nfs: *mut NfsContext, path: *const c_char, st: *mut NfsStat64) -> c_int;
    fn nfs_opendir(nfs: *mut NfsContext, path: *const c_char, dir: *mut *mut NfsDir) -> c_int;
    fn nfs_readdir(nfs: *mut NfsContext, dir: *mut NfsDir) -> *mut NfsDirent;
    fn nfs_closedir(nfs: *mut NfsContext, dir: *mut NfsDir);
    fn nfs_mkdir(nfs: *mut NfsContext, path: *const c_char) -> c_int;
    fn nfs_unlink(nfs: *mut NfsContext, path: *const c_char) -> c_int;
    fn nfs_readlink(
        nfs: *mut NfsContext,
        path: *const c_char,
        buf: *mut c_char,
        size: c_int,
    ) -> c_int;
    fn nfs_get_readmax(nfs: *mut NfsContext) -> u64;
    fn nfs_get_writemax(nfs: *mut NfsContext) -> u64;
}

/// One mounted libnfs context.
pub struct Nfs {
    ctx: *mut NfsContext,
}

fn cstr(s: &str) -> CString {
    CString::new(s).expect("test paths have no NUL")
}

impl Nfs {
    /// Mounts `nfs://SERVER/EXPORT?nfsport=..&mountport=..`.
    pub fn mount(url: &str) -> Result<Self, String> {
        // SAFETY: plain constructor; null is checked.
        let ctx = unsafe { nfs_init_context() };
        assert!(!ctx.is_null(), "nfs_init_context failed");
        let nfs = Nfs { ctx };
        let u = cstr(url);
        // SAFETY: ctx is live, u is NUL-terminated; the result is checked
        // for null and freed below.
        let parsed = unsafe { nfs_parse_url_dir(nfs.ctx, u.as_ptr()) };
        if parsed.is_null() {
            return Err(nfs.error());
        }
        // SAFETY: parsed is a valid nfs_url whose strings live until
        // nfs_destroy_url.
        let rc = unsafe { nfs_mount(nfs.ctx, (*parsed).server, (*parsed).path) };
        // SAFETY: parsed came from nfs_parse_url_dir and is freed once.
        unsafe { nfs_destroy_url(parsed) };
        if rc != 0 {
            return Err(nfs.error());
        }
        Ok(nfs)
    }

    fn error(&self) -> String {
        // SAFETY: ctx is live; the error string is owned by the context and
        // copied before any further call.
        let p = unsafe { nfs_get_error(self.ctx) };
        if p.is_null() {
            return "unknown libnfs error".into();
        }
        // SAFETY: non-null, NUL-terminated string from libnfs.
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }

    fn check(&self, rc: c_int) -> Result<c_int, String> {
        if rc < 0 {
            Err(self.error())
        } else {
            Ok(rc)
        }
    }

    /// Largest READ and WRITE the server agreed to.
    pub fn io_max(&self) -> (u64, u64) {
        // SAFETY: ctx is live and mounted.
        unsafe { (nfs_get_readmax(self.ctx), nfs_get_writemax(self.ctx)) }
    }

    /// stat() following symlinks (client side).
    pub fn stat(&self, path: &str) -> Result<NfsStat64, String> {
        let mut st = NfsStat64::default();
        let p = cstr(path);
        // SAFETY: ctx live, p NUL-terminated, st a valid out pointer.
        self.check(unsafe { nfs_stat64(self.ctx, p.as_ptr(), &mut st) })?;
        Ok(st)
    }

    /// lstat().
    pub fn lstat(&self, path: &str) -> Result<NfsStat64, String> {
        let mut st = NfsStat64::default();
        let p = cstr(path);
        // SAFETY: as in stat.
        self.check(unsafe { nfs_lstat64(self.ctx, p.as_ptr(), &mut st) })?;
        Ok(st)
    }

    fn open(&self, path: &str, flags: c_int) -> Result<*mut NfsFh, String> {
        let mut fh = ptr::null_mut();
        let p = cstr(path);
        // SAFETY: ctx live, p NUL-terminated, fh a valid out pointer.
        self.check(unsafe { nfs_open(self.ctx, p.as_ptr(), flags, &mut fh) })?;
        Ok(fh)
    }

    fn close(&self, fh: *mut NfsFh) {
        // SAFETY: fh came from nfs_open/nfs_create on this context and is
        // closed once.
        unsafe { nfs_close(self.ctx, fh) };
    }

    /// Reads a whole file in `chunk`-byte READs; returns the bytes.
    pub fn read_file(&self, path: &str, chunk: usize) -> Result<Vec<u8>, String> {
        let fh = self.open(path, libc_flags::O_RDONLY)?;
        let mut out = Vec::new();
        let mut buf = vec![0u8; chunk];
        let res = loop {
            // SAFETY: buf has chunk writable bytes; fh is open.
            let n = unsafe {
                nfs_pread(
                    self.ctx,
                    fh,
                    out.len() as u64,
                    chunk as u64,
                    buf.as_mut_ptr().cast(),
                )
            };
            match self.check(n) {
                Ok(0) => break Ok(out),
                Ok(n) => out.extend_from_slice(&buf[..n as usize]),
                Err(e) => break Err(e),
            }
        };
        self.close(fh);
        res
    }

    /// Reads a file in `chunk`-byte READs, counting bytes only.
    pub fn read_count(&self, path: &str, chunk: usize) -> Result<u64, String> {
        let fh = self.open(path, libc_flags::O_RDONLY)?;
        let mut buf = vec![0u8; chunk];
        let mut total = 0u64;
        let res = loop {
            // SAFETY: buf has chunk writable bytes; fh is open.
            let n =
                unsafe { nfs_pread(self.ctx, fh, total, chunk as u64, buf.as_mut_ptr().cast()) };
            match self.check(n) {
                Ok(0) => break Ok(total),
                Ok(n) => total += n as u64,
                Err(e) => break Err(e),
            }
        };
        self.close(fh);
        res
    }

    /// Creates (or truncates) `path` and writes `data` in `chunk`-byte WRITEs.
    pub fn write_file(&self, path: &str, data: &[u8], chunk: usize) -> Result<(), String> {
        let mut fh = ptr::null_mut();
        let p = cstr(path);
        let flags = libc_flags::O_WRONLY | libc_flags::O_CREAT | libc_flags::O_TRUNC;
        // SAFETY: ctx live, p NUL-terminated, fh a valid out pointer.
        self.check(unsafe { nfs_create(self.ctx, p.as_ptr(), flags, 0o644, &mut fh) })?;
        let mut off = 0usize;
        let res = loop {
            if off >= data.len() {
                break Ok(());
            }
            let n = chunk.min(data.len() - off);
            // SAFETY: data[off..off+n] is readable; fh is open.
            let rc = unsafe {
                nfs_pwrite(
                    self.ctx,
                    fh,
                    off as u64,
                    n as u64,
                    data[off..].as_ptr().cast(),
                )
            };
            match self.check(rc) {
                Ok(0) => break Err("short write".into()),
                Ok(w) => off += w as usize,
                Err(e) => break Err(e),
            }
        };
        self.close(fh);
        res
    }

    /// Names in a directory (without `.` and `..`).
    pub fn list(&self, path: &str) -> Result<Vec<String>, String> {
        let mut dir = ptr::null_mut();
        let p = cstr(path);
        // SAFETY: ctx live, p NUL-terminated, dir a valid out pointer.
        self.check(unsafe { nfs_opendir(self.ctx, p.as_ptr(), &mut dir) })?;
        let mut names = Vec::new();
        loop {
            // SAFETY: dir is open; entries live until closedir.
            let ent = unsafe { nfs_readdir(self.ctx, dir) };
            if ent.is_null() {
                break;
            }
            // SAFETY: ent is a valid dirent with a NUL-terminated name.
            let name = unsafe { CStr::from_ptr((*ent).name) }
                .to_string_lossy()
                .into_owned();
            if name != "." && name != ".." {
                names.push(name);
            }
        }
        // SAFETY: dir came from nfs_opendir and is closed once.
        unsafe { nfs_closedir(self.ctx, dir) };
        Ok(names)
    }

    /// mkdir.
    pub fn mkdir(&self, path: &str) -> Result<(), String> {
        let p = cstr(path);
        // SAFETY: ctx live, p NUL-terminated.
        self.check(unsafe { nfs_mkdir(self.ctx, p.as_ptr()) })
            .map(drop)
    }

    /// unlink.
    pub fn unlink(&self, path: &str) -> Result<(), String> {
        let p = cstr(path);
        // SAFETY: ctx live, p NUL-terminated.
        self.check(unsafe { nfs_unlink(self.ctx, p.as_ptr()) })
            .map(drop)
    }

    /// readlink.
    pub fn readlink(&self, path: &str) -> Result<String, String> {
        let p = cstr(path);
        let mut buf = vec![0u8; 4097];
        // SAFETY: buf has 4096 writable bytes plus room for NUL.
        self.check(unsafe { nfs_readlink(self.ctx, p.as_ptr(), buf.as_mut_ptr().cast(), 4096) })?;
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        Ok(String::from_utf8_lossy(&buf[..end]).into_owned())
    }
}

impl Drop for Nfs {
    fn drop(&mut self) {
        // SAFETY: ctx came from nfs_init_context and is destroyed once.
        unsafe { nfs_destroy_context(self.ctx) };
    }
}

mod libc_flags {
    use std::ffi::c_int;
    pub const O_RDONLY: c_int = 0;
    pub const O_WRONLY: c_int = 1;
    pub const O_CREAT: c_int = 0o100;
    pub const O_TRUNC: c_int = 0o1000;
}
