//! One journal segment on disk, as the writer thread writes it.
//!
//! A segment grows by zero-filled extents ([`EXTENT_BYTES`]) written ahead of the records,
//! so that a batch overwrites blocks the file already has: its `fdatasync` then flushes
//! the data alone, where an append that grows the file must also flush the file's size
//! and block map. On this machine's disk (a `python3` probe, 3,000-byte commits, 2,000
//! each way) that took a commit from 208–231 µs to 147–161 µs at p50, and its kernel CPU
//! from 62 µs to 37–39 µs. The zeros read back as the end of the records (no record has
//! length 0, see [`super::journal::frame`]), and a segment is cut to its records when it
//! is closed.
//!
//! The cost: the batch that meets the end of the zeros writes the next extent first, about
//! 3.5 ms here for 1 MiB, once per 1 MiB of records (a purchase's hold and outcome take
//! about 180 bytes, so at 100,000 approvals a second about 17 such batches a second). On a
//! copy-on-write or compressing filesystem (btrfs, ZFS) overwrites allocate anyway and
//! zeros may be stored as holes, so there the extents buy nothing.
//!
//! A segment that a snapshot covers is deleted by [`remove`], in cuts, so that freeing its
//! blocks does not hold up the journal's commits.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use super::journal::{segment_path, sync_dir};
use super::marker::{self, MarkerKey};

/// How far ahead of its records a segment is zero-filled, in one write made durable with
/// the batch that needs it. Smaller extents cost more syncs that change the file's size,
/// larger ones a longer stall for the batch that meets them.
pub const EXTENT_BYTES: u64 = 1 << 20;

/// The segment being written.
pub(crate) struct Segment {
    /// Its number in the data directory (`journal-NNNNNNNNNN.log`).
    pub(crate) number: u64,
    /// The open file.
    file: File,
    /// Where the records end: everything before is durable or being made so.
    end: u64,
    /// Where the durable zeros after the records end: the file's length.
    zeroed_to: u64,
    /// The data directory, which the crate's tests can hold or fail the syncs of
    /// ([`sync_gate`]).
    #[cfg(test)]
    dir: std::path::PathBuf,
}

impl Segment {
    /// Creates segment `number` in `dir`. It must not exist: a new segment starts empty,
    /// since records written after an old tail of zeros would never be read back.
    ///
    /// It opens with an opening marker ([`marker::OPENS_SEGMENT`]) signed under `key`, so
    /// that a start requires a closing one at its end once a later segment follows.
    ///
    /// Its first extent of zeros is written and synced here rather than with the first
    /// batch: a disk without room for it fails vpan's start with an error that says so
    /// (or a snapshot's rotation, which is tried again later while the current segment
    /// goes on), where it would otherwise fail the first approval and the store with it;
    /// and the file is removed rather than left behind by every attempt.
    pub(crate) fn create(dir: &Path, number: u64, key: &MarkerKey) -> io::Result<Segment> {
        let opening = marker_frame(key, number, marker::OPENS_SEGMENT);
        let path = segment_path(dir, number);
        let file = OpenOptions::new()
            .create_new(true)
            .mode(super::PRIVATE_FILE_MODE)
            .read(true)
            .write(true)
            .open(&path)?;
        let prepared = (|| {
            write_zeros(&file, 0, EXTENT_BYTES)?;
            file.write_all_at(&opening, 0)?;
            #[cfg(test)]
            sync_gate::pass(dir)?;
            file.sync_data()?;
            sync_dir(dir)
        })();
        if let Err(e) = prepared {
            drop(file);
            // Synced gone: a power loss must not bring back an empty segment after the
            // current one, which goes on (and is not closed, then, at its end).
            let _ = std::fs::remove_file(&path).and_then(|()| sync_dir(dir));
            return Err(if e.kind() == io::ErrorKind::StorageFull {
                io::Error::new(
                    e.kind(),
                    format!(
                        "{e}: a new journal segment needs {} MiB free in the data directory",
                        EXTENT_BYTES >> 20
                    ),
                )
            } else {
                e
            });
        }
        Ok(Segment {
            number,
            file,
            end: opening.len() as u64,
            zeroed_to: EXTENT_BYTES,
            #[cfg(test)]
            dir: dir.to_path_buf(),
        })
    }

