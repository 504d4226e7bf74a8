//! What one dependent memory access costs on this machine, by working-set size: the floor
//! under a card lookup in a large index (`cargo bench --bench cards -- lookup`).
//!
//! `cargo run --release --example memory_latency`
//!
//! A pointer chase: one slot per cache line, linked in a random cycle, so each load's
//! address comes from the previous load and neither the prefetcher nor out-of-order
//! execution can overlap them. At 4 MB the lines mostly sit in the last-level cache; at
//! 256 MB (about the size of a million cards with their index) nearly every step is a
//! cache miss plus a TLB miss, which on a virtual machine costs a two-level page walk.
//! A lookup needs at least two such steps one after the other (the table slot, then the
//! card), so twice the last figure is what no index layout can go under.

use std::hint::black_box;
use std::time::Instant;

use rand::seq::SliceRandom;

/// One slot per 64-byte line.
const STRIDE: usize = 64 / size_of::<usize>();

fn main() {
    let steps = 10_000_000usize;
    for mb in [4usize, 32, 256] {
        let lines = mb * 1024 * 1024 / 64;
        let mut order: Vec<usize> = (0..lines).collect();
        order.shuffle(&mut rand::rng());
        let mut next = vec![0usize; lines * STRIDE];
        for (i, &line) in order.iter().enumerate() {
            let to = order.get(i + 1).copied().unwrap_or(order[0]);
            next[line * STRIDE] = to * STRIDE;
        }
        let mut at = order[0] * STRIDE;
        let start = Instant::now();
        for _ in 0..steps {
            at = next[at];
        }
        let ns = start.elapsed().as_nanos() as f64 / steps as f64;
        black_box(at);
        println!("{mb:>4} MB working set: {ns:6.1} ns per dependent load");
    }
}
