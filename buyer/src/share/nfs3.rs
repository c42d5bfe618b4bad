//! NFSv3 procedures (RFC 1813 section 3): argument decoding with bounds,
//! the call into the export, and result encoding.

use rustix::fs::{FileType, Stat};

use super::fs::{time_of, CreateHow, Export, SetAttr, SetTime, MAX_LINK};
use super::service::{Outcome, ProcError, ShareService};
use super::status::NfsStat;
use super::xdr::{XdrReader, XdrWriter};

/// Largest READ or WRITE payload (advertised as rtmax/wtmax in FSINFO).
pub const MAX_IO: u32 = 1 << 20;
/// Largest READDIR/READDIRPLUS reply produced, whatever the client asks.
pub const MAX_DIR_REPLY: u32 = 1 << 20;
/// Names are decoded up to this length, then checked against NAME_MAX so
/// the client gets NAMETOOLONG rather than GARBAGE_ARGS.
const NAME_DECODE_MAX: u32 = 1024;

type Res = Result<(), ProcError>;

/// Runs NFSv3 procedure `proc_`; the accepted-reply header is already in
/// `w`.
pub fn call(s: &ShareService, proc_: u32, r: &mut XdrReader<'_>, w: &mut XdrWriter) -> Outcome {
    let mark = w.len();
    // Number of "no attributes" booleans an error reply carries after the
    // status, per procedure (RFC 1813 *resfail structures).
    let (res, fail_voids) = match proc_ {
        0 => (Ok(()), 0),
        1 => (getattr(s, r, w), 0),
        2 => (setattr(s, r, w), 2),
        3 => (lookup(s, r, w), 1),
        4 => (access(s, r, w), 1),
        5 => (readlink(s, r, w), 1),
        6 => (read(s, r, w), 1),
        7 => (write(s, r, w), 2),
        8 => (create(s, r, w), 2),
        9 => (mkdir(s, r, w), 2),
        10 => (symlink(s, r, w), 2),
        11 => (Err(NfsStat::NotSupp.into()), 2),
        12 => (remove(s, r, w, false), 2),
        13 => (remove(s, r, w, true), 2),
        14 => (rename(s, r, w), 4),
        15 => (link(s, r, w), 3),
        16 => (readdir(s, r, w, false), 1),
        17 => (readdir(s, r, w, true), 1),
        18 => (fsstat(s, r, w), 1),
        19 => (fsinfo(s, r, w), 1),
        20 => (pathconf(s, r, w), 1),
        21 => (commit(s, r, w), 2),
        _ => return Outcome::ProcUnavail,
    };
    match res {
        Ok(()) => Outcome::Done,
        Err(ProcError::Garbage(_)) => Outcome::Garbage,
        Err(ProcError::Nfs(stat)) => {
            w.buf.truncate(mark);
            w.u32(stat as u32);
            for _ in 0..fail_voids {
                w.bool(false);
            }
            Outcome::Done
        }
    }
}

fn ftype(st: &Stat) -> u32 {
    match FileType::from_raw_mode(st.st_mode) {
        FileType::RegularFile => 1,
        FileType::Directory => 2,
        FileType::BlockDevice => 3,
        FileType::CharacterDevice => 4,
        FileType::Symlink => 5,
        FileType::Socket => 6,
        FileType::Fifo => 7,
        FileType::Unknown => 1,
    }
}

/// Appends `fattr3` for `st` in export `e`.
#[allow(clippy::unnecessary_cast)] // stat field widths differ between targets
fn fattr(w: &mut XdrWriter, e: &Export, st: &Stat) {
    w.u32(ftype(st));
    w.u32(st.st_mode as u32 & 0o7777);
    w.u32(u32::try_from(st.st_nlink as u64).unwrap_or(u32::MAX));
    w.u32(st.st_uid as u32);
    w.u32(st.st_gid as u32);
    w.u64(st.st_size as u64);
    w.u64((st.st_blocks as u64).saturating_mul(512));
    let rdev = st.st_rdev as u64;
    w.u32(rustix::fs::major(rdev as _));
    w.u32(rustix::fs::minor(rdev as _));
    w.u64(u64::from(e.id) + 1);
    w.u64(st.st_ino as u64);
    for (s, n) in [
        time_of(st.st_atime, st.st_atime_nsec),
        time_of(st.st_mtime, st.st_mtime_nsec),
        time_of(st.st_ctime, st.st_ctime_nsec),
    ] {
        w.u32(s);
        w.u32(n);
    }
}

fn post_op_attr(w: &mut XdrWriter, e: &Export, st: Option<&Stat>) {
    match st {
        Some(st) => {
            w.bool(true);
            fattr(w, e, st);
        }
        None => w.bool(false),
    }
}

