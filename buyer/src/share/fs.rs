//! One exported directory on the host, and every filesystem operation a
//! client may ask of it, confined beneath the export's root.
//!
//! Confinement: the root is held as an `O_PATH` descriptor. A handle names
//! an inode; the server remembers for each inode it handed out the
//! (parent inode, name) it was found under, rebuilds a relative path and
//! opens it with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
//! RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV)`, then checks the inode number
//! of what it opened. Symlinks are never followed by the server (the client
//! reads them with READLINK and resolves them on its own side); names from
//! clients are single components, never `/`, `.` or `..`. Where `openat2`
//! is missing (Linux < 5.6) the same path is walked one `O_NOFOLLOW`
//! component at a time.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustix::fd::{AsFd, OwnedFd};
use rustix::fs::{self, AtFlags, FileType, Mode, OFlags, ResolveFlags, Stat, StatVfs};
use rustix::io::Errno;
use thiserror::Error;

use super::spec::Share;
use super::status::NfsStat;

/// Longest file name accepted from a client (NFSv3 `filename3`, like NAME_MAX).
pub const MAX_NAME: u32 = 255;
/// Longest symlink target accepted from a client (PATH_MAX).
pub const MAX_LINK: u32 = 4096;
/// Deepest directory nesting the server tracks below an export root.
const MAX_DEPTH: usize = 1024;
/// Most inodes remembered per export (about 100 MiB at worst).
const MAX_NODES: usize = 1 << 20;
/// Open files kept per export for READ/WRITE/COMMIT. Reopening per call
/// costs a path walk, and on ext4 closing a file that was truncated starts
/// writeback of its dirty pages (`auto_da_alloc`), which halved sequential
/// WRITE throughput when every WRITE closed its descriptor.
const FD_CACHE: usize = 64;
/// Permission bits a guest may set: never set-user-id or set-group-id,
/// so a guest cannot plant a privileged program on the buyer's machine.
const MODE_MASK: u32 = 0o1777;
/// How long a cached descriptor is used before the path is resolved again.
const FD_TTL: Duration = Duration::from_secs(2);

/// Why an export could not be opened at start.
#[derive(Debug, Error)]
pub enum ExportError {
    /// The host directory could not be opened.
    #[error("cannot open share directory {path}: {source}")]
    OpenRoot {
        /// The directory.
        path: PathBuf,
        /// The error from the host.
        source: std::io::Error,
    },
}

#[derive(Debug)]
struct Node {
    parent: u64,
    name: Box<[u8]>,
}

/// How CREATE treats an existing file (RFC 1813 `createmode3`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreateHow {
    /// Open the existing file, as `open(O_CREAT)`.
    Unchecked,
    /// Fail with EXIST if the name exists.
    Guarded,
    /// Idempotent exclusive create keyed by the client's verifier.
    Exclusive([u8; 8]),
}

/// A time to set (RFC 1813 `set_atime`/`set_mtime`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetTime {
    /// Leave unchanged.
    Keep,
    /// The server's current time.
    Now,
    /// A client-given time (seconds, nanoseconds).
    At(u32, u32),
}

/// Attributes a client asked to change (RFC 1813 `sattr3`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SetAttr {
    /// New permission bits.
    pub mode: Option<u32>,
    /// New owner.
    pub uid: Option<u32>,
    /// New group.
    pub gid: Option<u32>,
    /// New size (truncate or extend).
    pub size: Option<u64>,
    /// New access time.
    pub atime: SetTime,
    /// New modification time.
    pub mtime: SetTime,
}

impl Default for SetAttr {
    fn default() -> Self {
        Self {
            mode: None,
            uid: None,
            gid: None,
            size: None,
            atime: SetTime::Keep,
            mtime: SetTime::Keep,
        }
    }
}

/// One directory entry as READDIR sees it.
#[derive(Debug)]
pub struct DirItem<'a> {
    /// Entry name.
    pub name: &'a [u8],
    /// Its inode number.
    pub ino: u64,
    /// Cookie that resumes after this entry.
    pub cookie: u64,
}

