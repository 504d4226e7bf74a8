//! Snapshots: all state in one file, so a restart replays only the journal written since.
//!
//! A snapshot is written to `snapshot.tmp`, synced, renamed over `snapshot.bin` and the
//! directory synced: a crash at any point leaves either the old or the new snapshot, never
//! half of one. Records use the journal's framing (length, CRC-32, payload); unlike the
//! journal, a snapshot with a bad record is refused as a whole, since it was complete and
//! synced before it was renamed into place and damage there is not a crash artefact.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use super::StoreError;
use super::journal::{Encode, frame, read_records, sync_dir};

/// The snapshot in force.
pub const SNAPSHOT_FILE: &str = "snapshot.bin";
/// A snapshot being written.
const TEMP_FILE: &str = "snapshot.tmp";

/// Bytes written between two syncs of a snapshot being written. Synced only at the end,
/// a snapshot of tens of MB reached the disk in one burst, and the journal's commits
/// (every approval waits for one) queued behind it: beside 60 MB written so, a probe of
/// journal-like commits had a p99 of 13–16.5 ms; synced every 1 MiB, 1.2–1.3 ms in two
/// rounds of three (`benches/probes/fsync_beside_snapshot.py`). The worst commit did not
/// improve (17–36 ms against 30–32 ms): the disk has stalls of its own.
const SYNC_EVERY_BYTES: usize = 1 << 20;

/// Writes a snapshot record by record; nothing is visible until [`SnapshotWriter::commit`].
pub struct SnapshotWriter {
    /// The temporary file, buffered.
    out: BufWriter<File>,
    /// Reused framing buffer.
    buf: Vec<u8>,
    /// The temporary file's name, removed unless the snapshot is committed.
    temp: super::TempFile,
    /// The data directory.
    dir: PathBuf,
    /// Records written.
    records: u64,
    /// Bytes written since the last sync.
    unsynced: usize,
}

impl SnapshotWriter {
    /// Starts a new snapshot in `dir` (replacing any leftover temporary file).
    pub fn create(dir: &Path) -> Result<SnapshotWriter, StoreError> {
        let (temp, file) = super::TempFile::create(dir.join(TEMP_FILE))
            .map_err(StoreError::io("creating a snapshot"))?;
        Ok(SnapshotWriter {
            out: BufWriter::with_capacity(1 << 20, file),
            buf: Vec::with_capacity(512),
            temp,
            dir: dir.to_path_buf(),
            records: 0,
            unsynced: 0,
        })
    }

    /// Adds one record.
    pub fn write<R: Encode + ?Sized>(&mut self, record: &R) -> Result<(), StoreError> {
        self.buf.clear();
        frame(record, &mut self.buf);
        self.records += 1;
        self.out
            .write_all(&self.buf)
            .map_err(StoreError::io("writing a snapshot"))?;
        self.unsynced += self.buf.len();
        if self.unsynced >= SYNC_EVERY_BYTES {
            self.out
                .flush()
                .map_err(StoreError::io("writing a snapshot"))?;
            self.out
                .get_ref()
                .sync_data()
                .map_err(StoreError::io("syncing a snapshot"))?;
            self.unsynced = 0;
        }
        Ok(())
    }

    /// Syncs the file, renames it into place and syncs the directory. Returns the number
    /// of records.
    pub fn commit(self) -> Result<u64, StoreError> {
        let file = self
            .out
            .into_inner()
            .map_err(|e| StoreError::io("writing a snapshot")(e.into_error()))?;
        file.sync_all()
            .map_err(StoreError::io("syncing a snapshot"))?;
        drop(file);
        self.temp
            .rename_to(&self.dir.join(SNAPSHOT_FILE))
            .map_err(StoreError::io("renaming a snapshot into place"))?;
        sync_dir(&self.dir).map_err(StoreError::io("syncing the data directory"))?;
        Ok(self.records)
    }
}

/// Removes the temporary file of a snapshot a stop interrupted, at a start.
pub fn remove_leftover(dir: &Path) {
    super::TempFile::remove_leftover(&dir.join(TEMP_FILE));
}

