//! Commit markers: how a start tells damage to acknowledged records from a torn last batch.
//!
//! A record is acknowledged only once the `fdatasync` of its batch has returned, and the
//! writer writes the next batch only after that. So a crash, even a power loss that writes a
//! batch's pages out of order, can damage only the last batch of the last segment; damage
//! anywhere before it is damage to records that were acknowledged (a bad sector, a flipped
//! bit), and cutting the segment there would silently give their amounts back to the cards.
//! Records alone cannot say where a batch began, so the writer ends each batch with a
//! marker: a frame like a record's whose payload is [`TAG`], the byte offset in the segment
//! where the batch began, and an HMAC of that offset and the segment's number under a key
//! derived from the card key file. A start that finds a bad record looks past it for a
//! marker of a batch that began after the bad record: there is one exactly when a later
//! batch was written, that is when the damaged batch had been acknowledged.
//!
//! The search reads every offset after the damage (which may have shifted anything), so a
//! marker is recognised by its signature, not by where it lies: a request's fields are
//! written into records as they came, and a marker checked only by its CRC could be
//! planted in them by whoever sends requests (one per batch, through a power loss, would
//! refuse the next start). Without the key file nobody can write one.
//!
//! The cost is 25 bytes and one HMAC per `fdatasync` (a batch carries 1 to thousands of
//! records). Segments written by a vpan from before markers (2026-12-05) have none, and
//! damage in their last segment is cut as before, with the count of intact records after
//! it logged.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;

/// A marker's payload begins with this byte; every record's payload begins with its tag,
/// and no record kind has tag 0 (the journal checks it as it writes).
pub const TAG: u8 = 0;

/// A marker's payload: [`TAG`], the batch's first byte in its segment (u64 LE), and the
/// signature of that and the segment's number ([`MarkerKey::sign`]).
const PAYLOAD_BYTES: usize = 1 + 8 + SIGNATURE_BYTES;

/// The signature's bytes: the first of an HMAC-SHA256. Guessing 64 bits blind, with no
/// answer to learn from, is out of reach.
const SIGNATURE_BYTES: usize = 8;

/// A marker as framed in a segment: length, checksum, payload.
pub const FRAME_BYTES: usize = 8 + PAYLOAD_BYTES;

/// Signs and checks commit markers: HMAC-SHA256 under a key derived from the card key
/// (never the card key itself, which encrypts). Does not print its key.
#[derive(Clone)]
pub struct MarkerKey(ring::hmac::Key);

impl std::fmt::Debug for MarkerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MarkerKey(..)")
    }
}

impl MarkerKey {
    /// The marker key of a data directory whose card key is `card_key`.
    pub fn derive(card_key: &[u8; 32]) -> MarkerKey {
        let parent = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, card_key);
        let derived = ring::hmac::sign(&parent, b"vpan journal commit markers, v1");
        MarkerKey(ring::hmac::Key::new(
            ring::hmac::HMAC_SHA256,
            derived.as_ref(),
        ))
    }

    /// The signature of a marker of segment `segment` for a batch begun at `start`.
    fn sign(&self, segment: u64, start: u64) -> [u8; SIGNATURE_BYTES] {
        let mut signed = [0u8; 16];
        signed[..8].copy_from_slice(&segment.to_le_bytes());
        signed[8..].copy_from_slice(&start.to_le_bytes());
        let tag = ring::hmac::sign(&self.0, &signed);
        let mut out = [0u8; SIGNATURE_BYTES];
        out.copy_from_slice(&tag.as_ref()[..SIGNATURE_BYTES]);
        out
    }
}

