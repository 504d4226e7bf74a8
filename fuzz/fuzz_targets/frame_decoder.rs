//! Any byte stream, any framing: the decoder must not panic and must always make progress
//! or stop. The first byte picks framing, fixed header length and maximum frame size.
#![no_main]

// vpan's codec, compiled from its sources (see fuzz/Cargo.toml for why).
#[path = "../../src/iso8583/mod.rs"]
#[allow(dead_code, unused_imports)]
mod iso8583;
#[path = "../../src/pan.rs"]
#[allow(dead_code, unused_imports)]
mod pan;

use crate::iso8583::{Frame, FrameCodec, Framing};
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::{Decoder, Encoder};

fuzz_target!(|data: &[u8]| {
    let Some((&cfg, stream)) = data.split_first() else {
        return;
    };
    let framings = [
        Framing::Len2,
        Framing::Len2Inclusive,
        Framing::Len4Ascii,
        Framing::Len2Bcd,
    ];
    let framing = framings[usize::from(cfg & 3)];
    let header = usize::from((cfg >> 2) & 7);
    let max = if cfg & 0x20 == 0 { 8192 } else { 64 };
    let mut codec = FrameCodec::new(framing, header, max);
    let mut src = BytesMut::from(stream);
    loop {
        let before = src.len();
        match codec.decode(&mut src) {
            Ok(Some(frame)) => {
                assert!(
                    src.len() < before,
                    "a frame was decoded without consuming input"
                );
                // What was read can be written back.
                let mut out = BytesMut::new();
                if let Frame::Message { header: h, body } = &frame {
                    assert_eq!(h.len(), header);
                    assert!(h.len() + body.len() <= max);
                }
                codec
                    .encode(frame, &mut out)
                    .unwrap_or_else(|e| panic!("re-encode: {e}"));
            }
            Ok(None) | Err(_) => break,
        }
    }
});
