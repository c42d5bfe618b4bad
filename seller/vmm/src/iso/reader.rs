//! Bounded ISO9660 reader (ECMA-119) with Rock Ridge (`NM`) and Joliet names.
//!
//! Written here rather than taken from a crate: the ISO9660 crates on
//! crates.io neither bound what a hostile image can make them read nor handle
//! Rock Ridge continuation areas, and we only need lookup and whole-file reads.
//! Every length read from the image is checked against [`Limits`].

use std::collections::VecDeque;
use std::io::{Read, Seek, SeekFrom};

use super::IsoError;

/// ISO9660 logical sector size; the only one real images use.
pub const SECTOR_SIZE: u64 = 2048;
/// The system area (16 sectors) precedes the volume descriptors.
const FIRST_DESCRIPTOR_SECTOR: u64 = 16;
/// Stop scanning volume descriptors after this many (ECMA-119 sets no limit).
const MAX_DESCRIPTORS: u64 = 64;
/// Directory record flag bit: the entry is a directory.
const FLAG_DIRECTORY: u8 = 0x02;
/// Directory record flag bit: the file continues in the next record (a
/// file over 4 GiB is stored as several extents, ISO 9660 level 3).
const FLAG_MULTI_EXTENT: u8 = 0x80;
/// Follow at most this many Rock Ridge `CE` continuation areas per record.
const MAX_CONTINUATIONS: usize = 8;
/// Follow at most this many symbolic links in one lookup (Linux allows 40
/// in a whole path walk; a live ISO links a kernel name or two).
pub const MAX_SYMLINKS: usize = 8;

/// Bounds on what the reader will touch, so a hostile image cannot make us
/// allocate or loop without end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest directory extent read, in bytes.
    pub max_dir_bytes: u32,
    /// Deepest path looked up, in components.
    pub max_depth: usize,
    /// Most entries accepted in one directory.
    pub max_dir_entries: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_dir_bytes: 4 << 20,
            max_depth: 32,
            max_dir_entries: 16_384,
        }
    }
}

/// Which directory tree names come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameScheme {
    /// Primary volume with Rock Ridge `NM` entries (POSIX names).
    RockRidge,
    /// Joliet supplementary volume (UCS-2 names).
    Joliet,
    /// Plain ISO9660 names (`NAME.EXT;1`), version suffix removed.
    Iso9660,
}

/// A run of blocks holding part of a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    /// First logical block.
    pub lba: u32,
    /// Length in bytes.
    pub len: u32,
}

/// One entry of a directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    /// The best name available (Rock Ridge, Joliet, or plain ISO9660).
    pub name: String,
    /// Where the data is, in order: one extent, or several for a file
    /// over 4 GiB.
    pub extents: Vec<Extent>,
    /// Whether this entry is a directory.
    pub is_dir: bool,
    /// The target, if this is a Rock Ridge symbolic link.
    pub symlink: Option<String>,
}

impl DirEntry {
    /// First logical block of the data.
    pub fn lba(&self) -> u32 {
        self.extents.first().map_or(0, |e| e.lba)
    }

    /// Size in bytes, all extents together.
    pub fn size(&self) -> u64 {
        self.extents.iter().map(|e| u64::from(e.len)).sum()
    }
}

/// An opened ISO9660 image: the root directory it will use, and the source.
pub struct IsoReader<R> {
    src: R,
    len: u64,
    root: DirEntry,
    scheme: NameScheme,
    limits: Limits,
}

impl<R: Read + Seek> IsoReader<R> {
    /// Opens an image with the default [`Limits`].
    pub fn new(src: R) -> Result<Self, IsoError> {
        Self::with_limits(src, Limits::default())
    }

