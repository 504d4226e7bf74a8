//! Reading the journal back at a start: framed records up to the first torn or corrupt
//! one, the damage after it told apart from the zeros written ahead of the records, and the
//! tail cut (or kept aside) so that the next segment starts clean.

use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::{MAX_RECORD_BYTES, sync_dir};
use crate::store::StoreError;
use crate::store::marker::MarkerKey;

/// What reading a file of framed records found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadReport {
    /// Good records read.
    pub records: u64,
    /// Bytes up to the end of the last good record.
    pub good_bytes: u64,
    /// Bytes after it that were torn or corrupt (0 for a clean file).
    pub bad_bytes: u64,
    /// Zero bytes after it: the rest of an extent written ahead of the records (a segment
    /// the writer did not close, e.g. after a crash). Not damage: nothing was lost there.
    pub zeros: u64,
    /// A journal segment's first frame is its signed opening marker
    /// ([`crate::store::marker::OPENS_SEGMENT`]): it must end with a closing one once a
    /// later segment follows. False for other files, and for segments written before
    /// 2026-12-07.
    pub opened: bool,
    /// A journal segment's last good frame is its signed closing marker
    /// ([`crate::store::marker::CLOSES_SEGMENT`]).
    pub closed: bool,
}

/// Reads framed records from `path`, handing each payload to `f`, and stops at the first
/// torn or corrupt one. Nothing after that point is read.
pub fn read_records(
    path: &Path,
    f: impl FnMut(&[u8]) -> Result<(), StoreError>,
) -> Result<ReadReport, StoreError> {
    read_records_from(path, 0, f)
}

/// [`read_records`] from byte `from` of the file (`good_bytes` still counted from its
/// start).
fn read_records_from(
    path: &Path,
    from: u64,
    mut f: impl FnMut(&[u8]) -> Result<(), StoreError>,
) -> Result<ReadReport, StoreError> {
    let mut file = File::open(path).map_err(StoreError::io("opening a journal segment"))?;
    let total = file
        .metadata()
        .map_err(StoreError::io("reading a journal segment"))?
        .len();
    file.seek(SeekFrom::Start(from))
        .map_err(StoreError::io("reading a journal segment"))?;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut payload = Vec::with_capacity(256);
    let mut report = ReadReport {
        records: 0,
        good_bytes: from.min(total),
        bad_bytes: 0,
        zeros: 0,
        opened: false,
        closed: false,
    };
    loop {
        let mut head = [0u8; 8];
        match read_full(&mut reader, &mut head) {
            Ok(0) => break,
            Ok(8) => {}
            Ok(_) => break, // torn header
            Err(e) => return Err(StoreError::io("reading a journal segment")(e)),
        }
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        if len == 0 || len > MAX_RECORD_BYTES {
            break;
        }
        payload.resize(len, 0);
        match read_full(&mut reader, &mut payload) {
            Ok(n) if n == len => {}
            Ok(_) => break, // torn payload
            Err(e) => return Err(StoreError::io("reading a journal segment")(e)),
        }
        if crc32fast::hash(&payload) != crc {
            break;
        }
        f(&payload)?;
        report.records += 1;
        report.good_bytes += 8 + len as u64;
    }
    let rest = total - report.good_bytes;
    reader
        .seek(SeekFrom::Start(report.good_bytes))
        .map_err(StoreError::io("reading a journal segment"))?;
    if all_zeros(&mut reader).map_err(StoreError::io("reading a journal segment"))? {
        report.zeros = rest;
    } else {
        report.bad_bytes = rest;
    }
    Ok(report)
}