#[allow(clippy::unnecessary_cast)]
fn wcc(w: &mut XdrWriter, e: &Export, pre: Option<&Stat>, post: Option<&Stat>) {
    match pre {
        Some(st) => {
            w.bool(true);
            w.u64(st.st_size as u64);
            let (s, n) = time_of(st.st_mtime, st.st_mtime_nsec);
            w.u32(s);
            w.u32(n);
            let (s, n) = time_of(st.st_ctime, st.st_ctime_nsec);
            w.u32(s);
            w.u32(n);
        }
        None => w.bool(false),
    }
    post_op_attr(w, e, post);
}

fn post_op_fh(w: &mut XdrWriter, s: &ShareService, e: &Export, ino: u64) {
    w.bool(true);
    w.opaque(&s.handle_bytes(e, ino));
}

fn name<'a>(r: &mut XdrReader<'a>) -> Result<&'a [u8], ProcError> {
    Ok(r.opaque(NAME_DECODE_MAX)?)
}

fn set_time(r: &mut XdrReader<'_>) -> Result<SetTime, ProcError> {
    Ok(match r.u32()? {
        0 => SetTime::Keep,
        1 => SetTime::Now,
        2 => SetTime::At(r.u32()?, r.u32()?),
        value => {
            return Err(super::xdr::XdrError::BadValue {
                what: "time_how",
                value,
            }
            .into())
        }
    })
}

fn sattr(r: &mut XdrReader<'_>) -> Result<SetAttr, ProcError> {
    Ok(SetAttr {
        mode: if r.bool()? { Some(r.u32()?) } else { None },
        uid: if r.bool()? { Some(r.u32()?) } else { None },
        gid: if r.bool()? { Some(r.u32()?) } else { None },
        size: if r.bool()? { Some(r.u64()?) } else { None },
        atime: set_time(r)?,
        mtime: set_time(r)?,
    })
}

fn getattr(s: &ShareService, r: &mut XdrReader<'_>, w: &mut XdrWriter) -> Res {
    let (e, ino) = s.handle(r)?;
    let st = e.getattr(ino)?;
    w.u32(0);
    fattr(w, e, &st);
    Ok(())
}

fn setattr(s: &ShareService, r: &mut XdrReader<'_>, w: &mut XdrWriter) -> Res {
    let (e, ino) = s.handle(r)?;
    let sa = sattr(r)?;
    let guard = if r.bool()? {
        Some((r.u32()?, r.u32()?))
    } else {
        None
    };
    let (pre, post) = e.setattr(ino, &sa, guard)?;
    w.u32(0);
    wcc(w, e, Some(&pre), Some(&post));
    Ok(())
}

fn lookup(s: &ShareService, r: &mut XdrReader<'_>, w: &mut XdrWriter) -> Res {
    let (e, dir) = s.handle(r)?;
    let n = name(r)?;
    let st = e.lookup(dir, n)?;
    let dir_st = e.getattr(dir).ok();
    w.u32(0);
    w.opaque(&s.handle_bytes(e, super::fs::ino_of(&st)));
    post_op_attr(w, e, Some(&st));
    post_op_attr(w, e, dir_st.as_ref());
    Ok(())
}

fn access(s: &ShareService, r: &mut XdrReader<'_>, w: &mut XdrWriter) -> Res {
    const MODIFY_EXTEND_DELETE: u32 = 0x04 | 0x08 | 0x10;
    const EXECUTE: u32 = 0x20;
    let (e, ino) = s.handle(r)?;
    let asked = r.u32()?;
    let st = e.getattr(ino)?;
    let mut granted = asked & 0x3f;
    if !e.writable {
        granted &= !MODIFY_EXTEND_DELETE;
    }
    if FileType::from_raw_mode(st.st_mode) != FileType::Directory && st.st_mode & 0o111 == 0 {
        granted &= !EXECUTE;
    }
    w.u32(0);
    post_op_attr(w, e, Some(&st));
    w.u32(granted);
    Ok(())
}

fn readlink(s: &ShareService, r: &mut XdrReader<'_>, w: &mut XdrWriter) -> Res {
    let (e, ino) = s.handle(r)?;
    let (target, st) = e.readlink(ino)?;
    w.u32(0);
    post_op_attr(w, e, Some(&st));
    w.opaque(&target[..target.len().min(MAX_LINK as usize)]);
    Ok(())
}

