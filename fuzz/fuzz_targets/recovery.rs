//! Recovery from a data directory whose records are damaged yet carry valid CRCs: what a
//! bug in an older writer, or a disk that returns the wrong block with its checksum, would
//! leave. `Cards::open` must refuse it with an error or recover from it, never panic or
//! ask for absurd memory, and a recovered state must snapshot again.
//!
//! A real data directory is made once per process through the public API (cards of every
//! kind, holds, an issuer decline, an advice, a reversal, a snapshot, then more journal
//! records after it, and a restart's holds in doubt settled by the issuer). Each input edits one record of its snapshot or of its journal, which
//! is then framed again with a valid CRC, so the decoders behind the CRC check see it:
//!
//! - byte 0: the file (even: `snapshot.bin`, odd: the journal segment after it);
//! - byte 1: the record, modulo the file's count;
//! - bytes 2-3: an offset in it (little-endian, modulo its length + 1);
//! - byte 4: the edit (modulo 3): 0 overwrite from the offset, 1 cut at the offset then
//!   append, 2 insert the rest as a new record after this one;
//! - the rest: the bytes to write.
#![no_main]

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use vpan::cards::vpan::random_luhn;
use vpan::cards::{
    AcceptorId, Amounts, AuthRequest, CardSpec, Cards, CardsConfig, Controls, Expiry,
    IssuerOutcome, Kind, LedgerConfig, MerchantLock, OriginalData, ResponseCode, ReversalRequest,
    Status, TxKey,
};
use vpan::pan::Pan;
use vpan::store::StoreConfig;
use vpan::store::journal::{
    Encode, frame, list_segments, read_records, read_segment, segment_path,
};
use vpan::store::snapshot::SNAPSHOT_FILE;

const NOW: u64 = 1_795_706_982;

/// The template directory's files: the key, the snapshot's records, the journal's.
struct Template {
    key: Vec<u8>,
    snapshot: Vec<Vec<u8>>,
    segment: u64,
    journal: Vec<Vec<u8>>,
}

static TEMPLATE: LazyLock<Template> = LazyLock::new(make_template);

fn store(dir: &Path) -> StoreConfig {
    StoreConfig {
        data_dir: dir.to_path_buf(),
        ..Default::default()
    }
}

fn open(dir: &Path) -> Result<Cards, String> {
    Cards::open(
        &CardsConfig::default(),
        &store(dir),
        LedgerConfig::default(),
    )
    .map(|(cards, _)| cards)
    .map_err(|e| e.to_string())
}

fn request(mti: &[u8; 4], amount: u64, stan: &str, shop: &str) -> AuthRequest {
    AuthRequest {
        mti: *mti,
        kind: Kind::classify(b"000000", amount),
        amounts: Amounts {
            transaction: amount,
            transaction_currency: 978,
            billing: None,
        },
        expiry: None,
        mcc: Some(5411),
        acceptor: AcceptorId::new(shop.as_bytes()),
        key: TxKey::new(mti, stan.as_bytes(), b"1126152942", b"12345", b"TERM0001")
            .expect("a valid key"),
        completes: None,
    }
}