/// Reads journal segment `segment` at `path` as [`read_records`] does, handing `f` its
/// records and not the commit markers between its batches ([`super::marker`]), which
/// `records` does not count.
///
/// A damaged frame that is this batch's marker (its length and tag, and two of its
/// checksum, its batch start and its signature under `key`, [`crate::store::marker::ends_batch`])
/// with frames that read after it is passed over, and logged: a later batch was written,
/// so the marker's own batch had been made durable, and every record of it read; the
/// marker held nothing the cards need, and cutting there would drop every batch after it.
/// A damaged record is never passed over, whatever its length: it has neither the
/// marker's checksum nor its signature.
pub fn read_segment(
    path: &Path,
    segment: u64,
    key: &MarkerKey,
    mut f: impl FnMut(&[u8]) -> Result<(), StoreError>,
) -> Result<ReadReport, StoreError> {
    use crate::store::marker::{self, CLOSES_SEGMENT, OPENS_SEGMENT};
    use std::cell::Cell;
    let mut markers = 0;
    // Where the next frame read begins, and where the batch being read began.
    let (at, batch_began) = (Cell::new(0u64), Cell::new(0u64));
    let (opened, closed) = (Cell::new(false), Cell::new(false));
    let mut each = |payload: &[u8]| {
        let first = at.get() == 0;
        at.set(at.get() + 8 + payload.len() as u64);
        if let Some(start) = marker::batch_start(payload) {
            markers += 1;
            batch_began.set(at.get());
            // Signed only when it names the opening or the closing: a batch's marker (one
            // per commit, thousands in a segment) needs no HMAC to be read past.
            let signed = matches!(start, OPENS_SEGMENT | CLOSES_SEGMENT)
                && marker::signed_start(payload, key, segment).is_some();
            opened.set(opened.get() || (first && signed && start == OPENS_SEGMENT));
            closed.set(signed && start == CLOSES_SEGMENT);
            Ok(())
        } else {
            closed.set(false);
            f(payload)
        }
    };
    let mut report = read_records_from(path, 0, &mut each)?;
    while report.bad_bytes > 0 {
        let Some(named) =
            damaged_marker_at(path, report.good_bytes, batch_began.get(), segment, key)?
        else {
            break;
        };
        if named == OPENS_SEGMENT {
            opened.set(true);
        }
        let after = report.good_bytes + marker::FRAME_BYTES as u64;
        at.set(after);
        batch_began.set(after);
        let rest = read_records_from(path, after, &mut each)?;
        if rest.records == 0 {
            if named == CLOSES_SEGMENT && rest.bad_bytes == 0 {
                // The closing marker, damaged (or torn as it was written), and nothing
                // after it: it is written once every batch before it is durable, so it
                // closed the segment and no record was lost.
                tracing::warn!(
                    segment = %path.display(),
                    at = report.good_bytes,
                    "a journal segment's closing marker is damaged: read as closed (no record was damaged)"
                );
                closed.set(true);
                report = ReadReport {
                    records: report.records,
                    ..rest
                };
            }
            // Else nothing reads after it: the last batch's marker, torn.
            break;
        }
        tracing::warn!(
            segment = %path.display(),
            at = report.good_bytes,
            "a damaged commit marker in a journal segment, with records reading after it: passed over (no record was damaged)"
        );
        report = ReadReport {
            records: report.records + rest.records,
            ..rest
        };
    }
    report.records -= markers;
    report.opened = opened.get();
    report.closed = closed.get();
    Ok(report)
}

/// The batch start named by the marker that the bytes of segment `segment` at `path`,
/// from `at`, hold, damaged or not: the one ending the batch begun at `batch_began`, the
/// segment's opening marker (at its first byte only) or its closing one; `None` when they
/// hold none of these.
fn damaged_marker_at(
    path: &Path,
    at: u64,
    batch_began: u64,
    segment: u64,
    key: &MarkerKey,
) -> Result<Option<u64>, StoreError> {
    use crate::store::marker::{CLOSES_SEGMENT, FRAME_BYTES, OPENS_SEGMENT, ends_batch};
    let mut bytes = [0u8; FRAME_BYTES];
    let read = File::open(path)
        .and_then(|mut file| {
            file.seek(SeekFrom::Start(at))?;
            read_full(&mut file, &mut bytes)
        })
        .map_err(StoreError::io("reading a journal segment"))?;
    if read < bytes.len() {
        return Ok(None);
    }
    let opening = (at == 0).then_some(OPENS_SEGMENT);
    Ok([Some(batch_began), opening, Some(CLOSES_SEGMENT)]
        .into_iter()
        .flatten()
        .find(|&named| ends_batch(&bytes, named, segment, key)))
}

