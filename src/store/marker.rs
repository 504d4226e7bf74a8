//! Commit markers: how a start tells damage to acknowledged records from a torn last batch.
//!
//! A record is acknowledged only once the `fdatasync` of its batch has returned, and the
//! writer writes the next batch only after that. So a crash, even a power loss that writes a
//! batch's pages out of order, can damage only the last batch of the last segment; damage
//! anywhere before it is damage to records that were acknowledged (a bad sector, a flipped
//! bit), and cutting the segment there would silently give their amounts back to the cards.
//! Records alone cannot say where a batch began, so the writer ends each batch with a
//! marker: a frame like a record's whose payload is [`TAG`] and the byte offset in the
//! segment where the batch began. A start that finds a bad record looks past it for an
//! intact marker of a batch that began after the bad record: there is one exactly when a
//! later batch was written, that is when the damaged batch had been acknowledged.
//!
//! The cost is 17 bytes per `fdatasync` (a batch carries 1 to thousands of records).
//! Segments written by a vpan from before markers (2026-12-05) have none, and damage in
//! their last segment is cut as before, with the count of intact records after it logged.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;

/// A marker's payload begins with this byte; every record's payload begins with its tag,
/// and no record kind has tag 0 (the journal checks it as it writes).
pub const TAG: u8 = 0;

/// A marker's payload: [`TAG`], then the batch's first byte in its segment (u64 LE).
const PAYLOAD_BYTES: usize = 1 + 8;

/// A marker as framed in a segment: length, checksum, payload.
pub const FRAME_BYTES: usize = 8 + PAYLOAD_BYTES;

/// Appends to `out` the marker of a batch that begins at byte `batch_start` of its segment.
pub fn push(batch_start: u64, out: &mut Vec<u8>) {
    let mut payload = [0u8; PAYLOAD_BYTES];
    payload[0] = TAG;
    payload[1..].copy_from_slice(&batch_start.to_le_bytes());
    out.extend_from_slice(&(PAYLOAD_BYTES as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
}

/// Where the batch of the marker `payload` began, or `None` when `payload` is a record.
pub fn batch_start(payload: &[u8]) -> Option<u64> {
    match payload {
        [TAG, start @ ..] if start.len() == 8 => Some(u64::from_le_bytes(start.try_into().ok()?)),
        _ => None,
    }
}

/// The marker framed at the start of `bytes`, if one is there whole with its checksum:
/// where its batch began.
fn framed_at(bytes: &[u8]) -> Option<u64> {
    let frame = bytes.get(..FRAME_BYTES)?;
    let (len, crc) = (&frame[..4], &frame[4..8]);
    if len != (PAYLOAD_BYTES as u32).to_le_bytes() {
        return None;
    }
    let payload = &frame[8..];
    if crc != crc32fast::hash(payload).to_le_bytes() {
        return None;
    }
    batch_start(payload)
}

/// How many intact markers of `path` after byte `damaged_at` are of batches that began
/// after it: more than 0 means the batch holding the damage had been acknowledged.
///
/// The whole rest of the file is searched, at every offset (the damage may have shifted
/// nothing, or anything), a chunk at a time, so a segment of any size costs little memory;
/// a marker is 17 bytes with its own checksum, so bytes inside a record read as one about
/// once in 2^72 offsets.
pub fn later_commits(path: &Path, damaged_at: u64) -> io::Result<u64> {
    const CHUNK: usize = 1 << 20;
    let mut file = File::open(path)?;
    file.seek(SeekFrom::Start(damaged_at))?;
    let mut window = Vec::with_capacity(CHUNK + FRAME_BYTES);
    let mut found = 0;
    loop {
        let kept = window.len();
        window.resize(kept + CHUNK, 0);
        let read = read_some(&mut file, &mut window[kept..])?;
        window.truncate(kept + read);
        let at_end = read == 0;
        // Offsets whose marker would end inside the window; the rest waits for more bytes.
        let whole = if at_end {
            window.len()
        } else {
            window.len().saturating_sub(FRAME_BYTES - 1)
        };
        found += (0..whole)
            .filter_map(|i| framed_at(&window[i..]))
            .filter(|&start| start > damaged_at)
            .count() as u64;
        if at_end {
            return Ok(found);
        }
        window.drain(..whole);
    }
}

/// Reads what `r` has, up to `buf.len()` bytes; 0 only at its end.
fn read_some(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match r.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_marker_reads_back_as_its_batch_start_and_a_record_does_not() {
        let mut out = Vec::new();
        push(123_456, &mut out);
        assert_eq!(out.len(), FRAME_BYTES);
        assert_eq!(framed_at(&out), Some(123_456));
        assert_eq!(batch_start(&out[8..]), Some(123_456));
        // A record's payload starts with its tag (1 and up), or is of another length.
        assert_eq!(batch_start(&[1, 0, 0, 0, 0, 0, 0, 0, 0]), None);
        assert_eq!(batch_start(&[TAG, 1, 2]), None);
        // A marker with a bit flipped is not one.
        out[12] ^= 1;
        assert_eq!(framed_at(&out), None);
    }

    #[test]
    fn later_commits_counts_the_markers_of_batches_begun_after_the_damage_wherever_they_lie() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("segment");
        // Junk, then markers of batches begun at 10 (the damaged one's) and 40 and 70
        // (later ones), one of them across the search's chunk boundary.
        let mut bytes = vec![7u8; 40];
        push(10, &mut bytes);
        bytes.resize(20 + (1 << 20) - 5, 3);
        push(40, &mut bytes);
        bytes.extend_from_slice(&[0; 100]);
        push(70, &mut bytes);
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(later_commits(&path, 20).unwrap(), 2);
        assert_eq!(
            later_commits(&path, 40).unwrap(),
            1,
            "begun at the damage: its own"
        );
        assert_eq!(later_commits(&path, 70).unwrap(), 0);
        // A marker cut short by the end of the file is not one.
        bytes.truncate(bytes.len() - 1);
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(later_commits(&path, 20).unwrap(), 1);
    }
}