fn read(s: &ShareService, r: &mut XdrReader<'_>, w: &mut XdrWriter) -> Res {
    let (e, ino) = s.handle(r)?;
    let offset = r.u64()?;
    let count = r.u32()?.min(MAX_IO) as usize;
    // Reserve status, attributes, count, eof and the opaque length, read
    // the data straight into the reply, then fill the reserved words.
    let head = w.len();
    let fixed = 4 + 4 + 84 + 4 + 4 + 4;
    w.buf.resize(head + fixed, 0);
    let (n, eof, st) = e.read(ino, offset, count, &mut w.buf)?;
    let mut h = XdrWriter::with_capacity(fixed);
    h.u32(0);
    post_op_attr(&mut h, e, Some(&st));
    h.u32(n as u32);
    h.bool(eof);
    h.u32(n as u32);
    w.buf[head..head + fixed].copy_from_slice(&h.buf);
    w.buf.extend_from_slice(&[0u8; 3][..(4 - n % 4) % 4]);
    Ok(())
}

fn write(s: &ShareService, r: &mut XdrReader<'_>, w: &mut XdrWriter) -> Res {
    let (e, ino) = s.handle(r)?;
    let offset = r.u64()?;
    let _count = r.u32()?;
    let stable = r.u32()?;
    let data = r.opaque(MAX_IO)?;
    let (pre, post) = e.write(ino, offset, data, stable != 0)?;
    w.u32(0);
    wcc(w, e, Some(&pre), Some(&post));
    w.u32(data.len() as u32);
    w.u32(if stable == 0 { 0 } else { 2 });
    w.fixed(&s.write_verf);
    Ok(())
}

fn new_object(s: &ShareService, w: &mut XdrWriter, e: &Export, dir: u64, st: &Stat) {
    let dir_st = e.getattr(dir).ok();
    w.u32(0);
    post_op_fh(w, s, e, super::fs::ino_of(st));
    post_op_attr(w, e, Some(st));
    wcc(w, e, None, dir_st.as_ref());
}

fn create(s: &ShareService, r: &mut XdrReader<'_>, w: &mut XdrWriter) -> Res {
    let (e, dir) = s.handle(r)?;
    let n = name(r)?;
    let (how, sa) = match r.u32()? {
        0 => (CreateHow::Unchecked, sattr(r)?),
        1 => (CreateHow::Guarded, sattr(r)?),
        2 => {
            let v = r.fixed(8)?;
            let mut verf = [0u8; 8];
            verf.copy_from_slice(v);
            (CreateHow::Exclusive(verf), SetAttr::default())
        }
        value => {
            return Err(super::xdr::XdrError::BadValue {
                what: "createmode3",
                value,
            }
            .into())
        }
    };
    let st = e.create(dir, n, how, &sa)?;
    new_object(s, w, e, dir, &st);
    Ok(())
}

fn mkdir(s: &ShareService, r: &mut XdrReader<'_>, w: &mut XdrWriter) -> Res {
    let (e, dir) = s.handle(r)?;
    let n = name(r)?;
    let sa = sattr(r)?;
    let st = e.mkdir(dir, n, &sa)?;
    new_object(s, w, e, dir, &st);
    Ok(())
}

fn symlink(s: &ShareService, r: &mut XdrReader<'_>, w: &mut XdrWriter) -> Res {
    let (e, dir) = s.handle(r)?;
    let n = name(r)?;
    let _sa = sattr(r)?;
    let target = r.opaque(MAX_LINK)?;
    let st = e.symlink(dir, n, target)?;
    new_object(s, w, e, dir, &st);
    Ok(())
}

fn remove(s: &ShareService, r: &mut XdrReader<'_>, w: &mut XdrWriter, dir_only: bool) -> Res {
    let (e, dir) = s.handle(r)?;
    let n = name(r)?;
    e.remove(dir, n, dir_only)?;
    let dir_st = e.getattr(dir).ok();
    w.u32(0);
    wcc(w, e, None, dir_st.as_ref());
    Ok(())
}

fn rename(s: &ShareService, r: &mut XdrReader<'_>, w: &mut XdrWriter) -> Res {
    let (e, from_dir) = s.handle(r)?;
    let from = name(r)?;
    let (e2, to_dir) = s.handle(r)?;
    let to = name(r)?;
    if e.id != e2.id {
        return Err(NfsStat::XDev.into());
    }
    e.rename(from_dir, from, to_dir, to)?;
    let (a, b) = (e.getattr(from_dir).ok(), e.getattr(to_dir).ok());
    w.u32(0);
    wcc(w, e, None, a.as_ref());
    wcc(w, e, None, b.as_ref());
    Ok(())
}