/// Appends to `out` the marker of a batch that begins at byte `batch_start` of segment
/// `segment`.
pub fn push(key: &MarkerKey, segment: u64, batch_start: u64, out: &mut Vec<u8>) {
    let mut payload = [0u8; PAYLOAD_BYTES];
    payload[0] = TAG;
    payload[1..9].copy_from_slice(&batch_start.to_le_bytes());
    payload[9..].copy_from_slice(&key.sign(segment, batch_start));
    out.extend_from_slice(&(PAYLOAD_BYTES as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
}

/// The batch start an opening marker names: the first frame of every segment written since
/// 2026-12-07, so that a start knows the segment must end with a [`CLOSES_SEGMENT`] one
/// once a later segment follows it. No batch begins there.
pub const OPENS_SEGMENT: u64 = u64::MAX - 1;

/// The batch start a closing marker names: the last frame of a segment that a later one
/// follows, written and synced before that one is made (at a rotation, or at the start
/// that goes on from it). Without it, a segment cut at a record boundary (a file copied
/// while it grew, a `truncate` on the wrong file) would read as whole, and the approvals
/// cut from it would be given back to their cards.
pub const CLOSES_SEGMENT: u64 = u64::MAX;

/// Where the batch of the marker `payload` began, or `None` when `payload` is a record.
/// Not checked against its signature: a frame read in its place among the records is a
/// marker by its tag alone, which no record has.
pub fn batch_start(payload: &[u8]) -> Option<u64> {
    match payload {
        [TAG, rest @ ..] if rest.len() == PAYLOAD_BYTES - 1 => {
            Some(u64::from_le_bytes(rest[..8].try_into().ok()?))
        }
        _ => None,
    }
}

/// The batch start named by the marker `payload` of segment `segment`, when its signature
/// under `key` is right: an opening or closing marker counts only so (a record's fields
/// cannot plant one).
pub fn signed_start(payload: &[u8], key: &MarkerKey, segment: u64) -> Option<u64> {
    let start = batch_start(payload)?;
    (payload[9..] == key.sign(segment, start)).then_some(start)
}

/// True when the frame at the start of `bytes`, damaged, is the marker of segment
/// `segment`'s batch begun at `batch_began`: a marker's length and tag, and two of the
/// three fields that marker would have (its checksum, its start, its signature), so that
/// any one of them may be what was damaged. A record of a marker's length whose tag was
/// damaged to 0 has at most the start (its sequence number could equal it), never the
/// signature or the checksum.
pub fn ends_batch(bytes: &[u8], batch_began: u64, segment: u64, key: &MarkerKey) -> bool {
    let Some(frame) = bytes.get(..FRAME_BYTES) else {
        return false;
    };
    let mut expected = Vec::with_capacity(FRAME_BYTES);
    push(key, segment, batch_began, &mut expected);
    let fields_right = [4..8, 9..17, 17..FRAME_BYTES]
        .into_iter()
        .filter(|field| frame[field.clone()] == expected[field.clone()])
        .count();
    frame[..4] == expected[..4] && frame[8] == TAG && fields_right >= 2
}

/// The marker of segment `segment` framed at the start of `bytes`, if one is there whole,
/// with its checksum and its signature under `key`: where its batch began.
fn framed_at(bytes: &[u8], key: &MarkerKey, segment: u64) -> Option<u64> {
    let frame = bytes.get(..FRAME_BYTES)?;
    if frame[..4] != (PAYLOAD_BYTES as u32).to_le_bytes() {
        return None;
    }
    let payload = &frame[8..];
    if frame[4..8] != crc32fast::hash(payload).to_le_bytes() {
        return None;
    }
    signed_start(payload, key, segment)
}

/// How many intact markers of segment `segment` at `path`, after byte `damaged_at`, are
/// of batches that began after it: more than 0 means the batch holding the damage had
/// been acknowledged.
///
/// The whole rest of the file is searched, at every offset (the damage may have shifted
/// nothing, or anything), a chunk at a time, so a segment of any size costs little memory
/// (a 300 MB one took 0.2 s when cached).
pub fn later_commits(
    path: &Path,
    segment: u64,
    damaged_at: u64,
    key: &MarkerKey,
) -> io::Result<u64> {
    const CHUNK: usize = 1 << 20;
    let mut file = File::open(path)?;
    // A chunk no larger than what is there: a damaged tail is often a few bytes, and a
    // start should not zero a megabyte for them (the fuzzer ran 100 times slower).
    let rest = file.metadata()?.len().saturating_sub(damaged_at);
    let chunk = usize::try_from(rest).map_or(CHUNK, |rest| rest.clamp(FRAME_BYTES, CHUNK));
    file.seek(SeekFrom::Start(damaged_at))?;
    let mut window = Vec::with_capacity(chunk + FRAME_BYTES);
    let mut found = 0;
    loop {
        let kept = window.len();
        window.resize(kept + chunk, 0);
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
            .filter(|&i| window[i] == PAYLOAD_BYTES as u8)
            .filter_map(|i| framed_at(&window[i..], key, segment))
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

    fn key() -> MarkerKey {
        MarkerKey::derive(&[7; 32])
    }

    #[test]
    fn a_marker_reads_back_as_its_batch_start_under_its_key_and_segment_only() {
        let mut out = Vec::new();
        push(&key(), 3, 123_456, &mut out);
        assert_eq!(out.len(), FRAME_BYTES);
        assert!(ends_batch(&out, 123_456, 3, &key()));
        assert_eq!(framed_at(&out, &key(), 3), Some(123_456));
        assert_eq!(batch_start(&out[8..]), Some(123_456));
        // Another data directory's key, or another segment: not one of its markers.
        assert_eq!(framed_at(&out, &MarkerKey::derive(&[8; 32]), 3), None);
        assert_eq!(framed_at(&out, &key(), 4), None);
        // A record's payload starts with its tag (1 and up), or is of another length.
        let mut record = out[8..].to_vec();
        record[0] = 1;
        assert_eq!(batch_start(&record), None);
        assert_eq!(batch_start(&[TAG, 1, 2]), None);
        // A marker with a bit flipped is not one, though still its batch's end, known by
        // its start or its signature, whichever the damage spared.
        out[12] ^= 1;
        assert_eq!(framed_at(&out, &key(), 3), None);
        assert!(ends_batch(&out, 123_456, 3, &key()));
        out[20] ^= 1;
        assert!(!ends_batch(&out, 123_456, 3, &key()), "both damaged");
        // A record of a marker's length whose tag reads 0 names no batch, even when its
        // next 8 bytes (a record's sequence number) happen to equal the batch's start.
        let mut record = vec![0u8; FRAME_BYTES];
        record[..4].copy_from_slice(&17u32.to_le_bytes());
        record[4..8].copy_from_slice(&[1, 2, 3, 4]);
        record[9..17].copy_from_slice(&123_456u64.to_le_bytes());
        record[17..].fill(0x33);
        assert!(!ends_batch(&record, 123_456, 3, &key()));
    }

    #[test]
    fn a_marker_without_its_signature_is_not_counted_whatever_its_checksum() {
        // What a request's fields could plant in a record: a marker's frame, its CRC
        // right, its signature guessed.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("segment");
        let mut planted = Vec::new();
        push(&key(), 1, 1_000, &mut planted);
        planted[FRAME_BYTES - 1] ^= 1;
        let crc = crc32fast::hash(&planted[8..]).to_le_bytes();
        planted[4..8].copy_from_slice(&crc);
        let mut bytes = vec![7u8; 40];
        bytes.extend_from_slice(&planted);
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(later_commits(&path, 1, 20, &key()).unwrap(), 0);
    }

    #[test]
    fn later_commits_counts_the_markers_of_batches_begun_after_the_damage_wherever_they_lie() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("segment");
        // Junk, then markers of batches begun at 10 (the damaged one's) and 40 and 70
        // (later ones), the second across the search's first chunk boundary.
        let mut bytes = vec![7u8; 40];
        push(&key(), 1, 10, &mut bytes);
        bytes.resize(20 + (1 << 20) - 5, 3);
        push(&key(), 1, 40, &mut bytes);
        bytes.extend_from_slice(&[0; 100]);
        push(&key(), 1, 70, &mut bytes);
        std::fs::write(&path, &bytes).unwrap();
        let later = |at| later_commits(&path, 1, at, &key()).unwrap();
        assert_eq!(later(20), 2);
        assert_eq!(later(40), 1, "begun at the damage: its own");
        assert_eq!(later(70), 0);
        // A marker cut short by the end of the file is not one.
        bytes.truncate(bytes.len() - 1);
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(later(20), 1);
    }
}