    /// Writes `batch` after the last record (zero-filling the next extent first when the
    /// batch does not fit in the zeros ahead) and makes both durable with one
    /// `fdatasync`.
    pub(crate) fn commit(&mut self, batch: &[u8]) -> io::Result<()> {
        let end = self.end + batch.len() as u64;
        if end > self.zeroed_to {
            let to = end.next_multiple_of(EXTENT_BYTES);
            // The batch itself covers up to `end`.
            write_zeros(&self.file, end, to)?;
            self.zeroed_to = to;
        }
        self.file.write_all_at(batch, self.end)?;
        #[cfg(test)]
        sync_gate::pass(&self.dir)?;
        self.file.sync_data()?;
        self.end = end;
        Ok(())
    }

    /// Ends the segment with its closing marker ([`marker::CLOSES_SEGMENT`]), durable,
    /// before a later segment is made. Should that one not be made after all, [`unseal`]
    /// takes it back.
    ///
    /// [`unseal`]: Segment::unseal
    pub(crate) fn seal(&mut self, key: &MarkerKey) -> io::Result<()> {
        self.commit(&marker_frame(key, self.number, marker::CLOSES_SEGMENT))
    }

    /// Takes back the closing marker [`Segment::seal`] just wrote, when the later segment
    /// could not be made and this one goes on: the next batch is written over it (a batch,
    /// a record and its marker, is longer than it). A closing marker is thus only ever a
    /// segment's last frame; one left inside would let a cut right after it read as a
    /// segment that ended there. A crash before that batch leaves this segment last and
    /// closed, which loses nothing.
    pub(crate) fn unseal(&mut self) {
        self.end -= marker::FRAME_BYTES as u64;
    }

    /// Where the records end: the next batch's first byte.
    pub(crate) fn end(&self) -> u64 {
        self.end
    }

    /// Cuts the zeros after the last record, once nothing more will be written here. Not
    /// synced: zeros left by a crash read as the end of the records all the same.
    pub(crate) fn close(&self) {
        if self.zeroed_to > self.end
            && let Err(e) = self.file.set_len(self.end)
        {
            tracing::warn!(segment = self.number, error = %e, "could not cut the zeros after a closed journal segment's records");
        }
    }
}

/// Segment `number`'s marker naming `start` (its opening or its closing), framed.
fn marker_frame(key: &MarkerKey, number: u64, start: u64) -> Vec<u8> {
    let mut frame = Vec::with_capacity(marker::FRAME_BYTES);
    marker::push(key, number, start, &mut frame);
    frame
}

/// Ends segment `number` at `path` with its closing marker at byte `records_end`, where its
/// records end (anything after, zeros that were not cut, is cut), durable: what a start
/// does for the segment the last run wrote, before it makes the next.
pub(crate) fn seal_file(
    path: &Path,
    number: u64,
    records_end: u64,
    key: &MarkerKey,
) -> io::Result<()> {
    let closing = marker_frame(key, number, marker::CLOSES_SEGMENT);
    let file = OpenOptions::new().write(true).open(path)?;
    file.write_all_at(&closing, records_end)?;
    file.set_len(records_end + closing.len() as u64)?;
    file.sync_data()
}

/// How much of a covered segment [`remove`] cuts at a time.
const SHRINK_STEP: u64 = 4 << 20;

/// The pause between two cuts, so that the journal's commits come between them.
const SHRINK_PAUSE: std::time::Duration = std::time::Duration::from_millis(1);

/// Deletes segment `number` of `dir`, once a snapshot holds everything in it, without
/// stalling the journal. One unlink of a 130 MB segment held a concurrent `fdatasync`
/// (which every approval waits for) for up to 24–34 ms on this machine's ext4, as the
/// filesystem freed all of its blocks in one go; cut 4 MiB at a time with a millisecond
/// between cuts, for 1.7–2.5 ms at most (`benches/probes/fsync_beside_snapshot.py`, three
/// rounds). A crash part way leaves a shorter covered segment, which recovery deletes
/// unread.
pub(crate) fn remove(dir: &Path, number: u64) -> io::Result<()> {
    let path = segment_path(dir, number);
    let file = OpenOptions::new().write(true).open(&path)?;
    let mut len = file.metadata()?.len();
    while len > 0 {
        len = len.saturating_sub(SHRINK_STEP);
        file.set_len(len)?;
        std::thread::sleep(SHRINK_PAUSE);
    }
    drop(file);
    std::fs::remove_file(&path)?;
    let _ = std::fs::remove_file(super::journal::loss_accepted_path(&path));
    Ok(())
}