    /// Opens an image: reads the volume descriptors and picks a name scheme
    /// (Rock Ridge if the primary volume has it, else Joliet, else ISO9660).
    pub fn with_limits(mut src: R, limits: Limits) -> Result<Self, IsoError> {
        let len = src.seek(SeekFrom::End(0)).map_err(IsoError::Io)?;
        let mut primary_root = None;
        let mut joliet_root = None;
        let mut sector = FIRST_DESCRIPTOR_SECTOR;
        loop {
            if sector >= FIRST_DESCRIPTOR_SECTOR + MAX_DESCRIPTORS {
                return Err(IsoError::TooManyDescriptors {
                    max: MAX_DESCRIPTORS,
                });
            }
            let mut vd = [0u8; SECTOR_SIZE as usize];
            read_exact_at(&mut src, len, sector * SECTOR_SIZE, &mut vd)?;
            if &vd[1..6] != b"CD001" {
                return Err(IsoError::NotIso9660 { sector });
            }
            match vd[0] {
                1 if primary_root.is_none() => {
                    check_block_size(&vd)?;
                    primary_root = Some(parse_record(&vd[156..190])?.0);
                }
                2 if is_joliet(&vd) && joliet_root.is_none() => {
                    check_block_size(&vd)?;
                    joliet_root = Some(parse_record(&vd[156..190])?.0);
                }
                255 => break,
                _ => {}
            }
            sector += 1;
        }
        let primary = primary_root.ok_or(IsoError::NoPrimaryVolume)?;
        let mut reader = Self {
            src,
            len,
            root: primary.to_entry(String::new(), NameScheme::Iso9660),
            scheme: NameScheme::Iso9660,
            limits,
        };
        if reader.root_has_rock_ridge(&primary)? {
            reader.scheme = NameScheme::RockRidge;
        } else if let Some(j) = joliet_root {
            reader.root = j.to_entry(String::new(), NameScheme::Joliet);
            reader.scheme = NameScheme::Joliet;
        }
        Ok(reader)
    }

    /// The name scheme in use.
    pub fn scheme(&self) -> NameScheme {
        self.scheme
    }

    /// The root directory.
    pub fn root(&self) -> &DirEntry {
        &self.root
    }

    /// Rock Ridge is in use when the root's `.` record carries the SUSP `SP`
    /// indicator (SUSP 1.12 section 5.3) or an `RR`/`NM`/`PX` entry.
    fn root_has_rock_ridge(&mut self, root: &RawRecord) -> Result<bool, IsoError> {
        let size = root.size.min(SECTOR_SIZE as u32) as usize;
        let mut buf = vec![0u8; size];
        read_exact_at(
            &mut self.src,
            self.len,
            u64::from(root.lba) * SECTOR_SIZE,
            &mut buf,
        )?;
        let Ok((dot, _)) = parse_record(&buf) else {
            return Ok(false);
        };
        Ok(dot
            .system_use
            .chunks_exact(2)
            .next()
            .is_some_and(|sig| sig == b"SP")
            || susp_entries(&dot.system_use)
                .any(|(sig, _)| sig == *b"RR" || sig == *b"NM" || sig == *b"PX"))
    }

    /// Lists a directory (without `.` and `..`).
    pub fn read_dir(&mut self, dir: &DirEntry) -> Result<Vec<DirEntry>, IsoError> {
        if !dir.is_dir {
            return Err(IsoError::NotADirectory {
                name: dir.name.clone(),
            });
        }
        let size = dir.size();
        if size > u64::from(self.limits.max_dir_bytes) {
            return Err(IsoError::DirectoryTooLarge {
                size,
                max: self.limits.max_dir_bytes,
            });
        }
        let buf = self.read_prefix(dir, size)?;
        let mut out: Vec<DirEntry> = Vec::new();
        // The raw name of a file whose extents are still being collected:
        // its last entry in `out` gains the records that follow, up to one
        // without the multi-extent flag.
        let mut continued: Option<Vec<u8>> = None;
        let mut pos = 0usize;
        while pos < buf.len() {
            let rec_len = buf[pos] as usize;
            if rec_len == 0 {
                // Records never cross a sector; zero padding ends the sector.
                pos = (pos / SECTOR_SIZE as usize + 1) * SECTOR_SIZE as usize;
                continue;
            }
            let (raw, used) = parse_record(&buf[pos..])?;
            pos += used;
            if raw.name == [0] || raw.name == [1] {
                continue;
            }
            let more = raw.flags & FLAG_MULTI_EXTENT != 0;
            if let Some(first) = continued.take() {
                let Some(entry) = out.last_mut().filter(|_| first == raw.name) else {
                    return Err(IsoError::BadMultiExtent {
                        name: String::from_utf8_lossy(&first).into_owned(),
                    });
                };
                entry.extents.push(raw.extent());
                if more {
                    continued = Some(first);
                }
                continue;
            }
            if out.len() >= self.limits.max_dir_entries {
                return Err(IsoError::TooManyEntries {
                    max: self.limits.max_dir_entries,
                });
            }
            if more {
                if raw.flags & FLAG_DIRECTORY != 0 {
                    return Err(IsoError::BadMultiExtent {
                        name: String::from_utf8_lossy(&raw.name).into_owned(),
                    });
                }
                continued = Some(raw.name.clone());
            }
            let (name, symlink) = match self.scheme {
                NameScheme::RockRidge => self.rock_ridge(&raw)?,
                NameScheme::Joliet => (Some(joliet_name(&raw.name)), None),
                NameScheme::Iso9660 => (None, None),
            };
            let name = name.unwrap_or_else(|| iso_name(&raw.name));
            out.push(DirEntry {
                symlink,
                ..raw.to_entry(name, self.scheme)
            });
        }
        if let Some(first) = continued {
            return Err(IsoError::BadMultiExtent {
                name: String::from_utf8_lossy(&first).into_owned(),
            });
        }
        Ok(out)
    }

