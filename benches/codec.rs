//! Parse and pack of every vector, in both built-in specs, beside `iso_8583_rs` 0.2.2 (the
//! fastest Rust competitor) on the same ASCII messages in the same run.
//!
//! `cargo bench --bench codec -- 0100_ecommerce --warm-up-time 1 --measurement-time 3`
//!
//! - `parse/<spec>/<vector>`: frame bytes to a validated `Message`.
//! - `pack/<spec>/<vector>`: a parsed message back to bytes (MTI and bitmap rebuilt).
//! - `respond/<spec>/<vector>`: parse, set MTI and DE 39, swap DE 2, pack: the switch's path.
//! - `build/<spec>/<vector>`: a message made from decoded field values, then packed
//!   (what `iso_8583_rs`'s `Builder` does in `pack/iso_8583_rs/...`).

use std::collections::BTreeMap;
use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde::Deserialize;
use vpan::iso8583::parse::parse_field_by_field;
use vpan::iso8583::{Message, Spec};
use vpan::pan::Pan;

#[path = "common/competitor.rs"]
mod competitor;
use competitor::competitor_spec;

#[derive(Deserialize)]
struct Vector {
    name: String,
    hex: String,
    fields: BTreeMap<String, String>,
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .filter_map(|i| s.get(i..i + 2).and_then(|p| u8::from_str_radix(p, 16).ok()))
        .collect()
}

