//! Any bytes as a journal segment, read the way recovery reads one (`read_segment`, each
//! record's payload through `Event::decode`, commit markers skipped), and a damaged one
//! searched for the commit markers after the damage (`marker::later_commits`). It must
//! never panic, and its report must account for every byte of the file: good records,
//! then either damage or zeros written ahead.
//!
//! Input: a mode byte, then
//! - mode 0: the segment's bytes as they are (framing, torn tails, zeros);
//! - otherwise: payloads separated by 0xFF, each framed as the writer frames a record
//!   (so `Event::decode` sees arbitrary payloads behind valid CRCs), after the segment's
//!   signed opening marker when the mode is odd and before its closing marker when its
//!   bit 1 is set, followed by `mode * 16` zero bytes, as a segment vpan was killed in
//!   ends; read whole, such a segment reads as opened and closed as its markers say.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vpan::cards::event::Event;
use vpan::store::journal::{Encode, frame, read_segment};
use vpan::store::marker;

struct Raw<'a>(&'a [u8]);

impl Encode for Raw<'_> {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.0);
    }
}

/// The segment's file, removed when the input is done: its name is per process, so every
/// fuzzing run (one per CI run) otherwise left one behind in the temp directory.
struct Scratch(std::path::PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    // Markers signed under this key are for the fuzzer to plant as it can.
    let key = marker::MarkerKey::derive(&[7; 32]);
    let (opens, closes) = (mode != 0 && mode & 1 == 1, mode != 0 && mode & 2 == 2);
    let segment = if mode == 0 {
        rest.to_vec()
    } else {
        let mut out = Vec::new();
        if opens {
            marker::push(&key, 1, marker::OPENS_SEGMENT, &mut out);
        }
        // An empty payload is not a record the writer makes (its header would read as zeros).
        for payload in rest.split(|&b| b == 0xFF).filter(|p| !p.is_empty()) {
            frame(&Raw(payload), &mut out);
        }
        if closes {
            marker::push(&key, 1, marker::CLOSES_SEGMENT, &mut out);
        }
        out.resize(out.len() + usize::from(mode) * 16, 0);
        out
    };
    let scratch =
        Scratch(std::env::temp_dir().join(format!("vpan-fuzz-journal-{}", std::process::id())));
    let path = &scratch.0;
    if std::fs::write(path, &segment).is_err() {
        return;
    }
    let result = read_segment(path, 1, &key, |payload| Event::decode(payload).map(|_| ()));
    if let Ok(report) = result {
        let total = segment.len() as u64;
        assert_eq!(
            report.good_bytes + report.bad_bytes + report.zeros,
            total,
            "every byte is a record, damage or zeros: {report:?}"
        );
        assert!(
            report.bad_bytes == 0 || report.zeros == 0,
            "a tail is damage or zeros, not both: {report:?}"
        );
        assert!(
            segment[report.good_bytes as usize..]
                .iter()
                .all(|&b| b == 0)
                == (report.bad_bytes == 0),
            "a tail is reported as zeros exactly when it is all zeros: {report:?}"
        );
        if report.bad_bytes == 0 && opens {
            assert!(report.opened, "its opening marker read: {report:?}");
        }
        if report.bad_bytes == 0 && closes {
            assert!(report.closed, "its closing marker read last: {report:?}");
        }
        if report.bad_bytes > 0 {
            // Any bytes searched for markers: never a panic.
            marker::later_commits(path, 1, report.good_bytes, &key).expect("the segment reads");
        }
    }
});