    /// The `NM` name and `SL` link target of a record, following `CE`
    /// continuation areas.
    fn rock_ridge(
        &mut self,
        raw: &RawRecord,
    ) -> Result<(Option<String>, Option<String>), IsoError> {
        let mut name = Vec::new();
        let mut found = false;
        let mut link = SymlinkParts::default();
        let mut area = raw.system_use.clone();
        for _ in 0..=MAX_CONTINUATIONS {
            let mut next = None;
            for (sig, data) in susp_entries(&area) {
                match &sig {
                    b"NM" if !data.is_empty() => {
                        // data[0] is the flags byte: bit 1 = ".", bit 2 = "..".
                        found = true;
                        name.extend_from_slice(&data[1..]);
                    }
                    b"SL" if !data.is_empty() => link.add(&data[1..]),
                    b"CE" if data.len() >= 24 => {
                        let lba = le_u32(&data[0..4]);
                        let off = le_u32(&data[8..12]);
                        let ce_len = le_u32(&data[16..20]);
                        next = Some((lba, off, ce_len));
                    }
                    b"ST" => break,
                    _ => {}
                }
            }
            let Some((lba, off, ce_len)) = next else {
                break;
            };
            if ce_len > SECTOR_SIZE as u32 || off >= SECTOR_SIZE as u32 {
                return Err(IsoError::BadContinuation { lba, len: ce_len });
            }
            let mut buf = vec![0u8; ce_len as usize];
            read_exact_at(
                &mut self.src,
                self.len,
                u64::from(lba) * SECTOR_SIZE + u64::from(off),
                &mut buf,
            )?;
            area = buf;
        }
        let name = (found && !name.is_empty()).then(|| String::from_utf8_lossy(&name).into_owned());
        Ok((name, link.target()))
    }

    /// Finds a path (`/a/b/c`, leading slash optional). An exact name match
    /// wins; otherwise names are compared ignoring ASCII case, as FAT-minded
    /// boot loaders (isolinux, GRUB on plain ISO9660) do. `..` goes up (not
    /// past the root), and Rock Ridge symbolic links are followed, at most
    /// [`MAX_SYMLINKS`] of them.
    pub fn lookup(&mut self, path: &str) -> Result<DirEntry, IsoError> {
        let max_depth = self.limits.max_depth;
        let too_deep = || IsoError::PathTooDeep {
            path: path.to_owned(),
            max: max_depth,
        };
        let split = |p: &str| -> VecDeque<String> {
            p.split('/')
                .filter(|c| !c.is_empty() && *c != ".")
                .map(str::to_owned)
                .collect()
        };
        let mut todo = split(path);
        if todo.len() > self.limits.max_depth {
            return Err(too_deep());
        }
        // The directories walked so far, the root first.
        let mut walked = vec![self.root.clone()];
        let mut links = 0;
        while let Some(part) = todo.pop_front() {
            if part == ".." {
                if walked.len() > 1 {
                    walked.pop();
                }
                continue;
            }
            let dir = walked.last().expect("the root is never popped");
            let entries = self.read_dir(dir)?;
            let exact = entries.iter().position(|e| e.name == part);
            let idx = exact.or_else(|| {
                entries
                    .iter()
                    .position(|e| e.name.eq_ignore_ascii_case(&part))
            });
            let Some(i) = idx else {
                return Err(IsoError::NotFound {
                    path: path.to_owned(),
                });
            };
            let entry = entries[i].clone();
            match &entry.symlink {
                None => walked.push(entry),
                Some(target) => {
                    links += 1;
                    if links > MAX_SYMLINKS {
                        return Err(IsoError::TooManySymlinks {
                            path: path.to_owned(),
                            max: MAX_SYMLINKS,
                        });
                    }
                    if target.starts_with('/') {
                        walked.truncate(1);
                    }
                    let mut next = split(target);
                    next.extend(todo);
                    todo = next;
                    if todo.len() + walked.len() > max_depth * 2 {
                        return Err(too_deep());
                    }
                }
            }
        }
        Ok(walked.pop().expect("the root is never popped"))
    }