fn load(file: &str) -> Vec<Vector> {
    let path = format!("{}/fixtures/vectors/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(path).unwrap_or_default();
    serde_json::from_str(&text).unwrap_or_default()
}

fn bench_spec(c: &mut Criterion, spec: &'static Spec, file: &str) {
    let real = Pan::from_digits(b"5555551234567891").ok();
    for v in load(file) {
        // A static buffer: cloning it costs no refcount, so the parser alone is measured.
        let wire: &'static [u8] = Box::leak(unhex(&v.hex).into_boxed_slice());
        let frame = Bytes::from_static(wire);
        let Ok(parsed) = Message::parse(spec, frame.clone()) else {
            continue;
        };
        let mut g = c.benchmark_group(format!("parse/{}", spec.name));
        g.throughput(Throughput::Bytes(wire.len() as u64));
        g.bench_function(&v.name, |b| {
            b.iter(|| Message::parse(spec, black_box(frame.clone())))
        });
        g.finish();

        // The same parse without the per-bitmap fast path, for the ratio in one run.
        let mut g = c.benchmark_group(format!("parse_field_by_field/{}", spec.name));
        g.throughput(Throughput::Bytes(wire.len() as u64));
        g.bench_function(&v.name, |b| {
            b.iter(|| parse_field_by_field(spec, black_box(frame.clone())))
        });
        g.finish();

        let mut g = c.benchmark_group(format!("pack/{}", spec.name));
        g.throughput(Throughput::Bytes(wire.len() as u64));
        let mut out = BytesMut::with_capacity(1024);
        g.bench_function(&v.name, |b| {
            b.iter(|| {
                out.clear();
                black_box(&parsed).pack_into(&mut out);
                black_box(out.len())
            })
        });
        g.finish();

        let mut g = c.benchmark_group(format!("respond/{}", spec.name));
        g.throughput(Throughput::Bytes(wire.len() as u64));
        g.bench_function(&v.name, |b| {
            b.iter(|| {
                let Ok(mut m) = Message::parse(spec, black_box(frame.clone())) else {
                    return 0;
                };
                let _ = m.set_mti(b"0110");
                let _ = m.set_response_code(b"00");
                if let (Some(real), true) = (&real, m.has(2)) {
                    let _ = m.set_pan(real);
                }
                out.clear();
                m.pack_into(&mut out);
                black_box(out.len())
            })
        });
        g.finish();

        let mut g = c.benchmark_group(format!("build/{}", spec.name));
        g.throughput(Throughput::Bytes(wire.len() as u64));
        let values: Vec<(usize, Vec<u8>)> = v
            .fields
            .iter()
            .filter_map(|(k, val)| Some((k.parse().ok()?, val.as_bytes().to_vec())))
            .collect();
        let mti: [u8; 4] = v
            .fields
            .get("t")
            .and_then(|t| t.as_bytes().try_into().ok())
            .unwrap_or(*b"0100");
        g.bench_function(&v.name, |b| {
            b.iter(|| {
                let Ok(mut m) = Message::new(spec, &mti) else {
                    return 0;
                };
                for (n, val) in &values {
                    let _ = m.set(*n, val);
                }
                out.clear();
                m.pack_into(&mut out);
                black_box(out.len())
            })
        });
        g.finish();
    }
}

fn bench_competitor(c: &mut Criterion) {
    let Some(spec) = competitor_spec() else {
        eprintln!("iso_8583_rs refused the spec");
        return;
    };
    for v in load("iso87ascii.json") {
        let wire = unhex(&v.hex);
        let Ok(parsed) = iso_8583_rs::Message::parse(&spec, &wire) else {
            eprintln!("iso_8583_rs cannot parse {}", v.name);
            continue;
        };
        let mut g = c.benchmark_group("parse/iso_8583_rs");
        g.throughput(Throughput::Bytes(wire.len() as u64));
        g.bench_function(&v.name, |b| {
            b.iter(|| iso_8583_rs::Message::parse(&spec, black_box(&wire)).map(|m| m.bitmap))
        });
        g.finish();

        let fields: Vec<(usize, &[u8])> = parsed.fields().collect();
        let mut out = Vec::with_capacity(1024);
        let mut g = c.benchmark_group("pack/iso_8583_rs");
        g.throughput(Throughput::Bytes(wire.len() as u64));
        g.bench_function(&v.name, |b| {
            b.iter(|| {
                let Ok(mut builder) = iso_8583_rs::Builder::new(&spec, &parsed.mti) else {
                    return 0;
                };
                for &(n, val) in &fields {
                    let _ = builder.set(n, val);
                }
                out.clear();
                builder.pack_into(&mut out);
                black_box(out.len())
            })
        });
        g.finish();
    }
}

/// A mixed link: every vector of a file in turn (16 messages, 10 bitmaps), so the
/// per-thread shape cache meets collisions and evictions, beside the field-by-field walk
/// on the same frames.
fn bench_mix(c: &mut Criterion, spec: &'static Spec, file: &str) {
    let frames: Vec<Bytes> = load(file)
        .iter()
        .map(|v| Bytes::from_static(Box::leak(unhex(&v.hex).into_boxed_slice())))
        .filter(|f| Message::parse(spec, f.clone()).is_ok())
        .collect();
    let bytes: usize = frames.iter().map(Bytes::len).sum();
    let mut g = c.benchmark_group(format!("parse_mix/{}", spec.name));
    g.throughput(Throughput::Elements(frames.len() as u64));
    g.bench_function(format!("shapes_{}_messages", frames.len()), |b| {
        b.iter(|| {
            for f in &frames {
                black_box(Message::parse(spec, black_box(f.clone())).is_ok());
            }
        })
    });
    g.bench_function(format!("field_by_field_{}_messages", frames.len()), |b| {
        b.iter(|| {
            for f in &frames {
                black_box(parse_field_by_field(spec, black_box(f.clone())).is_ok());
            }
        })
    });
    g.finish();
    let distinct: std::collections::HashSet<_> = frames
        .iter()
        .filter_map(|f| Message::parse(spec, f.clone()).ok())
        .map(|m| m.field_numbers().collect::<Vec<_>>())
        .collect();
    eprintln!(
        "parse_mix/{}: {} messages, {} bytes, {} distinct bitmaps",
        spec.name,
        frames.len(),
        bytes,
        distinct.len()
    );
}

fn benches(c: &mut Criterion) {
    bench_mix(c, Spec::iso87ascii(), "iso87ascii.json");
    bench_mix(c, Spec::iso87binary(), "iso87binary.json");
    bench_spec(c, Spec::iso87ascii(), "iso87ascii.json");
    bench_spec(c, Spec::iso87binary(), "iso87binary.json");
    bench_competitor(c);
}

criterion_group!(codec, benches);
criterion_main!(codec);