fn link(s: &ShareService, r: &mut XdrReader<'_>, w: &mut XdrWriter) -> Res {
    let (e, ino) = s.handle(r)?;
    let (e2, dir) = s.handle(r)?;
    let n = name(r)?;
    if e.id != e2.id {
        return Err(NfsStat::XDev.into());
    }
    let st = e.link(ino, dir, n)?;
    e.remember(dir, n, ino)?;
    let dir_st = e.getattr(dir).ok();
    w.u32(0);
    post_op_attr(w, e, Some(&st));
    wcc(w, e, None, dir_st.as_ref());
    Ok(())
}

fn readdir(s: &ShareService, r: &mut XdrReader<'_>, w: &mut XdrWriter, plus: bool) -> Res {
    let (e, dir) = s.handle(r)?;
    let cookie = r.u64()?;
    let _verf = r.fixed(8)?;
    let maxcount = if plus {
        let _dircount = r.u32()?;
        r.u32()?
    } else {
        r.u32()?
    }
    .min(MAX_DIR_REPLY) as usize;
    let head = w.len();
    // status + dir attributes + verifier, filled in at the end.
    let fixed = 4 + 4 + 84 + 8;
    w.buf.resize(head + fixed, 0);
    // Room kept for the final "no more entries" and eof words.
    let limit = head + maxcount.saturating_sub(8 + 24);
    let mut count = 0usize;
    let (dir_st, eof) = e.readdir(dir, cookie, |item, dfd| {
        let entry_start = w.len();
        w.bool(true);
        w.u64(item.ino);
        w.opaque(item.name);
        w.u64(item.cookie);
        if plus {
            match e.entry_attr(dir, dfd, item.name) {
                Some(st) => {
                    post_op_attr(w, e, Some(&st));
                    post_op_fh(w, s, e, super::fs::ino_of(&st));
                }
                None => {
                    w.bool(false);
                    w.bool(false);
                }
            }
        }
        if w.len() > limit {
            w.buf.truncate(entry_start);
            return Ok(false);
        }
        count += 1;
        Ok(true)
    })?;
    if count == 0 && !eof {
        return Err(NfsStat::TooSmall.into());
    }
    w.bool(false);
    w.bool(eof);
    let mut h = XdrWriter::with_capacity(fixed);
    h.u32(0);
    post_op_attr(&mut h, e, Some(&dir_st));
    h.fixed(&[0u8; 8]);
    w.buf[head..head + fixed].copy_from_slice(&h.buf);
    Ok(())
}

fn fsstat(s: &ShareService, r: &mut XdrReader<'_>, w: &mut XdrWriter) -> Res {
    let (e, ino) = s.handle(r)?;
    let st = e.getattr(ino)?;
    let v = e.statvfs()?;
    w.u32(0);
    post_op_attr(w, e, Some(&st));
    let frsize = v.f_frsize.max(1);
    w.u64(v.f_blocks.saturating_mul(frsize));
    w.u64(v.f_bfree.saturating_mul(frsize));
    w.u64(v.f_bavail.saturating_mul(frsize));
    w.u64(v.f_files);
    w.u64(v.f_ffree);
    w.u64(v.f_favail);
    w.u32(0);
    Ok(())
}

fn fsinfo(s: &ShareService, r: &mut XdrReader<'_>, w: &mut XdrWriter) -> Res {
    let (e, ino) = s.handle(r)?;
    let st = e.getattr(ino)?;
    w.u32(0);
    post_op_attr(w, e, Some(&st));
    for v in [MAX_IO, MAX_IO, 4096, MAX_IO, MAX_IO, 4096, 64 * 1024] {
        w.u32(v);
    }
    w.u64(i64::MAX as u64);
    w.u32(0);
    w.u32(1);
    // FSF3_LINK | FSF3_SYMLINK | FSF3_HOMOGENEOUS | FSF3_CANSETTIME
    w.u32(0x01 | 0x02 | 0x08 | 0x10);
    Ok(())
}

fn pathconf(s: &ShareService, r: &mut XdrReader<'_>, w: &mut XdrWriter) -> Res {
    let (e, ino) = s.handle(r)?;
    let st = e.getattr(ino)?;
    w.u32(0);
    post_op_attr(w, e, Some(&st));
    w.u32(32_000);
    w.u32(super::fs::MAX_NAME);
    w.bool(true); // no_trunc
    w.bool(true); // chown_restricted
    w.bool(false); // case_insensitive
    w.bool(true); // case_preserving
    Ok(())
}

fn commit(s: &ShareService, r: &mut XdrReader<'_>, w: &mut XdrWriter) -> Res {
    let (e, ino) = s.handle(r)?;
    let _offset = r.u64()?;
    let _count = r.u32()?;
    let st = e.commit(ino)?;
    w.u32(0);
    wcc(w, e, None, Some(&st));
    w.fixed(&s.write_verf);
    Ok(())
}