    /// Reads a whole file, refusing files larger than `max` bytes.
    pub fn read_file(&mut self, entry: &DirEntry, max: u64) -> Result<Vec<u8>, IsoError> {
        if entry.is_dir {
            return Err(IsoError::IsADirectory {
                name: entry.name.clone(),
            });
        }
        let size = entry.size();
        if size > max {
            return Err(IsoError::FileTooLarge {
                name: entry.name.clone(),
                size,
                max,
            });
        }
        self.read_prefix(entry, size)
    }

    /// Reads the first `n` bytes of an entry's data (`n` at most its
    /// size), across its extents.
    fn read_prefix(&mut self, entry: &DirEntry, n: u64) -> Result<Vec<u8>, IsoError> {
        let mut buf = vec![0u8; n as usize];
        let mut filled = 0usize;
        for e in &entry.extents {
            let take = (e.len as usize).min(buf.len() - filled);
            read_exact_at(
                &mut self.src,
                self.len,
                u64::from(e.lba) * SECTOR_SIZE,
                &mut buf[filled..filled + take],
            )?;
            filled += take;
        }
        Ok(buf)
    }

    /// Reads the first `n` bytes of a file (all of it if it is shorter).
    pub fn read_head(&mut self, entry: &DirEntry, n: usize) -> Result<Vec<u8>, IsoError> {
        if entry.is_dir {
            return Err(IsoError::IsADirectory {
                name: entry.name.clone(),
            });
        }
        self.read_prefix(entry, entry.size().min(n as u64))
    }

    /// Looks up and reads a file in one step.
    pub fn read_path(&mut self, path: &str, max: u64) -> Result<Vec<u8>, IsoError> {
        let e = self.lookup(path)?;
        self.read_file(&e, max)
    }
}

/// A directory record as stored, before choosing its name.
struct RawRecord {
    lba: u32,
    size: u32,
    flags: u8,
    name: Vec<u8>,
    system_use: Vec<u8>,
}

impl RawRecord {
    fn extent(&self) -> Extent {
        Extent {
            lba: self.lba,
            len: self.size,
        }
    }

    fn to_entry(&self, name: String, _scheme: NameScheme) -> DirEntry {
        DirEntry {
            name,
            extents: vec![self.extent()],
            is_dir: self.flags & FLAG_DIRECTORY != 0,
            symlink: None,
        }
    }
}

/// Parses one directory record (ECMA-119 9.1) at the start of `buf`,
/// returning it and its length.
fn parse_record(buf: &[u8]) -> Result<(RawRecord, usize), IsoError> {
    let len = *buf.first().ok_or(IsoError::BadDirRecord { len: 0 })? as usize;
    if len < 34 || len > buf.len() {
        return Err(IsoError::BadDirRecord { len });
    }
    let rec = &buf[..len];
    let name_len = rec[32] as usize;
    if 33 + name_len > len {
        return Err(IsoError::BadDirRecord { len });
    }
    // The name is padded to an even offset; system use follows.
    let su_start = 33 + name_len + usize::from(name_len % 2 == 0);
    let system_use = rec.get(su_start..).unwrap_or(&[]).to_vec();
    Ok((
        RawRecord {
            lba: le_u32(&rec[2..6]),
            size: le_u32(&rec[10..14]),
            flags: rec[25],
            name: rec[33..33 + name_len].to_vec(),
            system_use,
        },
        len,
    ))
}