/// Reads the snapshot in `dir`, handing each record's payload to `f`. `Ok(false)` when
/// there is none; an error when it is damaged.
pub fn read(
    dir: &Path,
    f: impl FnMut(&[u8]) -> Result<(), StoreError>,
) -> Result<bool, StoreError> {
    let path = dir.join(SNAPSHOT_FILE);
    if !path.exists() {
        return Ok(false);
    }
    let report = read_records(&path, f)?;
    // A snapshot is written whole, with nothing after its records: any byte there, zero
    // or not, is damage.
    if report.bad_bytes > 0 || report.zeros > 0 {
        return Err(damaged(
            &path,
            format!(
                "after {} whole records, {} bytes from byte {} do not read as records",
                report.records,
                report.bad_bytes + report.zeros,
                report.good_bytes
            ),
        ));
    }
    Ok(true)
}

/// [`StoreError::DamagedSnapshot`] of the snapshot at `path`.
fn damaged(path: &Path, what: impl Into<String>) -> StoreError {
    StoreError::DamagedSnapshot {
        path: path.to_path_buf(),
        what: what.into(),
    }
}

/// The first record of the snapshot in `dir` (its header), or `None` when there is none.
pub fn first_record(dir: &Path) -> Result<Option<Vec<u8>>, StoreError> {
    let path = dir.join(SNAPSHOT_FILE);
    let mut file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StoreError::io("opening the snapshot")(e)),
    };
    let mut head = [0u8; 8];
    std::io::Read::read_exact(&mut file, &mut head)
        .map_err(|_| damaged(&path, "its first record is cut short"))?;
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    if len == 0 || len > super::journal::MAX_RECORD_BYTES {
        return Err(damaged(&path, "its first record's length is impossible"));
    }
    let mut payload = vec![0u8; len];
    std::io::Read::read_exact(&mut file, &mut payload)
        .map_err(|_| damaged(&path, "its first record is cut short"))?;
    if crc32fast::hash(&payload) != crc {
        return Err(damaged(&path, "its first record fails its checksum"));
    }
    Ok(Some(payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Rec(u8);

    impl Encode for Rec {
        fn encode(&self, out: &mut Vec<u8>) {
            out.push(self.0);
        }
    }

    fn read_all(dir: &Path) -> Result<Vec<u8>, StoreError> {
        let mut got = Vec::new();
        read(dir, |p| {
            got.extend_from_slice(p);
            Ok(())
        })?;
        Ok(got)
    }

    #[test]
    fn a_committed_snapshot_replaces_the_old_one_whole() {
        let dir = tempfile::tempdir().unwrap();
        for round in 0..2u8 {
            let mut w = SnapshotWriter::create(dir.path()).unwrap();
            for i in 0..3 {
                w.write(&Rec(round * 10 + i)).unwrap();
            }
            assert_eq!(w.commit().unwrap(), 3);
        }
        assert_eq!(read_all(dir.path()).unwrap(), vec![10, 11, 12]);
    }

    #[test]
    fn an_uncommitted_snapshot_is_invisible() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = SnapshotWriter::create(dir.path()).unwrap();
        w.write(&Rec(1)).unwrap();
        drop(w);
        assert_eq!(read_all(dir.path()).unwrap(), Vec::<u8>::new());
    }

    #[test]
    fn a_snapshot_larger_than_its_sync_pieces_reads_back_whole() {
        struct Big(u32);
        impl Encode for Big {
            fn encode(&self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.0.to_le_bytes());
                out.extend_from_slice(&[0xa5; 1000]);
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let n = 3 * SYNC_EVERY_BYTES as u32 / 1000;
        let mut w = SnapshotWriter::create(dir.path()).unwrap();
        for i in 0..n {
            w.write(&Big(i)).unwrap();
        }
        assert_eq!(w.commit().unwrap(), u64::from(n));
        let mut seen = 0u32;
        read(dir.path(), |p| {
            assert_eq!(p[..4], seen.to_le_bytes());
            assert_eq!(p.len(), 1004);
            seen += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, n);
    }

    #[test]
    fn a_damaged_snapshot_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = SnapshotWriter::create(dir.path()).unwrap();
        w.write(&Rec(1)).unwrap();
        w.write(&Rec(2)).unwrap();
        w.commit().unwrap();
        let path = dir.path().join(SNAPSHOT_FILE);
        let mut b = std::fs::read(&path).unwrap();
        let last = b.len() - 1;
        b[last] ^= 1;
        std::fs::write(&path, b).unwrap();
        let said = read_all(dir.path()).unwrap_err().to_string();
        assert!(
            said.starts_with(&format!(
                "{}: the snapshot is damaged (after 1 whole records",
                path.display()
            )),
            "{said}"
        );
        assert!(said.contains("restore it"), "{said}");
    }
}