/// Writes zeros over `[from, to)` of `file`: real blocks, not a hole, so that later
/// records overwrite blocks the file already has.
fn write_zeros(file: &File, from: u64, to: u64) -> io::Result<()> {
    const CHUNK: usize = 64 * 1024;
    static ZEROS: [u8; CHUNK] = [0; CHUNK];
    let mut at = from;
    while at < to {
        let n = (to - at).min(CHUNK as u64) as usize;
        file.write_all_at(&ZEROS[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_covered_segment_of_any_length_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        for (number, len) in [(1, 0), (2, 5), (3, 3 * SHRINK_STEP + 7)] {
            let file = File::create(segment_path(dir.path(), number)).unwrap();
            write_zeros(&file, 0, len).unwrap();
            remove(dir.path(), number).unwrap();
            assert!(!segment_path(dir.path(), number).exists());
        }
        assert!(
            remove(dir.path(), 9).is_err(),
            "a missing segment is an error"
        );
    }
}

/// Holds or fails the commits' syncs of chosen data directories, so that the crate's tests
/// can see what waits for an `fdatasync` (an approval's answer must) and what a failed one
/// does (fail closed), without root or a real disk fault.
#[cfg(test)]
pub(crate) mod sync_gate {
    use std::io;
    use std::path::{Path, PathBuf};

    use parking_lot::{Condvar, Mutex};

    /// What the syncs of a directory do.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub(crate) enum Gate {
        /// Wait until the gate is lifted.
        Held,
        /// Fail, as a disk that lost the data would.
        Failing,
        /// Fail the next sync only, then lift: a disk full for a moment, so that what
        /// follows the failure (cutting a write back, the next write) goes through.
        FailingOnce,
    }

    /// The gated directories, by canonical path, and the syncs held at them now.
    static GATES: Mutex<Gates> = Mutex::new(Gates {
        set: Vec::new(),
        held: Vec::new(),
    });
    /// Signalled whenever a gate changes, or a sync arrives at a held one.
    static CHANGED: Condvar = Condvar::new();

    struct Gates {
        /// The gates, by canonical path.
        set: Vec<(PathBuf, Gate)>,
        /// One entry per sync waiting at a held gate, by its directory.
        held: Vec<PathBuf>,
    }

    fn canonical(dir: &Path) -> PathBuf {
        dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf())
    }

    /// Sets the gate of `dir` until the returned guard is dropped (also when the test
    /// panics: a writer left waiting would hang the test's end).
    #[must_use = "the gate is lifted when the guard is dropped"]
    pub(crate) fn set(dir: &Path, gate: Gate) -> Lifted {
        let dir = canonical(dir);
        let mut gates = GATES.lock();
        gates.set.retain(|(d, _)| *d != dir);
        gates.set.push((dir.clone(), gate));
        CHANGED.notify_all();
        Lifted(dir)
    }

    /// Lifts its gate when dropped.
    pub(crate) struct Lifted(PathBuf);

    impl Drop for Lifted {
        fn drop(&mut self) {
            GATES.lock().set.retain(|(d, _)| *d != self.0);
            CHANGED.notify_all();
        }
    }

    /// Called before each commit's sync of a segment in `dir`.
    pub(crate) fn pass(dir: &Path) -> io::Result<()> {
        let dir = canonical(dir);
        let mut gates = GATES.lock();
        let mut counted = false;
        let passed = loop {
            match gates.set.iter().find(|(d, _)| *d == dir).map(|(_, g)| *g) {
                None => break Ok(()),
                Some(Gate::Failing) => break Err(io::Error::other("sync failed (test gate)")),
                Some(Gate::FailingOnce) => {
                    gates.set.retain(|(d, _)| *d != dir);
                    CHANGED.notify_all();
                    break Err(io::Error::other("sync failed once (test gate)"));
                }
                Some(Gate::Held) => {
                    if !counted {
                        gates.held.push(dir.clone());
                        counted = true;
                        CHANGED.notify_all();
                    }
                    CHANGED.wait(&mut gates);
                }
            }
        };
        if counted && let Some(i) = gates.held.iter().position(|d| *d == dir) {
            gates.held.swap_remove(i);
        }
        passed
    }

    /// Returns once a sync is waiting at the held gate of `dir`.
    pub(crate) fn wait_until_one_is_held(dir: &Path) {
        let dir = canonical(dir);
        let mut gates = GATES.lock();
        while !gates.held.contains(&dir) {
            CHANGED.wait(&mut gates);
        }
    }
}
