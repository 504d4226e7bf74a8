//! Parsing makes no heap allocation, and neither do the accessors the switch reads nor a
//! pack into a reused buffer; building a response allocates once (its edit arena).
//!
//! Counted with a process-wide instrumented allocator, so this binary runs without the test
//! harness (`harness = false` in Cargo.toml): the check runs on the process's only thread.
//! Under libtest the harness's main thread allocates now and then while a test runs, and a
//! CI run once counted 4 of its allocations against the parse.

#![allow(clippy::unwrap_used, clippy::expect_used)] // helpers outside #[test] fns

mod codec_common;
use codec_common as common;

use std::alloc::System;

use bytes::{Bytes, BytesMut};
use common::{unhex, vectors};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use vpan::iso8583::{Message, Spec};
use vpan::pan::Pan;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

fn main() {
    parse_reads_and_pack_allocate_nothing_and_a_response_allocates_once();
    println!("no_alloc: parse, reads and pack allocate nothing; a response allocates once: ok");
}

fn parse_reads_and_pack_allocate_nothing_and_a_response_allocates_once() {
    let cases: Vec<(&'static Spec, Vec<Bytes>)> = [
        (Spec::iso87ascii(), "iso87ascii.json"),
        (Spec::iso87binary(), "iso87binary.json"),
    ]
    .into_iter()
    .map(|(spec, file)| {
        let frames = vectors(file)
            .iter()
            .map(|v| Bytes::from(unhex(&v.hex)))
            .collect();
        (spec, frames)
    })
    .collect();
    let real = Pan::from_digits(b"5555551234567891").unwrap();
    let mut out = BytesMut::with_capacity(4096);

    for (spec, frames) in cases {
        for frame in frames {
            let region = Region::new(GLOBAL);
            let m = Message::parse(spec, frame).unwrap();
            let _ = std::hint::black_box((
                m.pan(),
                m.processing_code(),
                m.amount_transaction(),
                m.amount_cardholder_billing(),
                m.transmission_time(),
                m.stan(),
                m.expiry(),
                m.mcc(),
                m.track2(),
                m.response_code(),
                m.currency_transaction(),
                m.currency_cardholder_billing(),
                m.network_management_code(),
                m.original_data(),
                m.replacement_amounts(),
            ));
            let _ = std::hint::black_box((
                m.acquirer().map(|t| t.len()),
                m.terminal().map(|t| t.len()),
                m.acceptor_id().map(|t| t.len()),
                m.acceptor_name().map(|t| t.len()),
                m.auth_code().map(|t| t.len()),
            ));
            out.clear();
            m.pack_into(&mut out);
            let stats = region.change();
            assert_eq!(
                stats.allocations + stats.reallocations,
                0,
                "{}: parse, read and pack allocated",
                spec.name
            );

            let region = Region::new(GLOBAL);
            let mut resp = m;
            resp.set_mti(b"0110").unwrap();
            resp.set_response_code(b"00").unwrap();
            if resp.has(2) {
                resp.set_pan(&real).unwrap();
            }
            out.clear();
            resp.pack_into(&mut out);
            let stats = region.change();
            assert!(
                stats.allocations + stats.reallocations <= 1,
                "{}: a response took {} allocations",
                spec.name,
                stats.allocations + stats.reallocations
            );
        }
    }
}
