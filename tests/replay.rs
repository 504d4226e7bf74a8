//! Property: whatever happens to the cards, a restart (journal alone, or snapshot plus
//! journal) gives back exactly the same state, and no card ever goes over its cap except
//! through advices, which cannot be declined.

#![allow(clippy::unwrap_used)] // helpers outside #[test] fns panic on purpose

mod common;

use common::*;
use proptest::prelude::*;
use vpan::cards::{
    AdviceOutcome, Amounts, AuthRequest, CardKey, Cards, Decision, Durable, Hold, IssuerOutcome,
    Kind, RecentTx, ResponseCode, ReversalOutcome, Status,
};

#[derive(Clone, Debug)]
enum Op {
    Authorize {
        card: usize,
        amount: u64,
        stan: u32,
        shop: bool,
        refund: bool,
    },
    /// The issuer's answer to a pending hold: approved (in part, `eighths` of its DE 4,
    /// when given), or declined.
    Complete {
        which: usize,
        approve: bool,
        eighths: Option<u64>,
    },
    Reverse {
        card: usize,
        stan: u32,
        remaining: Option<u64>,
    },
    Advice {
        card: usize,
        amount: u64,
        stan: u32,
    },
    Status {
        card: usize,
        status: u8,
    },
    Snapshot,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..3usize, 0..4_000u64, 0..30u32, any::<bool>(), prop::bool::weighted(0.1))
            .prop_map(|(card, amount, stan, shop, refund)| Op::Authorize { card, amount, stan, shop, refund }),
        3 => (0..8usize, prop::bool::weighted(0.8), prop::option::weighted(0.25, 1..8u64))
            .prop_map(|(which, approve, eighths)| Op::Complete { which, approve, eighths }),
        1 => (0..3usize, 0..30u32, prop::option::of(0..4_000u64))
            .prop_map(|(card, stan, remaining)| Op::Reverse { card, stan, remaining }),
        1 => (0..3usize, 0..4_000u64, 30..40u32).prop_map(|(card, amount, stan)| Op::Advice { card, amount, stan }),
        1 => (0..3usize, 0..3u8).prop_map(|(card, status)| Op::Status { card, status }),
        1 => Just(Op::Snapshot),
    ]
}

/// Each card's counters, status and recent decisions (all of them journaled, declines
/// included); and what a repeat of each request the issuer approved in part is told.
type State = (Vec<(u64, u64, u32, Status, Vec<RecentTx>)>, Vec<String>);

fn state(cards: &Cards, keys: &[CardKey], partly: &[(CardKey, AuthRequest)]) -> State {
    let counters = keys
        .iter()
        .map(|&k| {
            let v = cards.get(k).unwrap();
            (v.spent, v.held, v.uses, v.status, cards.recent(k).unwrap())
        })
        .collect();
    // Answered from the ledger, which the repeat does not change (an approved entry).
    let repeats = partly
        .iter()
        .map(|(k, req)| {
            let mut repeat = req.clone();
            repeat.mti = *b"0101";
            format!("{:?}", cards.authorize(*k, &repeat, NOW))
        })
        .collect();
    (counters, repeats)
}

fn run(ops: &[Op]) {
    const CAP: u64 = 10_000;
    let dir = tempfile::tempdir().unwrap();
    let (cards, _) = open(dir.path());
    let keys: Vec<CardKey> = (0..3)
        .map(|i| issue(&cards, &if i == 2 { single_use(CAP) } else { spec(CAP) }))
        .collect();
    // Each hold with its request.
    let mut pending: Vec<(Hold, AuthRequest)> = Vec::new();
    let mut partly: Vec<(CardKey, AuthRequest)> = Vec::new();
    let mut advised = [0u64; 3];
    let mut last: Option<Durable> = None;
    // Each reversal under a STAN of its own, as a network sends them: under one key, all
    // but the first would ask otherwise and be refused (94), and give nothing back.
    let mut reversal_stan = 900_000u32;
    for op in ops {
        match *op {
            Op::Authorize {
                card,
                amount,
                stan,
                shop,
                refund,
            } => {
                let mut req = request(
                    *b"0100",
                    amount,
                    stan,
                    if shop { "SHOP-A" } else { "SHOP-B" },
                );
                if refund {
                    req.kind = Kind::Refund;
                }
                if let Decision::Approve(a) = cards.authorize(keys[card], &req, NOW) {
                    pending.push((a.hold, req));
                    last = Some(a.durable);
                }
            }
            Op::Complete {
                which,
                approve,
                eighths,
            } => {
                if !pending.is_empty() {
                    let (hold, req) = pending.remove(which % pending.len());
                    let outcome = match (approve, eighths) {
                        (true, None) => IssuerOutcome::APPROVED,
                        (true, Some(eighths)) => {
                            partly.push((hold.card, req.clone()));
                            // A DE 6 below the proportion: the proportion is what counts,
                            // and the DE 6 is what a repeat is told.
                            IssuerOutcome::ApprovedInPart {
                                amounts: Amounts {
                                    transaction: req.amounts.transaction * eighths / 8,
                                    transaction_currency: EUR,
                                    billing: Some((req.amounts.transaction * eighths / 9, EUR)),
                                },
                                auth: None,
                            }
                        }
                        (false, _) => IssuerOutcome::Declined(ResponseCode(*b"05")),
                    };
                    last = Some(cards.complete(&hold, outcome, NOW));
                }
            }
            Op::Reverse {
                card,
                stan,
                remaining,
            } => {
                reversal_stan += 1;
                let req = reversal_under(reversal_stan, stan, remaining);
                if let ReversalOutcome::Reversed { durable, .. } =
                    cards.reverse(keys[card], &req, NOW)
                {
                    last = Some(durable);
                }
            }
            Op::Advice { card, amount, stan } => {
                let req = request(*b"0120", amount, stan, "SHOP-A");
                if let AdviceOutcome::Recorded(d) = cards.advice(keys[card], &req, NOW) {
                    advised[card] += amount;
                    last = Some(d);
                }
            }
            Op::Status { card, status } => {
                let status = [Status::Active, Status::Paused, Status::Closed][usize::from(status)];
                if let Ok((_, d)) = cards.set_status(keys[card], status) {
                    last = Some(d);
                }
            }
            Op::Snapshot => {
                cards.snapshot().unwrap();
            }
        }
        for (i, &k) in keys.iter().enumerate() {
            let v = cards.get(k).unwrap();
            assert!(
                v.spent + v.held <= CAP + advised[i],
                "card {i} over its cap: {v:?}"
            );
        }
    }
    for (hold, _) in pending.drain(..) {
        last = Some(cards.complete(&hold, IssuerOutcome::APPROVED, NOW));
    }
    if let Some(d) = last {
        d.wait().unwrap();
    }
    let before = state(&cards, &keys, &partly);
    drop(cards);
    let (cards, _) = open(dir.path());
    let after = state(&cards, &keys, &partly);
    assert_eq!(before, after);
    cards.snapshot().unwrap();
    drop(cards);
    let (cards, _) = open(dir.path());
    assert_eq!(before, state(&cards, &keys, &partly));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn any_sequence_of_operations_comes_back_the_same_after_a_restart(ops in prop::collection::vec(op(), 1..50)) {
        run(&ops);
    }
}