/// A Rock Ridge `SL` target being assembled from component records
/// (RRIP 1.12 section 4.1.3.1), possibly over several `SL` entries.
#[derive(Default)]
struct SymlinkParts {
    seen: bool,
    absolute: bool,
    parts: Vec<Vec<u8>>,
    /// The last component continues in the next record.
    continues: bool,
}

impl SymlinkParts {
    /// Adds the component records of one `SL` entry (after its flags).
    fn add(&mut self, mut records: &[u8]) {
        self.seen = true;
        while let [flags, len, rest @ ..] = records {
            let Some(content) = rest.get(..usize::from(*len)) else {
                break;
            };
            if flags & 0x08 != 0 {
                // ROOT: what follows is absolute.
                self.absolute = true;
                self.parts.clear();
                self.continues = false;
            } else {
                let part: &[u8] = match flags & 0x06 {
                    0x02 => b".",
                    0x04 => b"..",
                    _ => content,
                };
                match self.parts.last_mut() {
                    Some(last) if self.continues => last.extend_from_slice(part),
                    _ => self.parts.push(part.to_vec()),
                }
                // CONTINUE: the next record extends this component.
                self.continues = flags & 0x01 != 0;
            }
            records = &rest[usize::from(*len)..];
        }
    }

    fn target(self) -> Option<String> {
        if !self.seen {
            return None;
        }
        let joined = self.parts.join(&b'/');
        let joined = String::from_utf8_lossy(&joined);
        Some(if self.absolute {
            format!("/{joined}")
        } else {
            joined.into_owned()
        })
    }
}

/// Iterates SUSP entries (signature, data after the 4-byte header).
fn susp_entries(area: &[u8]) -> impl Iterator<Item = ([u8; 2], &[u8])> {
    let mut pos = 0usize;
    std::iter::from_fn(move || {
        let hdr = area.get(pos..pos + 4)?;
        let len = hdr[2] as usize;
        if len < 4 {
            return None;
        }
        let data = area.get(pos + 4..pos + len)?;
        let sig = [hdr[0], hdr[1]];
        pos += len;
        Some((sig, data))
    })
}

fn le_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

fn check_block_size(vd: &[u8]) -> Result<(), IsoError> {
    let bs = u16::from_le_bytes([vd[128], vd[129]]);
    if u64::from(bs) != SECTOR_SIZE {
        return Err(IsoError::UnsupportedBlockSize { size: bs });
    }
    Ok(())
}

/// Joliet volumes are supplementary descriptors whose escape sequences name
/// UCS-2 level 1, 2 or 3 (`%/@`, `%/C`, `%/E`).
fn is_joliet(vd: &[u8]) -> bool {
    let esc = &vd[88..91];
    esc == b"%/@" || esc == b"%/C" || esc == b"%/E"
}

