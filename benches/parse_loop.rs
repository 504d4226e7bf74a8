//! A fixed loop over parse and pack of `0100_ecommerce_purchase` (iso87ascii), for
//! instruction-level profiling that a loaded machine does not distort:
//!
//! `cargo bench --bench parse_loop --no-run`, then
//! `valgrind --tool=callgrind <the printed binary> parse 100000` (or `pack`, `respond`),
//! and divide the instruction count by the iterations.

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use vpan::iso8583::{Message, Spec};
use vpan::pan::Pan;

#[path = "common/competitor.rs"]
mod competitor;
use competitor::competitor_spec;

const ECOMMERCE: &str = "3031303037323343343438313038453038303030313634393730313031323334353637383933303030303030303030303030303132333435313132363134333031353030303132333134333031353131323632383132353733343831323539313131323334353637383930313633333031343030303132335445524D3030303153484F5030303030303030303030314558414D504C452053484F5020202020202020202020202020504152495320202020202020204652393738";

fn main() {
    let mut args = std::env::args().skip(1);
    let what = args.next().unwrap_or_else(|| "parse".into());
    let n: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(100_000);
    let bytes: Vec<u8> = (0..ECOMMERCE.len())
        .step_by(2)
        .filter_map(|i| u8::from_str_radix(ECOMMERCE.get(i..i + 2)?, 16).ok())
        .collect();
    let frame = Bytes::from_static(Box::leak(bytes.into_boxed_slice()));
    let spec = Spec::iso87ascii();
    let real = Pan::from_digits(b"5555551234567891").ok();
    let mut out = BytesMut::with_capacity(1024);
    let mut sink = 0usize;
    let competitor = competitor_spec();
    let Ok(parsed) = Message::parse(spec, frame.clone()) else {
        return;
    };
    for _ in 0..n {
        match what.as_str() {
            "pack" => {
                out.clear();
                black_box(&parsed).pack_into(&mut out);
                sink += out.len();
            }
            "respond" => {
                if let Ok(mut m) = Message::parse(spec, black_box(frame.clone())) {
                    let _ = m.set_mti(b"0110");
                    let _ = m.set_response_code(b"00");
                    if let Some(p) = &real {
                        let _ = m.set_pan(p);
                    }
                    out.clear();
                    m.pack_into(&mut out);
                    sink += out.len();
                }
            }
            "competitor" => {
                if let Some(c) = &competitor
                    && let Ok(m) = iso_8583_rs::Message::parse(c, black_box(&frame[..]))
                {
                    sink += m.mti[0] as usize;
                }
            }
            _ => {
                if let Ok(m) = Message::parse(spec, black_box(frame.clone())) {
                    sink += m.mti()[0] as usize;
                }
            }
        }
    }
    println!("{what} x{n}: {}", black_box(sink));
}
