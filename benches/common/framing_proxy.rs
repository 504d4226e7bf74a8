//! A do-nothing framing proxy: what any switch on this link costs at the least, measured
//! beside vpan in the same run (the issue's physics: "a do-nothing framing proxy ... reaches
//! about 68% of the direct throughput").
//!
//! Each network connection gets its own connection to the issuer host. Each direction cuts
//! the 2-byte-length frames out of what it read and writes them on, all the frames of one
//! read in one write: no parsing, no matching, no journal, no card. A run of the e2e bench
//! starts it as a child process (its own binary, with `E2E_PROXY_UPSTREAM` set), so that it
//! shares the cores with the load generator and the simulator as vpan does.

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::{Decoder, Encoder};
use vpan::iso8583::{FrameCodec, Framing};

/// Listens on a free port of 127.0.0.1 (said on stderr: `framing proxy listening on
/// ADDR`) and proxies every connection to `upstream` until killed; one runtime worker
/// thread per core, as vpan's default.
pub fn run(upstream: &str) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        eprintln!(
            "framing proxy listening on {}",
            listener.local_addr().expect("address")
        );
        loop {
            let Ok((down, _)) = listener.accept().await else {
                continue;
            };
            let Ok(up) = TcpStream::connect(upstream).await else {
                continue;
            };
            let _ = down.set_nodelay(true);
            let _ = up.set_nodelay(true);
            let (down_read, down_write) = down.into_split();
            let (up_read, up_write) = up.into_split();
            tokio::spawn(pump(down_read, up_write));
            tokio::spawn(pump(up_read, down_write));
        }
    });
}

/// Moves frames from `from` to `to` until either side closes.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf) {
    let mut codec = FrameCodec::new(Framing::Len2, 0, 8192);
    let mut inbuf = BytesMut::with_capacity(64 * 1024);
    let mut out = BytesMut::with_capacity(64 * 1024);
    loop {
        match from.read_buf(&mut inbuf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        // A frame that does not decode ends the pair: left in the buffer, it would stall
        // every frame behind it while the buffer grew.
        loop {
            match codec.decode(&mut inbuf) {
                Ok(Some(frame)) => {
                    if codec.encode(frame, &mut out).is_err() {
                        return;
                    }
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
        if to.write_all_buf(&mut out).await.is_err() {
            return;
        }
    }
}