fn joliet_name(raw: &[u8]) -> String {
    let units: Vec<u16> = raw
        .chunks_exact(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .collect();
    strip_version(&String::from_utf16_lossy(&units)).to_owned()
}

fn iso_name(raw: &[u8]) -> String {
    let s = String::from_utf8_lossy(raw);
    let s = strip_version(&s);
    s.strip_suffix('.').unwrap_or(s).to_owned()
}

fn strip_version(s: &str) -> &str {
    match s.rfind(';') {
        Some(i) => &s[..i],
        None => s,
    }
}

/// Reads exactly `buf.len()` bytes at `offset`, or reports the image as
/// truncated when that range lies past its end.
fn read_exact_at<R: Read + Seek>(
    src: &mut R,
    len: u64,
    offset: u64,
    buf: &mut [u8],
) -> Result<(), IsoError> {
    let end = offset
        .checked_add(buf.len() as u64)
        .ok_or(IsoError::Truncated { offset, len })?;
    if end > len {
        return Err(IsoError::Truncated { offset, len });
    }
    src.seek(SeekFrom::Start(offset)).map_err(IsoError::Io)?;
    src.read_exact(buf).map_err(IsoError::Io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn empty_input_is_truncated() {
        let e = IsoReader::new(Cursor::new(Vec::new())).err();
        assert!(matches!(e, Some(IsoError::Truncated { .. })), "{e:?}");
    }

    #[test]
    fn wrong_magic_is_not_iso() {
        let img = vec![0u8; 20 * SECTOR_SIZE as usize];
        let e = IsoReader::new(Cursor::new(img)).err();
        assert!(
            matches!(e, Some(IsoError::NotIso9660 { sector: 16 })),
            "{e:?}"
        );
    }

    #[test]
    fn susp_entries_stop_on_short_length() {
        let area = [b'N', b'M', 6, 1, 0, b'a', b'X', b'Y', 2, 1];
        let v: Vec<_> = susp_entries(&area).collect();
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].0, *b"NM");
        assert_eq!(v[0].1, &[0, b'a']);
    }

    /// A directory record (ECMA-119 9.1) for `name` at `lba`, `size` bytes.
    fn record(name: &[u8], flags: u8, lba: u32, size: u32) -> Vec<u8> {
        let len = 33 + name.len() + (name.len() + 1) % 2;
        let mut r = vec![0u8; len];
        r[0] = len as u8;
        r[2..6].copy_from_slice(&lba.to_le_bytes());
        r[6..10].copy_from_slice(&lba.to_be_bytes());
        r[10..14].copy_from_slice(&size.to_le_bytes());
        r[14..18].copy_from_slice(&size.to_be_bytes());
        r[25] = flags;
        r[32] = name.len() as u8;
        r[33..33 + name.len()].copy_from_slice(name);
        r
    }

    /// A plain ISO9660 image: root directory at sector 18 holding
    /// `records`, and sectors 20 to 23 filled with 0xA0 + their number.
    fn image(records: &[Vec<u8>]) -> Vec<u8> {
        let sector = SECTOR_SIZE as usize;
        let mut img = vec![0u8; 24 * sector];
        let pvd = &mut img[16 * sector..17 * sector];
        pvd[0] = 1;
        pvd[1..6].copy_from_slice(b"CD001");
        pvd[128..130].copy_from_slice(&2048u16.to_le_bytes());
        pvd[156..190].copy_from_slice(&record(&[0], FLAG_DIRECTORY, 18, 2048));
        img[17 * sector] = 255;
        img[17 * sector + 1..17 * sector + 6].copy_from_slice(b"CD001");
        let mut dir = record(&[0], FLAG_DIRECTORY, 18, 2048);
        dir.extend(record(&[1], FLAG_DIRECTORY, 18, 2048));
        for r in records {
            dir.extend(r);
        }
        img[18 * sector..18 * sector + dir.len()].copy_from_slice(&dir);
        for n in 20..24 {
            img[n * sector..(n + 1) * sector].fill(0xa0 + n as u8);
        }
        img
    }

    #[test]
    fn a_file_over_several_extents_reads_as_one() {
        // As ISO 9660 level 3 stores a file over 4 GiB: records of the same
        // name, all but the last flagged multi-extent.
        let img = image(&[
            record(b"BIG.;1", FLAG_MULTI_EXTENT, 20, 2048),
            record(b"BIG.;1", FLAG_MULTI_EXTENT, 22, 2048),
            record(b"BIG.;1", 0, 21, 100),
            record(b"K.;1", 0, 23, 10),
        ]);
        let mut r = IsoReader::new(Cursor::new(img)).unwrap();
        let big = r.lookup("/big").unwrap();
        assert_eq!(big.size(), 4196);
        assert_eq!(big.extents.len(), 3);
        let data = r.read_file(&big, 1 << 20).unwrap();
        assert!(data[..2048].iter().all(|b| *b == 0xb4));
        assert!(data[2048..4096].iter().all(|b| *b == 0xb6));
        assert!(data[4096..].iter().all(|b| *b == 0xb5));
        assert_eq!(
            r.read_head(&big, 2050).unwrap()[2046..],
            [0xb4, 0xb4, 0xb6, 0xb6]
        );
        assert!(matches!(
            r.read_file(&big, 4195),
            Err(IsoError::FileTooLarge { size: 4196, .. })
        ));
        // The entry after it is its own file.
        assert_eq!(r.read_path("/K", 10).unwrap(), [0xb7; 10]);
    }

    #[test]
    fn a_broken_chain_of_extents_is_named() {
        for records in [
            // The continuation has another name.
            vec![
                record(b"A.;1", FLAG_MULTI_EXTENT, 20, 2048),
                record(b"B.;1", 0, 21, 5),
            ],
            // The chain never ends.
            vec![record(b"A.;1", FLAG_MULTI_EXTENT, 20, 2048)],
            // A directory cannot continue.
            vec![
                record(b"D", FLAG_MULTI_EXTENT | FLAG_DIRECTORY, 20, 2048),
                record(b"D", FLAG_DIRECTORY, 21, 2048),
            ],
        ] {
            let mut r = IsoReader::new(Cursor::new(image(&records))).unwrap();
            let e = r.lookup("/A").or_else(|_| r.lookup("/D")).unwrap_err();
            assert!(matches!(e, IsoError::BadMultiExtent { .. }), "{e:?}");
        }
    }

    #[test]
    fn symlink_targets_join_components_across_records_and_entries() {
        let target = |entries: &[&[u8]]| {
            let mut l = SymlinkParts::default();
            for e in entries {
                l.add(e);
            }
            l.target()
        };
        assert_eq!(target(&[]), None);
        // "vmlinuz-6.1" split over two records (CONTINUE), then "..", ".".
        assert_eq!(
            target(&[&[
                1, 6, b'v', b'm', b'l', b'i', b'n', b'u', 0, 5, b'z', b'-', b'6', b'.', b'1'
            ]]),
            Some("vmlinuz-6.1".into())
        );
        assert_eq!(
            target(&[&[4, 0, 0, 4, b'b', b'o', b'o', b't'], &[2, 0, 0, 1, b'k']]),
            Some("../boot/./k".into())
        );
        // ROOT makes it absolute; a component continued into the next SL entry.
        assert_eq!(
            target(&[&[8, 0, 1, 2, b'a', b'b'], &[0, 2, b'c', b'd']]),
            Some("/abcd".into())
        );
        // A record longer than the entry stops the parse without panicking.
        assert_eq!(target(&[&[0, 9, b'x']]), Some(String::new()));
    }

    #[test]
    fn iso_names_lose_version_and_trailing_dot() {
        assert_eq!(iso_name(b"VMLINUZ.;1"), "VMLINUZ");
        assert_eq!(iso_name(b"A.CFG;1"), "A.CFG");
        assert_eq!(joliet_name(&[0, b'a', 0, b';', 0, b'1']), "a");
    }

    proptest::proptest! {
        #[test]
        fn random_bytes_never_panic(data in proptest::collection::vec(proptest::num::u8::ANY, 0..80_000)) {
            if let Ok(mut r) = IsoReader::new(Cursor::new(data)) {
                let root = r.root().clone();
                let _ = r.read_dir(&root);
                let _ = r.lookup("/isolinux/isolinux.cfg");
            }
        }

        #[test]
        fn random_descriptor_area_never_panics(tail in proptest::collection::vec(proptest::num::u8::ANY, 0..8192)) {
            // A valid-looking header so parsing goes past the magic check.
            let mut img = vec![0u8; 16 * SECTOR_SIZE as usize];
            let mut pvd = vec![0u8; SECTOR_SIZE as usize];
            pvd[0] = 1;
            pvd[1..6].copy_from_slice(b"CD001");
            pvd[128..130].copy_from_slice(&2048u16.to_le_bytes());
            let n = tail.len().min(SECTOR_SIZE as usize - 156);
            pvd[156..156 + n].copy_from_slice(&tail[..n]);
            img.extend_from_slice(&pvd);
            let mut term = vec![0u8; SECTOR_SIZE as usize];
            term[0] = 255;
            term[1..6].copy_from_slice(b"CD001");
            img.extend_from_slice(&term);
            img.extend_from_slice(&tail);
            if let Ok(mut r) = IsoReader::new(Cursor::new(img)) {
                let _ = r.lookup("/a/b");
            }
        }
    }
}
