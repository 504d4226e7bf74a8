//! The store failing under the switch: a data directory on a real filesystem that runs
//! out of space. vpan must fail closed: an approval it cannot make durable is answered 96,
//! never 00, the hold is released, and every later one is refused the same way.
//!
//! The full filesystem is a small tmpfs mounted for the test, which needs root (CI and the
//! development machines run as root); without it the test says SKIPPED and passes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod rig;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use rig::*;
use vpan::cards::{Admit, CardKey, Decision, ResponseCode};
use vpan::tools::issuer_sim::SimConfig;

/// A tmpfs of `size` mounted on a fresh directory, unmounted on drop.
struct SmallDisk {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl SmallDisk {
    /// A 4 MiB disk for a test, or `None` (the test then passes, saying SKIPPED).
    fn for_test() -> Option<SmallDisk> {
        let disk = SmallDisk::mount("4m");
        if disk.is_none() {
            eprintln!("SKIPPED: cannot mount a small tmpfs here (needs root)");
        }
        disk
    }

    fn mount(size: &str) -> Option<SmallDisk> {
        let dir = tempfile::tempdir().unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| SmallDisk {
            path: dir.path().to_path_buf(),
            _dir: dir,
        })
    }

    /// Writes zeros until the filesystem refuses.
    fn fill(&self) {
        let mut f = std::fs::File::create(self.path.join("filler")).unwrap();
        let chunk = vec![0u8; 16 * 1024];
        while f.write_all(&chunk).is_ok() {}
        // Whatever is left is smaller than a chunk: take it byte by byte.
        while f.write_all(&[0]).is_ok() {}
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

fn data_dir(disk: &Path) -> PathBuf {
    disk.join("data")
}

/// The journal segments in `dir`, by number.
fn segments(dir: &Path) -> Vec<u64> {
    vpan::store::journal::list_segments(dir).unwrap()
}

#[tokio::test]
async fn a_full_disk_turns_approvals_into_96_and_releases_their_holds() {
    let Some(disk) = SmallDisk::for_test() else {
        return;
    };
    let dir = data_dir(&disk.path);
    let rig = rig(Some(SimConfig::default()), |c| c.store.data_dir = dir).await;
    // A cap far above the purchases below: the disk, not the card, must end them.
    let (card, real) = rig.issue(|c| c.amount_limit = 100_000_000).await;
    let mut net = Client::connect(rig.network).await;
    let before = purchase(&mut net, b"0100", &card.vpan, &card.expiry.0, 1_000);
    assert_eq!(
        code(&net.call(&before).await),
        "00",
        "approved while there is room"
    );

    disk.fill();
    // The journal's segment is zero-filled ahead of its records (up to one extent): the
    // purchases whose records fit there go on being approved (they are durable), until a
    // write needs space, then 96 for good. This bounds the loop by assuming a purchase's
    // records (hold and outcome) take at least 64 bytes; they take about 180.
    let mut codes = Vec::new();
    for _ in 0..vpan::store::segment::EXTENT_BYTES / 64 {
        let req = purchase(&mut net, b"0100", &card.vpan, &card.expiry.0, 1);
        let answer = net.call(&req).await;
        assert_eq!(answer.mti(), *b"0110");
        codes.push(code(&answer));
        if codes.len() > 3 && codes.iter().rev().take(3).all(|c| c == "96") {
            break;
        }
    }
    let first_refusal = codes
        .iter()
        .position(|c| c == "96")
        .expect("a full disk must end in 96");
    assert!(
        codes[first_refusal..].iter().all(|c| c == "96"),
        "fail closed for good once the store failed: {codes:?}"
    );
    assert!(codes[..first_refusal].iter().all(|c| c == "00"));

    let view = rig.cards.get(CardKey::of(&card.vpan)).unwrap();
    assert_eq!(view.held, 0, "the refused holds are released");
    assert_eq!(
        view.spent,
        1_000 + first_refusal as u64,
        "only the durable approvals count"
    );
    assert!(rig.cards.store_failed());
    eprintln!(
        "full disk: {first_refusal} approvals still fitted the journal's zeros ahead, then {} answered 96",
        codes.len() - first_refusal
    );

    // Nothing is answered from memory that may not be on disk: a repeat of the approval
    // made before gets 96, not its first answer, and an advice (which cannot be declined
    // for want of funds) is refused before it is counted.
    let repeat = repeat_of(&before);
    assert_eq!(code(&net.call(&repeat).await), "96");
    // A switch that is stopping still says 96 of a repeat it holds, and of new work only
    // that it takes none on (answered 91, as when the store is well).
    let draining = |msg: &vpan::iso8583::Message| {
        let req = vpan::switch::flow::auth_request(msg).unwrap();
        let key = CardKey::of(&card.vpan);
        rig.cards
            .authorize_admitting(key, &req, now(), Admit::RepeatsOnly)
    };
    assert!(matches!(
        draining(&repeat),
        Decision::Decline(ResponseCode::SYSTEM_ERROR)
    ));
    let new = purchase(&mut net, b"0100", &card.vpan, &card.expiry.0, 1);
    assert!(matches!(draining(&new), Decision::NotAdmitted));
    let advice = purchase(&mut net, b"0120", &card.vpan, &card.expiry.0, 500);
    let answer = net.call(&advice).await;
    assert_eq!((answer.mti(), code(&answer)), (*b"0130", "96".to_string()));
    assert_eq!(
        rig.cards.get(CardKey::of(&card.vpan)).unwrap().spent,
        view.spent,
        "the refused advice is not counted"
    );

    // The issuer approved the refused ones too: vpan reverses them there, so the real
    // account ends charged exactly what the card counts.
    let want = vpan::tools::issuer_sim::DEFAULT_BALANCE - view.spent as i64;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while rig.sim().balance(&real) != Some(want) && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(
        rig.sim().balance(&real),
        Some(want),
        "the issuer charged only what vpan counts"
    );
    rig.stop().await;
}

#[tokio::test]
async fn a_start_on_a_full_disk_says_so_leaves_no_segment_behind_and_starts_once_there_is_room() {
    let Some(disk) = SmallDisk::for_test() else {
        return;
    };
    let dir = data_dir(&disk.path);
    let rig = rig(None, |c| c.store.data_dir = dir.clone()).await;
    let (card, _) = rig.issue(|_| {}).await;
    rig.stop().await;

    disk.fill();
    let before = segments(&dir);
    let store = vpan::store::StoreConfig {
        data_dir: dir.clone(),
        ..Default::default()
    };
    let open = || {
        vpan::cards::Cards::open(
            &vpan::cards::CardsConfig::default(),
            &store,
            vpan::cards::LedgerConfig::default(),
        )
    };
    for attempt in 1..=3 {
        let error = open().err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            error.contains("No space left on device") && error.contains("MiB free"),
            "attempt {attempt}: the start must fail, naming the full disk: {error:?}"
        );
        assert_eq!(
            segments(&dir),
            before,
            "attempt {attempt} left a segment behind"
        );
    }

    std::fs::remove_file(disk.path.join("filler")).unwrap();
    let (cards, _) = open().expect("starts once there is room");
    assert!(
        cards.get(CardKey::of(&card.vpan)).is_some(),
        "the card issued before is still there"
    );
    assert_eq!(segments(&dir).len(), before.len() + 1);
}

#[tokio::test]
async fn a_snapshot_on_a_full_disk_fails_alone_and_approvals_go_on_in_the_zeros_ahead() {
    let Some(disk) = SmallDisk::for_test() else {
        return;
    };
    let dir = data_dir(&disk.path);
    let rig = rig(Some(SimConfig::default()), |c| {
        c.store.data_dir = dir.clone()
    })
    .await;
    let (card, _) = rig.issue(|c| c.amount_limit = 100_000_000).await;
    let mut net = Client::connect(rig.network).await;
    let first = purchase(&mut net, b"0100", &card.vpan, &card.expiry.0, 100);
    assert_eq!(code(&net.call(&first).await), "00");

    disk.fill();
    let before = segments(&dir);
    // A snapshot starts the next journal segment first, whose first extent has no room:
    // the snapshot fails, and is tried again later; the journal goes on in its segment.
    let error = rig.cards.snapshot().err().map(|e| e.to_string());
    assert!(
        error.as_deref().is_some_and(|e| e.contains("MiB free")),
        "{error:?}"
    );
    assert_eq!(segments(&dir), before, "no segment left behind");
    assert!(!rig.cards.store_failed(), "the store did not fail");
    let next = purchase(&mut net, b"0100", &card.vpan, &card.expiry.0, 100);
    assert_eq!(
        code(&net.call(&next).await),
        "00",
        "approved, durable in the zeros written ahead"
    );
    rig.stop().await;
}