/// An exported directory and the inodes handed out from it.
#[derive(Debug)]
pub struct Export {
    /// Index in the server's share list; part of every handle.
    pub id: u32,
    /// Path the guest mounts, e.g. `/src`.
    pub guest_path: String,
    /// Whether write operations are allowed.
    pub writable: bool,
    root: OwnedFd,
    root_ino: u64,
    dev: u64,
    nodes: Mutex<HashMap<u64, Node>>,
    fds: Mutex<FdCache>,
}

/// Open descriptors by (inode, opened for writing), with their last use.
type FdCache = HashMap<(u64, bool), (Arc<OwnedFd>, Instant)>;

/// Inode number of a stat result.
#[allow(clippy::unnecessary_cast)] // field widths differ between targets
pub fn ino_of(st: &Stat) -> u64 {
    st.st_ino as u64
}

#[allow(clippy::unnecessary_cast)]
fn dev_of(st: &Stat) -> u64 {
    st.st_dev as u64
}

fn name_os(name: &[u8]) -> &OsStr {
    OsStr::from_bytes(name)
}

/// Checks a client-supplied name for an entry to create, remove or rename.
pub fn check_new_name(name: &[u8]) -> Result<&OsStr, NfsStat> {
    match name {
        b"" => Err(NfsStat::NoEnt),
        b"." | b".." => Err(NfsStat::Exist),
        _ if name.len() > MAX_NAME as usize => Err(NfsStat::NameTooLong),
        _ if name.contains(&b'/') || name.contains(&0) => Err(NfsStat::Inval),
        _ => Ok(name_os(name)),
    }
}

fn map_resolve(e: Errno) -> NfsStat {
    match e {
        // The remembered path no longer leads to this inode.
        Errno::NOENT | Errno::NOTDIR | Errno::XDEV => NfsStat::Stale,
        other => other.into(),
    }
}