/// The most a segment that holds nothing can take: what a create that a crash or a full
/// disk stopped leaves (an extent of zeros, two for the room rounding up). A segment of
/// zeros only that is longer held records once.
pub const LEFTOVER_MAX_BYTES: u64 = 2 * crate::store::segment::EXTENT_BYTES;

/// True when the file at `path` holds nothing: no byte, or zeros only, no longer than
/// [`LEFTOVER_MAX_BYTES`] (a longer one is read as holding something).
pub fn holds_nothing(path: &Path) -> io::Result<bool> {
    let file = File::open(path)?;
    if file.metadata()?.len() > LEFTOVER_MAX_BYTES {
        return Ok(false);
    }
    all_zeros(&mut BufReader::new(file))
}

/// True when everything `r` has left to read is zero bytes.
fn all_zeros(r: &mut impl Read) -> io::Result<bool> {
    let mut chunk = [0u8; 8192];
    loop {
        match r.read(&mut chunk) {
            Ok(0) => return Ok(true),
            Ok(n) if chunk[..n].iter().any(|&b| b != 0) => return Ok(false),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Reads until `buf` is full or the end of the file; returns how much was read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// How much of a cut tail is searched for intact records (see [`keep_tail_aside`]).
const TAIL_SCAN_BYTES: u64 = 64 << 20;

/// Copies what follows the last good record of `path` (from `good_bytes`) to a file beside
/// it (`<segment>.damaged-<nanoseconds>`), synced, before it is cut; returns that file and
/// how many intact records it holds past the first bad one (searched in its first 64 MiB).
///
/// A killed process tears only the last batch, at its end, and its records were never
/// acknowledged. Intact records after a bad one point to a power loss that wrote the pages
/// of the last batch out of order (they were not acknowledged either), or, in a segment
/// without commit markers (written before them), to damage, where they may have been:
/// vpan says so. Damage before the last batch is refused earlier ([`super::marker`]).
/// Either way nothing is destroyed: the bytes stay on disk for the operators.
pub fn keep_tail_aside(path: &Path, good_bytes: u64) -> Result<(PathBuf, u64), StoreError> {
    let what = "keeping a cut journal tail aside";
    let kept = crate::store::aside_path(path);
    let mut from = File::open(path).map_err(StoreError::io(what))?;
    from.seek(SeekFrom::Start(good_bytes))
        .map_err(StoreError::io(what))?;
    let mut to = crate::store::create_private_file(&kept).map_err(StoreError::io(what))?;
    io::copy(&mut from, &mut to)
        .and_then(|_| to.sync_all())
        .map_err(StoreError::io(what))?;
    if let Some(dir) = path.parent() {
        sync_dir(dir).map_err(StoreError::io(what))?;
    }
    let mut head = Vec::new();
    File::open(&kept)
        .and_then(|f| f.take(TAIL_SCAN_BYTES).read_to_end(&mut head))
        .map_err(StoreError::io(what))?;
    Ok((kept, intact_records_after_the_first(&head)))
}

/// Intact framed records in `bytes` past its first one, found at any offset (commit markers
/// skipped, not counted).
pub(super) fn intact_records_after_the_first(bytes: &[u8]) -> u64 {
    let mut found = 0;
    let mut at = 1;
    while at + 8 <= bytes.len() {
        let word =
            |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
        let (len, crc) = (word(at) as usize, word(at + 4));
        let end = at + 8 + len;
        if len > 0
            && len <= MAX_RECORD_BYTES
            && end <= bytes.len()
            && crc32fast::hash(&bytes[at + 8..end]) == crc
        {
            if crate::store::marker::batch_start(&bytes[at + 8..end]).is_none() {
                found += 1;
            }
            at = end;
        } else {
            at += 1;
        }
    }
    found
}

/// Cuts a segment after its last good record (the recovery of a torn or corrupt tail).
pub fn truncate(path: &Path, good_bytes: u64) -> Result<(), StoreError> {
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(StoreError::io("cutting a torn journal tail"))?;
    file.set_len(good_bytes)
        .and_then(|()| file.sync_all())
        .map_err(StoreError::io("cutting a torn journal tail"))
}