fn make_template() -> Template {
    let dir = tempdir("template");
    let cards = open(&dir).expect("a fresh data directory opens");
    let spec = |lock: MerchantLock, max_uses: Option<NonZeroU32>| CardSpec {
        pan: Pan::from_digits(random_luhn("497010", 16).as_bytes()).expect("a valid PAN"),
        pan_expiry: Expiry(*b"2912"),
        controls: Controls {
            currency: 978,
            amount_limit: 10_000,
            per_transaction_limit: None,
            max_uses,
            valid_until: NOW + 86_400,
            merchant_lock: lock,
            mcc_allow: vec![5411],
            mcc_block: vec![],
        },
    };
    let mut keys = Vec::new();
    for (lock, uses) in [
        (MerchantLock::None, None),
        (MerchantLock::FirstUse, NonZeroU32::new(3)),
        (MerchantLock::None, NonZeroU32::new(1)),
    ] {
        let (view, durable) = cards.issue(&spec(lock, uses), NOW).expect("issued");
        durable.wait().expect("durable");
        keys.push(vpan::cards::CardKey::of(&view.vpan));
    }
    let answer = |key, req: &AuthRequest, outcome: Option<IssuerOutcome>| {
        if let vpan::cards::Decision::Approve(a) = cards.authorize(key, req, NOW) {
            a.durable.wait().expect("durable");
            if let Some(outcome) = outcome {
                cards
                    .complete(&a.hold, outcome, NOW)
                    .wait()
                    .expect("durable");
            }
        }
    };
    let approved = Some(IssuerOutcome::Approved(
        ResponseCode::APPROVED,
        Some(*b"A1B2C3"),
    ));
    let original = request(b"0100", 1_500, "000001", "SHOP-A");
    answer(keys[0], &original, approved);
    answer(
        keys[1],
        &request(b"0100", 700, "000002", "SHOP-B"),
        approved,
    );
    answer(
        keys[1],
        &request(b"0100", 300, "000003", "SHOP-B"),
        Some(IssuerOutcome::Declined(ResponseCode(*b"05"))),
    );
    // A partial approval, in a snapshot's transaction.
    answer(
        keys[1],
        &request(b"0100", 500, "000010", "SHOP-B"),
        Some(IssuerOutcome::ApprovedInPart {
            amounts: Amounts {
                transaction: 200,
                transaction_currency: 978,
                billing: None,
            },
            auth: None,
        }),
    );
    // Still held when the snapshot is taken.
    answer(keys[2], &request(b"0200", 900, "000004", "SHOP-C"), None);
    let _ = cards.advice(keys[0], &request(b"0120", 200, "000005", "SHOP-A"), NOW);
    let reversal = ReversalRequest {
        mti: *b"0400",
        key: TxKey::new(b"0400", b"000006", b"1126152942", b"12345", b"TERM0001")
            .expect("a valid key"),
        original: Some(OriginalData {
            class: 1,
            ..original.key.original()
        }),
        remaining: Some(500),
    };
    let _ = cards.reverse(keys[0], &reversal, NOW);
    cards.snapshot().expect("a snapshot");
    // The journal after the snapshot: one of each kind again.
    answer(
        keys[0],
        &request(b"0100", 100, "000007", "SHOP-A"),
        approved,
    );
    // A partial approval: its part follows the outcome's code.
    answer(
        keys[0],
        &request(b"0100", 400, "000009", "SHOP-A"),
        Some(IssuerOutcome::ApprovedInPart {
            amounts: Amounts {
                transaction: 250,
                transaction_currency: 978,
                billing: Some((249, 978)),
            },
            auth: Some(*b"A1B2C3"),
        }),
    );
    cards
        .set_status(keys[1], Status::Paused)
        .expect("known card")
        .1
        .wait()
        .expect("durable");
    let _ = cards.reverse(keys[0], &reversal, NOW);
    // A hold open at a "crash": the restart journals both open ones as in doubt, and the
    // issuer's answers to their repeats settle them.
    let open_hold = request(b"0100", 50, "000008", "SHOP-A");
    answer(keys[0], &open_hold, None);
    drop(cards);
    let cards = open(&dir).expect("the template reopens");
    for (key, mut req, outcome) in [
        (
            keys[0],
            open_hold,
            IssuerOutcome::Declined(ResponseCode(*b"51")),
        ),
        (
            keys[2],
            request(b"0200", 900, "000004", "SHOP-C"),
            IssuerOutcome::APPROVED,
        ),
    ] {
        req.mti[3] = b'1';
        if let vpan::cards::Decision::Replay(vpan::cards::Replay::AskIssuer(hold)) =
            cards.authorize(key, &req, NOW)
        {
            cards
                .settle_in_doubt(&hold, outcome, NOW)
                .wait()
                .expect("durable");
        }
    }
    drop(cards);

    // A journal segment's commit markers are left out: each input edits a record.
    let marker_key = vpan::store::crypto::PanCipher::load_or_create(&dir.join("pan.key"))
        .expect("the key file")
        .marker_key();
    let records = |path: &Path, segment: Option<u64>| {
        let mut out = Vec::new();
        let push = |p: &[u8]| {
            out.push(p.to_vec());
            Ok(())
        };
        if let Some(n) = segment {
            read_segment(path, n, &marker_key, push)
        } else {
            read_records(path, push)
        }
        .expect("the template reads back");
        out
    };
    // The segments after the snapshot (one per start), as one.
    let segments = list_segments(&dir).expect("segments");
    let segment = *segments.first().expect("a segment after the snapshot");
    let template = Template {
        key: std::fs::read(dir.join("pan.key")).expect("the key file"),
        snapshot: records(&dir.join(SNAPSHOT_FILE), None),
        segment,
        journal: segments
            .iter()
            .flat_map(|&s| records(&segment_path(&dir, s), Some(s)))
            .collect(),
    };
    assert!(
        template.journal.iter().any(|r| r.first() == Some(&7)),
        "the template journal holds the restart's in-doubt records"
    );
    let _ = std::fs::remove_dir_all(&dir);
    template
}

fn tempdir(what: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("vpan-fuzz-recovery-{what}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    dir
}

struct Raw<'a>(&'a [u8]);

impl Encode for Raw<'_> {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.0);
    }
}

fn framed(records: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in records.iter().filter(|r| !r.is_empty()) {
        frame(&Raw(r), &mut out);
    }
    out
}

/// Applies the input's edit to one record of `records`.
fn edit(records: &mut Vec<Vec<u8>>, data: &[u8]) {
    let [_, which, lo, hi, op, rest @ ..] = data else {
        return;
    };
    if records.is_empty() {
        return;
    }
    let i = usize::from(*which) % records.len();
    let at = usize::from(u16::from_le_bytes([*lo, *hi])) % (records[i].len() + 1);
    match op % 3 {
        0 => {
            let r = &mut records[i];
            let end = (at + rest.len()).min(r.len());
            r[at..end].copy_from_slice(&rest[..end - at]);
            r.extend_from_slice(&rest[end - at..]);
        }
        1 => {
            records[i].truncate(at);
            records[i].extend_from_slice(rest);
        }
        _ => records.insert(i + 1, rest.to_vec()),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some(&file) = data.first() else {
        return;
    };
    let t = &*TEMPLATE;
    let (mut snapshot, mut journal) = (t.snapshot.clone(), t.journal.clone());
    edit(
        if file % 2 == 0 {
            &mut snapshot
        } else {
            &mut journal
        },
        data,
    );
    let dir = tempdir("case");
    let written = std::fs::write(dir.join("pan.key"), &t.key).is_ok()
        && std::fs::write(dir.join(SNAPSHOT_FILE), framed(&snapshot)).is_ok()
        && std::fs::write(segment_path(&dir, t.segment), framed(&journal)).is_ok();
    if written && let Ok(cards) = open(&dir) {
        // What was recovered must be writable again.
        if let Err(e) = cards.snapshot() {
            panic!("a recovered state does not snapshot: {e}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
});
