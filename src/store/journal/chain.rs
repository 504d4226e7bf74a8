//! The journal's segments as a start reads them, one chain: a segment must end with its
//! closing marker when the next one opens with its marker (else it was cut short), empty
//! leftovers at the end are removed, and the last segment with frames is closed before the
//! next one is made ([`crate::store::marker::CLOSES_SEGMENT`]).

use std::path::{Path, PathBuf};

use super::{LEFTOVER_MAX_BYTES, ReadReport, holds_nothing, loss_accepted_path, segment_path};
use crate::store::StoreError;
use crate::store::marker::MarkerKey;

/// What a start has read of the journal's segments, in order.
pub struct Chain {
    dir: PathBuf,
    /// The segments listed at the start, ascending.
    segments: Vec<u64>,
    /// The snapshot's first segment (0 without a snapshot): kept whatever it holds.
    first: u64,
    /// The last segment that holds anything: the empty ones after it hold nothing, so a
    /// torn tail before them is the last batch's, cut as the last segment's is.
    last_holding: Option<u64>,
    /// The segment read before the one being read (passing over an empty one whose loss
    /// the operators accepted, put in place of one missing): whether it ends closed, which
    /// the check of the next opened segment asks.
    before: Option<(u64, ReadReport)>,
    /// The last segment read with any frame in it: where its records end, to close it
    /// before the next segment is made, unless it is closed already (a crash between a
    /// rotation's closing marker and its new segment).
    with_frames: Option<(u64, ReadReport)>,
    /// The empty segments read since (a file a rotation or a start could not finish
    /// making).
    empty_since: Vec<u64>,
}

impl Chain {
    /// A chain over `segments` (ascending) of `dir`, from the snapshot's first segment
    /// `first` on.
    pub fn new(dir: &Path, segments: &[u64], first: u64) -> Result<Chain, StoreError> {
        let mut last_holding = None;
        for &n in segments.iter().rev() {
            if n <= first
                || !holds_nothing(&segment_path(dir, n))
                    .map_err(StoreError::io("reading a journal segment"))?
            {
                last_holding = Some(n);
                break;
            }
        }
        Ok(Chain {
            dir: dir.to_path_buf(),
            segments: segments.to_vec(),
            first,
            last_holding,
            before: None,
            with_frames: None,
            empty_since: Vec::new(),
        })
    }

    /// True when no segment after `n` holds anything: damage at its end is a torn last
    /// batch, not damage to durable records.
    pub fn is_last(&self, n: u64) -> bool {
        self.last_holding.is_none_or(|last| n >= last)
    }

    /// Refuses segment `n` as read, `size` bytes long before any cut, when it is zeros
    /// only and longer than a create leaves (it held records, zeroed since), unless its
    /// loss is accepted. Asked before the cut of its zeros, which would leave nothing to
    /// tell it by.
    pub fn check_zeroed(&self, n: u64, size: u64, report: &ReadReport) -> Result<(), StoreError> {
        let path = segment_path(&self.dir, n);
        if report.good_bytes == 0
            && report.bad_bytes == 0
            && size > LEFTOVER_MAX_BYTES
            && !loss_accepted_path(&path).exists()
        {
            return Err(StoreError::UnclosedSegment {
                path,
                good_bytes: 0,
            });
        }
        Ok(())
    }

    /// Refuses the segment read before segment `n` when `n` opens with its marker and that
    /// one does not end closed (cut short since), unless its loss is accepted. Decided by
    /// this one's opening marker, not by the one before's own, which a cut may have taken
    /// too (an emptied file). One that a vpan before 2026-12-07 made does not open so, and
    /// asks nothing of the one before.
    pub fn check_before(&self, report: &ReadReport) -> Result<(), StoreError> {
        if let Some((before, previous)) = self.before
            && report.opened
            && !previous.closed
        {
            let path = segment_path(&self.dir, before);
            let accepted = loss_accepted_path(&path);
            if !accepted.exists() {
                return Err(StoreError::UnclosedSegment {
                    path,
                    good_bytes: previous.good_bytes,
                });
            }
            tracing::warn!(
                segment = before,
                accepted = %accepted.display(),
                "journal segment cut short, without its closing marker: going on without the records cut from it, as the operators accepted"
            );
        }
        Ok(())
    }

    /// Notes segment `n` once read and checked, and its torn tail cut if it had one: empty
    /// then (a create that a crash stopped part way through its opening marker) as much as
    /// one that never held a byte.
    pub fn read(&mut self, n: u64, report: ReadReport) {
        let empty = report.good_bytes == 0;
        if !(empty && loss_accepted_path(&segment_path(&self.dir, n)).exists()) {
            self.before = Some((n, report));
        }
        if empty {
            self.empty_since.push(n);
        } else {
            self.with_frames = Some((n, report));
            self.empty_since.clear();
        }
    }

    /// Ends the chain once every segment is read (`last`: the highest read, or the
    /// snapshot's first, 0 without one): refuses two or more empty segments after a closed
    /// one, removes the empty ones at the end and closes the last one kept. Returns the
    /// number after which the next segment is made: the last one kept, or the snapshot's
    /// first (0 without one) when none is.
    pub fn finish(self, last: u64, key: &MarkerKey) -> Result<u64, StoreError> {
        // One empty segment after a closed one is a create that a crash or a full disk
        // stopped; the start after removes it before it makes that number again. Two or
        // more were followed: the first had its markers and its records, lost since.
        let unaccepted: Vec<u64> = self
            .empty_since
            .iter()
            .copied()
            .filter(|&n| !loss_accepted_path(&segment_path(&self.dir, n)).exists())
            .collect();
        if self.with_frames.is_some_and(|(_, report)| report.closed) && unaccepted.len() > 1 {
            return Err(StoreError::UnclosedSegment {
                path: segment_path(&self.dir, unaccepted[0]),
                good_bytes: 0,
            });
        }
        // Removed, and their numbers made again, so that the one with frames is followed by
        // a segment that opens with its marker, and a cut of it is refused from the next
        // start on; the snapshot's first is kept, as a start requires it. The highest
        // first: a start killed part way leaves the rest at the end, not a gap.
        let removed: Vec<u64> = self
            .empty_since
            .iter()
            .copied()
            .filter(|&n| n > self.first)
            .collect();
        let what = "removing an empty journal segment";
        for &n in removed.iter().rev() {
            let path = segment_path(&self.dir, n);
            std::fs::remove_file(&path).map_err(StoreError::io(what))?;
            let _ = std::fs::remove_file(loss_accepted_path(&path));
        }
        let mut last = last;
        if let Some(&lowest) = removed.first() {
            super::sync_dir(&self.dir).map_err(StoreError::io(what))?;
            last = (lowest - 1).max(self.first);
        }
        // Closed before the next one is made, so that a segment with a later one beside it
        // always has its closing marker: one without it was cut short. The last one kept is
        // the last with frames, or, with none, an empty one that stays (the snapshot's
        // first, written by a vpan before 2026-12-07).
        let last_kept = match self.with_frames {
            Some((n, report)) => Some((n, report.good_bytes, report.closed)),
            None => self.segments.contains(&last).then_some((last, 0, false)),
        };
        if let Some((n, records_end, false)) = last_kept {
            crate::store::segment::seal_file(&segment_path(&self.dir, n), n, records_end, key)
                .map_err(StoreError::io("closing the last journal segment"))?;
        }
        Ok(last)
    }
}