impl Export {
    /// Opens the share's host directory as export number `id`.
    pub fn open(id: u32, share: &Share) -> Result<Self, ExportError> {
        let err = |source: Errno| ExportError::OpenRoot {
            path: share.host_dir.clone(),
            source: source.into(),
        };
        let root = fs::open(
            &share.host_dir,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(err)?;
        let st = fs::fstat(&root).map_err(err)?;
        Ok(Self {
            id,
            guest_path: share.guest_path.clone(),
            writable: share.writable,
            root,
            root_ino: ino_of(&st),
            dev: dev_of(&st),
            nodes: Mutex::new(HashMap::new()),
            fds: Mutex::new(HashMap::new()),
        })
    }

    /// Inode number of the export root.
    pub fn root_ino(&self) -> u64 {
        self.root_ino
    }

    fn nodes(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Node>> {
        // A panic while holding the lock leaves a consistent map (every
        // update is a single insert or remove), so poisoning is ignored.
        self.nodes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records that `ino` was found as `name` in directory `parent`, so its
    /// handle can be resolved later.
    pub fn remember(&self, parent: u64, name: &[u8], ino: u64) -> Result<(), NfsStat> {
        if ino == self.root_ino {
            return Ok(());
        }
        let mut nodes = self.nodes();
        if nodes.len() >= MAX_NODES && !nodes.contains_key(&ino) {
            return Err(NfsStat::ServerFault);
        }
        nodes.insert(
            ino,
            Node {
                parent,
                name: name.into(),
            },
        );
        Ok(())
    }

    fn forget(&self, parent: u64, name: &[u8], ino: u64) {
        let mut nodes = self.nodes();
        if nodes
            .get(&ino)
            .is_some_and(|n| n.parent == parent && &*n.name == name)
        {
            nodes.remove(&ino);
        }
    }

    /// The parent directory of `ino` (the root is its own parent).
    pub fn parent_of(&self, ino: u64) -> Result<u64, NfsStat> {
        if ino == self.root_ino {
            return Ok(ino);
        }
        self.nodes()
            .get(&ino)
            .map(|n| n.parent)
            .ok_or(NfsStat::Stale)
    }

    fn path_of(&self, ino: u64) -> Result<Vec<u8>, NfsStat> {
        let nodes = self.nodes();
        let mut parts: Vec<&[u8]> = Vec::new();
        let mut cur = ino;
        while cur != self.root_ino {
            if parts.len() >= MAX_DEPTH {
                return Err(NfsStat::Stale);
            }
            let n = nodes.get(&cur).ok_or(NfsStat::Stale)?;
            parts.push(&n.name);
            cur = n.parent;
        }
        if parts.is_empty() {
            return Ok(b".".to_vec());
        }
        let mut path = Vec::with_capacity(parts.iter().map(|p| p.len() + 1).sum());
        for (i, p) in parts.iter().rev().enumerate() {
            if i > 0 {
                path.push(b'/');
            }
            path.extend_from_slice(p);
        }
        Ok(path)
    }

    /// Opens inode `ino` beneath the root with `flags` (never following a
    /// symlink) and returns it with its attributes.
    pub fn open_ino(&self, ino: u64, flags: OFlags) -> Result<(OwnedFd, Stat), NfsStat> {
        let path = self.path_of(ino)?;
        let flags = flags | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let resolve = ResolveFlags::BENEATH
            | ResolveFlags::NO_SYMLINKS
            | ResolveFlags::NO_MAGICLINKS
            | ResolveFlags::NO_XDEV;
        let fd = match fs::openat2(&self.root, name_os(&path), flags, Mode::empty(), resolve) {
            Err(Errno::NOSYS) => self.walk(&path, flags),
            other => other,
        }
        .map_err(map_resolve)?;
        let st = fs::fstat(&fd)?;
        if ino_of(&st) != ino || dev_of(&st) != self.dev {
            return Err(NfsStat::Stale);
        }
        Ok((fd, st))
    }

    /// The fallback for kernels without `openat2`: one component at a time,
    /// each opened with `O_NOFOLLOW` relative to the previous one. Names in
    /// the path are never `.`, `..` or contain `/`, so this stays beneath
    /// the root.
    fn walk(&self, path: &[u8], flags: OFlags) -> Result<OwnedFd, Errno> {
        if path == b"." {
            return fs::openat(&self.root, ".", flags, Mode::empty());
        }
        let mut parts = path.split(|&b| b == b'/').peekable();
        let mut cur: Option<OwnedFd> = None;
        while let Some(part) = parts.next() {
            let dir = cur.as_ref().map_or(self.root.as_fd(), |f| f.as_fd());
            let fl = if parts.peek().is_some() {
                OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
            } else {
                flags
            };
            cur = Some(fs::openat(dir, name_os(part), fl, Mode::empty())?);
        }
        cur.ok_or(Errno::NOENT)
    }

    fn dir(&self, ino: u64) -> Result<(OwnedFd, Stat), NfsStat> {
        self.open_ino(ino, OFlags::PATH | OFlags::DIRECTORY)
    }

    /// An open descriptor for reading or writing `ino`, from the cache when
    /// one was opened in the last [`FD_TTL`].
    fn open_io(&self, ino: u64, write: bool) -> Result<(Arc<OwnedFd>, Stat), NfsStat> {
        let key = (ino, write);
        let cached = {
            let mut fds = self.fds.lock().unwrap_or_else(|p| p.into_inner());
            match fds.get_mut(&key) {
                Some((fd, used)) if used.elapsed() < FD_TTL => {
                    *used = Instant::now();
                    Some(fd.clone())
                }
                Some(_) => {
                    fds.remove(&key);
                    None
                }
                None => None,
            }
        };
        if let Some(fd) = cached {
            let st = fs::fstat(&*fd)?;
            if st.st_nlink > 0 {
                return Ok((fd, st));
            }
            self.drop_fds(ino);
        }
        let (fd, st) = self.open_ino(
            ino,
            if write {
                OFlags::WRONLY
            } else {
                OFlags::RDONLY
            },
        )?;
        let fd = Arc::new(fd);
        let mut fds = self.fds.lock().unwrap_or_else(|p| p.into_inner());
        if fds.len() >= FD_CACHE {
            if let Some(oldest) = fds
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| *k)
            {
                fds.remove(&oldest);
            }
        }
        fds.insert(key, (fd.clone(), Instant::now()));
        Ok((fd, st))
    }

    fn drop_fds(&self, ino: u64) {
        let mut fds = self.fds.lock().unwrap_or_else(|p| p.into_inner());
        fds.remove(&(ino, false));
        fds.remove(&(ino, true));
    }

    fn ensure_writable(&self) -> Result<(), NfsStat> {
        if self.writable {
            Ok(())
        } else {
            Err(NfsStat::RoFs)
        }
    }

    /// Attributes of `ino`.
    pub fn getattr(&self, ino: u64) -> Result<Stat, NfsStat> {
        self.open_ino(ino, OFlags::PATH).map(|(_, st)| st)
    }

    /// Looks `name` up in directory `dir`, remembering what it finds.
    pub fn lookup(&self, dir: u64, name: &[u8]) -> Result<Stat, NfsStat> {
        match name {
            b"." => return self.dir(dir).map(|(_, st)| st),
            b".." => {
                self.dir(dir)?;
                return self.dir(self.parent_of(dir)?).map(|(_, st)| st);
            }
            _ => {}
        }
        if name.len() > MAX_NAME as usize {
            return Err(NfsStat::NameTooLong);
        }
        if name.is_empty() || name.contains(&b'/') || name.contains(&0) {
            return Err(NfsStat::NoEnt);
        }
        let (dfd, _) = self.dir(dir)?;
        let st = fs::statat(&dfd, name_os(name), AtFlags::SYMLINK_NOFOLLOW)?;
        if dev_of(&st) != self.dev {
            // A mount point inside the share: not crossed.
            return Err(NfsStat::Acces);
        }
        self.remember(dir, name, ino_of(&st))?;
        Ok(st)
    }

    /// Changes attributes; `guard` is the ctime the client expects.
    pub fn setattr(
        &self,
        ino: u64,
        sa: &SetAttr,
        guard: Option<(u32, u32)>,
    ) -> Result<(Stat, Stat), NfsStat> {
        self.ensure_writable()?;
        let (pfd, pre) = self.open_ino(ino, OFlags::PATH)?;
        if let Some(g) = guard {
            if time_of(pre.st_ctime, pre.st_ctime_nsec) != g {
                return Err(NfsStat::NotSync);
            }
        }
        // Ownership stays with the buyer: a guest may not give files away
        // (or to root, should the buyer run as root).
        #[allow(clippy::unnecessary_cast)]
        let (uid, gid) = (pre.st_uid as u32, pre.st_gid as u32);
        if sa.uid.is_some_and(|u| u != uid) || sa.gid.is_some_and(|g| g != gid) {
            return Err(NfsStat::Perm);
        }
        let ftype = FileType::from_raw_mode(pre.st_mode);
        let wants_fd = sa.size.is_some()
            || sa.mode.is_some()
            || sa.atime != SetTime::Keep
            || sa.mtime != SetTime::Keep;
        if wants_fd && ftype != FileType::Symlink {
            let fd = if sa.size.is_some() {
                if ftype != FileType::RegularFile {
                    return Err(if ftype == FileType::Directory {
                        NfsStat::IsDir
                    } else {
                        NfsStat::Inval
                    });
                }
                self.open_ino(ino, OFlags::WRONLY)?.0
            } else {
                match self.open_ino(ino, OFlags::RDONLY) {
                    Ok((fd, _)) => fd,
                    Err(NfsStat::Acces) if ftype == FileType::RegularFile => {
                        self.open_ino(ino, OFlags::WRONLY)?.0
                    }
                    Err(e) => return Err(e),
                }
            };
            if let Some(size) = sa.size {
                fs::ftruncate(&fd, size)?;
            }
            if let Some(mode) = sa.mode {
                fs::fchmod(&fd, Mode::from_raw_mode(mode & MODE_MASK))?;
            }
            if sa.atime != SetTime::Keep || sa.mtime != SetTime::Keep {
                let ts = fs::Timestamps {
                    last_access: timespec(sa.atime),
                    last_modification: timespec(sa.mtime),
                };
                fs::futimens(&fd, &ts)?;
            }
        }
        let post = fs::fstat(&pfd)?;
        Ok((pre, post))
    }

    /// Reads up to `count` bytes at `offset` into `out` (appended); returns
    /// the bytes read, whether the end of file was reached, and attributes.
    pub fn read(
        &self,
        ino: u64,
        offset: u64,
        count: usize,
        out: &mut Vec<u8>,
    ) -> Result<(usize, bool, Stat), NfsStat> {
        let (fd, st) = self.open_io(ino, false)?;
        if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
            return Err(NfsStat::IsDir);
        }
        let start = out.len();
        out.resize(start + count, 0);
        let mut done = 0;
        while done < count {
            match rustix::io::pread(&*fd, &mut out[start + done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(Errno::INTR) => continue,
                Err(e) => {
                    out.truncate(start);
                    return Err(e.into());
                }
            }
        }
        out.truncate(start + done);
        let size = st.st_size as u64;
        Ok((done, offset + done as u64 >= size, st))
    }

    /// Writes `data` at `offset`; `sync` forces it to stable storage.
    pub fn write(
        &self,
        ino: u64,
        offset: u64,
        data: &[u8],
        sync: bool,
    ) -> Result<(Stat, Stat), NfsStat> {
        self.ensure_writable()?;
        let (fd, pre) = self.open_io(ino, true)?;
        let mut done = 0;
        while done < data.len() {
            match rustix::io::pwrite(&*fd, &data[done..], offset + done as u64) {
                Ok(0) => return Err(NfsStat::NoSpc),
                Ok(n) => done += n,
                Err(Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        if sync {
            fs::fdatasync(&*fd)?;
        }
        Ok((pre, fs::fstat(&*fd)?))
    }

    /// Flushes a file to stable storage (COMMIT).
    pub fn commit(&self, ino: u64) -> Result<Stat, NfsStat> {
        let (fd, st) = match self.writable {
            true => self.open_io(ino, true)?,
            false => self.open_io(ino, false)?,
        };
        fs::fsync(&*fd)?;
        Ok(st)
    }

    /// Creates a regular file `name` in `dir`.
    pub fn create(
        &self,
        dir: u64,
        name: &[u8],
        how: CreateHow,
        sa: &SetAttr,
    ) -> Result<Stat, NfsStat> {
        self.ensure_writable()?;
        let os = check_new_name(name)?;
        let (dfd, _) = self.dir(dir)?;
        let mut flags = OFlags::CREATE | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        if how != CreateHow::Unchecked {
            flags |= OFlags::EXCL;
        }
        let mode = Mode::from_raw_mode(sa.mode.unwrap_or(0o644) & MODE_MASK);
        let fd = match fs::openat(&dfd, os, flags, mode) {
            Err(Errno::EXIST) => {
                if let CreateHow::Exclusive(verf) = how {
                    // A retransmitted exclusive create: same verifier in mtime.
                    let st = fs::statat(&dfd, os, AtFlags::SYMLINK_NOFOLLOW)?;
                    if time_of(st.st_mtime, st.st_mtime_nsec) == verf_time(verf) {
                        self.remember(dir, name, ino_of(&st))?;
                        return Ok(st);
                    }
                }
                return Err(NfsStat::Exist);
            }
            other => other?,
        };
        match how {
            CreateHow::Exclusive(verf) => {
                let (s, n) = verf_time(verf);
                let t = fs::Timespec {
                    tv_sec: s.into(),
                    tv_nsec: n.into(),
                };
                fs::futimens(
                    &fd,
                    &fs::Timestamps {
                        last_access: t,
                        last_modification: t,
                    },
                )?;
            }
            _ => {
                if let Some(size) = sa.size {
                    fs::ftruncate(&fd, size)?;
                }
            }
        }
        let st = fs::fstat(&fd)?;
        self.remember(dir, name, ino_of(&st))?;
        Ok(st)
    }

    /// Creates directory `name` in `dir`.
    pub fn mkdir(&self, dir: u64, name: &[u8], sa: &SetAttr) -> Result<Stat, NfsStat> {
        self.ensure_writable()?;
        let os = check_new_name(name)?;
        let (dfd, _) = self.dir(dir)?;
        fs::mkdirat(
            &dfd,
            os,
            Mode::from_raw_mode(sa.mode.unwrap_or(0o755) & MODE_MASK),
        )?;
        let st = fs::statat(&dfd, os, AtFlags::SYMLINK_NOFOLLOW)?;
        self.remember(dir, name, ino_of(&st))?;
        Ok(st)
    }

    /// Creates symlink `name` in `dir` pointing at `target` (stored as
    /// given; the server never follows it).
    pub fn symlink(&self, dir: u64, name: &[u8], target: &[u8]) -> Result<Stat, NfsStat> {
        self.ensure_writable()?;
        let os = check_new_name(name)?;
        if target.is_empty() || target.contains(&0) {
            return Err(NfsStat::Inval);
        }
        let (dfd, _) = self.dir(dir)?;
        fs::symlinkat(name_os(target), &dfd, os)?;
        let st = fs::statat(&dfd, os, AtFlags::SYMLINK_NOFOLLOW)?;
        self.remember(dir, name, ino_of(&st))?;
        Ok(st)
    }

    /// Reads the target of symlink `ino`.
    pub fn readlink(&self, ino: u64) -> Result<(Vec<u8>, Stat), NfsStat> {
        let (fd, st) = self.open_ino(ino, OFlags::PATH)?;
        if FileType::from_raw_mode(st.st_mode) != FileType::Symlink {
            return Err(NfsStat::Inval);
        }
        let target = fs::readlinkat(&fd, "", Vec::new())?;
        Ok((target.into_bytes(), st))
    }

    /// Removes file (or, with `dir_only`, empty directory) `name` in `dir`.
    pub fn remove(&self, dir: u64, name: &[u8], dir_only: bool) -> Result<(), NfsStat> {
        self.ensure_writable()?;
        let os = check_new_name(name)?;
        let (dfd, _) = self.dir(dir)?;
        let st = fs::statat(&dfd, os, AtFlags::SYMLINK_NOFOLLOW)?;
        let is_dir = FileType::from_raw_mode(st.st_mode) == FileType::Directory;
        match (dir_only, is_dir) {
            (true, false) => return Err(NfsStat::NotDir),
            (false, true) => return Err(NfsStat::IsDir),
            _ => {}
        }
        fs::unlinkat(
            &dfd,
            os,
            if dir_only {
                AtFlags::REMOVEDIR
            } else {
                AtFlags::empty()
            },
        )?;
        self.forget(dir, name, ino_of(&st));
        Ok(())
    }

    /// Renames `from_dir/from` to `to_dir/to`.
    pub fn rename(
        &self,
        from_dir: u64,
        from: &[u8],
        to_dir: u64,
        to: &[u8],
    ) -> Result<(), NfsStat> {
        self.ensure_writable()?;
        let from_os = check_new_name(from)?;
        let to_os = check_new_name(to)?;
        let (ffd, _) = self.dir(from_dir)?;
        let (tfd, _) = self.dir(to_dir)?;
        let st = fs::statat(&ffd, from_os, AtFlags::SYMLINK_NOFOLLOW)?;
        fs::renameat(&ffd, from_os, &tfd, to_os)?;
        self.remember(to_dir, to, ino_of(&st))?;
        Ok(())
    }

    /// Makes a hard link `dir/name` to `ino`.
    pub fn link(&self, ino: u64, dir: u64, name: &[u8]) -> Result<Stat, NfsStat> {
        self.ensure_writable()?;
        let os = check_new_name(name)?;
        let (fd, st) = self.open_ino(ino, OFlags::PATH)?;
        if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
            return Err(NfsStat::IsDir);
        }
        let (dfd, _) = self.dir(dir)?;
        fs::linkat(&fd, "", &dfd, os, AtFlags::EMPTY_PATH)?;
        fs::fstat(&fd).map_err(Into::into)
    }

    /// Lists directory `dir` from `cookie` (0 = start), calling `each` for
    /// every entry but `.` and `..` until it returns false. Returns the
    /// directory's attributes and whether the end was reached.
    pub fn readdir(
        &self,
        dir: u64,
        cookie: u64,
        mut each: impl FnMut(&DirItem<'_>, &OwnedFd) -> Result<bool, NfsStat>,
    ) -> Result<(Stat, bool), NfsStat> {
        let (pfd, st) = self.dir(dir)?;
        let (fd, _) = self.open_ino(dir, OFlags::RDONLY | OFlags::DIRECTORY)?;
        let mut d = fs::Dir::new(fd)?;
        if cookie != 0 {
            let pos = i64::try_from(cookie).map_err(|_| NfsStat::BadCookie)?;
            d.seek(pos).map_err(|_| NfsStat::BadCookie)?;
        }
        for entry in d {
            let entry = entry?;
            let name = entry.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            let item = DirItem {
                name,
                ino: entry.ino(),
                cookie: entry.offset() as u64,
            };
            if !each(&item, &pfd)? {
                return Ok((st, false));
            }
        }
        Ok((st, true))
    }

    /// Attributes of entry `name` of an open directory, for READDIRPLUS,
    /// remembering it so its handle resolves.
    pub fn entry_attr(&self, dir: u64, dfd: &OwnedFd, name: &[u8]) -> Option<Stat> {
        let st = fs::statat(dfd, name_os(name), AtFlags::SYMLINK_NOFOLLOW).ok()?;
        if dev_of(&st) != self.dev {
            return None;
        }
        self.remember(dir, name, ino_of(&st)).ok()?;
        Some(st)
    }

    /// Space and inode counts of the filesystem holding the export.
    pub fn statvfs(&self) -> Result<StatVfs, NfsStat> {
        fs::fstatvfs(&self.root).map_err(Into::into)
    }
}

/// An NFS time (seconds, nanoseconds) from a stat field pair.
#[allow(clippy::unnecessary_cast)]
pub fn time_of(sec: impl TryInto<i64>, nsec: impl TryInto<i64>) -> (u32, u32) {
    let s = sec.try_into().unwrap_or(0);
    let n = nsec.try_into().unwrap_or(0);
    (s as u32, n as u32)
}

fn verf_time(verf: [u8; 8]) -> (u32, u32) {
    let s = u32::from_be_bytes([verf[0], verf[1], verf[2], verf[3]]) & 0x7fff_ffff;
    let n = u32::from_be_bytes([verf[4], verf[5], verf[6], verf[7]]) % 1_000_000_000;
    (s, n)
}

fn timespec(t: SetTime) -> fs::Timespec {
    match t {
        SetTime::Keep => fs::Timespec {
            tv_sec: 0,
            tv_nsec: fs::UTIME_OMIT,
        },
        SetTime::Now => fs::Timespec {
            tv_sec: 0,
            tv_nsec: fs::UTIME_NOW,
        },
        SetTime::At(s, n) => fs::Timespec {
            tv_sec: s.into(),
            tv_nsec: n.min(999_999_999).into(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn export(dir: &std::path::Path, writable: bool) -> Export {
        let share = Share {
            host_dir: dir.into(),
            guest_path: "/x".into(),
            writable,
        };
        Export::open(0, &share).unwrap()
    }

    #[test]
    fn names_that_could_escape_are_refused() {
        assert_eq!(check_new_name(b".."), Err(NfsStat::Exist));
        assert_eq!(check_new_name(b"a/b"), Err(NfsStat::Inval));
        assert_eq!(check_new_name(&[b'a'; 256]), Err(NfsStat::NameTooLong));
        assert!(check_new_name(b"ok.txt").is_ok());
    }

    #[test]
    fn lookup_dotdot_at_root_stays_at_root() {
        let t = tempfile::tempdir().unwrap();
        let e = export(t.path(), false);
        let st = e.lookup(e.root_ino(), b"..").unwrap();
        assert_eq!(ino_of(&st), e.root_ino());
        assert_eq!(
            e.lookup(e.root_ino(), b"../etc").unwrap_err(),
            NfsStat::NoEnt
        );
    }

    #[test]
    fn symlinks_are_never_followed() {
        let t = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/etc", t.path().join("out")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", t.path().join("pw")).unwrap();
        let e = export(t.path(), false);
        let out = ino_of(&e.lookup(e.root_ino(), b"out").unwrap());
        let err = e.lookup(out, b"passwd").unwrap_err();
        assert!(matches!(err, NfsStat::Stale | NfsStat::NotDir), "{err:?}");
        let pw = ino_of(&e.lookup(e.root_ino(), b"pw").unwrap());
        assert_eq!(
            e.read(pw, 0, 10, &mut Vec::new()).unwrap_err(),
            NfsStat::Inval
        );
        assert_eq!(e.readlink(pw).unwrap().0, b"/etc/passwd");
    }

    #[test]
    fn read_only_export_refuses_writes() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("f"), b"hi").unwrap();
        let e = export(t.path(), false);
        let f = ino_of(&e.lookup(e.root_ino(), b"f").unwrap());
        assert_eq!(e.write(f, 0, b"x", false).unwrap_err(), NfsStat::RoFs);
        assert_eq!(
            e.create(
                e.root_ino(),
                b"g",
                CreateHow::Unchecked,
                &SetAttr::default()
            )
            .unwrap_err(),
            NfsStat::RoFs
        );
        assert_eq!(
            e.remove(e.root_ino(), b"f", false).unwrap_err(),
            NfsStat::RoFs
        );
    }

    #[test]
    fn handles_follow_renames_and_go_stale_on_replacement() {
        let t = tempfile::tempdir().unwrap();
        let e = export(t.path(), true);
        let root = e.root_ino();
        let d = ino_of(&e.mkdir(root, b"d", &SetAttr::default()).unwrap());
        let f = ino_of(
            &e.create(d, b"f", CreateHow::Guarded, &SetAttr::default())
                .unwrap(),
        );
        e.write(f, 0, b"hello", false).unwrap();
        e.rename(root, b"d", root, b"e").unwrap();
        let mut out = Vec::new();
        assert_eq!(e.read(f, 0, 100, &mut out).unwrap().0, 5);
        assert_eq!(out, b"hello");
        // Someone on the host swaps the directory for a symlink out.
        std::fs::rename(t.path().join("e"), t.path().join("moved")).unwrap();
        std::os::unix::fs::symlink("/etc", t.path().join("e")).unwrap();
        // The old directory handle now resolves through a symlink: refused.
        assert_eq!(e.lookup(d, b"f").unwrap_err(), NfsStat::Stale);
    }

    #[test]
    fn guests_cannot_set_setuid_bits_or_give_files_away() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let t = tempfile::tempdir().unwrap();
        let e = export(t.path(), true);
        let sa = SetAttr {
            mode: Some(0o4755),
            ..SetAttr::default()
        };
        let f = ino_of(
            &e.create(e.root_ino(), b"tool", CreateHow::Guarded, &sa)
                .unwrap(),
        );
        let meta = std::fs::metadata(t.path().join("tool")).unwrap();
        assert_eq!(
            meta.permissions().mode() & 0o7000,
            0,
            "setuid bit set by CREATE"
        );
        e.setattr(
            f,
            &SetAttr {
                mode: Some(0o6755),
                ..SetAttr::default()
            },
            None,
        )
        .unwrap();
        let meta = std::fs::metadata(t.path().join("tool")).unwrap();
        assert_eq!(
            meta.permissions().mode() & 0o7777,
            0o755,
            "setuid bit set by SETATTR"
        );
        let other = SetAttr {
            uid: Some(meta.uid() + 1),
            ..SetAttr::default()
        };
        assert_eq!(e.setattr(f, &other, None).unwrap_err(), NfsStat::Perm);
        let same = SetAttr {
            uid: Some(meta.uid()),
            ..SetAttr::default()
        };
        e.setattr(f, &same, None).unwrap();
    }

    #[test]
    fn readdir_resumes_from_cookie() {
        let t = tempfile::tempdir().unwrap();
        for i in 0..50 {
            std::fs::write(t.path().join(format!("f{i}")), b"").unwrap();
        }
        let e = export(t.path(), false);
        let mut names = Vec::new();
        let mut cookie = 0;
        loop {
            let mut n = 0;
            let (_, eof) = e
                .readdir(e.root_ino(), cookie, |item, _| {
                    if n == 7 {
                        return Ok(false);
                    }
                    n += 1;
                    names.push(item.name.to_vec());
                    cookie = item.cookie;
                    Ok(true)
                })
                .unwrap();
            if eof {
                break;
            }
        }
        names.sort();
        names.dedup();
        assert_eq!(names.len(), 50);
    }
}
