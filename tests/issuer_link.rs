//! The issuer link (`App` on port 0) against a scripted issuer host on real TCP: what a
//! host does on its own (its network management requests, taking connections and dropping
//! them), which the issuer simulator does not.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test binary: panics are the verdict

mod procs;
mod rig;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rig::rig;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::Framed;
use vpan::iso8583::{Frame, FrameCodec, Framing, Message, Spec};

type HostSide = Framed<TcpStream, FrameCodec>;

/// The next message the switch sends the host.
async fn next_message(host: &mut HostSide) -> Message {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), host.next()).await {
            Ok(Some(Ok(Frame::Message { body, .. }))) => {
                return Message::parse(Spec::iso87ascii(), body).unwrap();
            }
            Ok(Some(Ok(Frame::KeepAlive))) => {}
            other => panic!("expected a message from the switch, got {other:?}"),
        }
    }
}

async fn send(host: &mut HostSide, m: &Message) {
    host.send(Frame::Message {
        header: bytes::Bytes::new(),
        body: m.pack(),
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_network_management_request_from_the_issuer_host_is_answered_00() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let host_addr = listener.local_addr().unwrap().to_string();
    let rig = rig(None, |c| {
        c.issuer.connect = host_addr;
        c.issuer.connections = 1;
    })
    .await;
    let (stream, _) = listener.accept().await.unwrap();
    let mut host = Framed::new(stream, FrameCodec::new(Framing::Len2, 0, 8192));
    // The switch signs on; the host accepts.
    let sign_on = next_message(&mut host).await;
    assert_eq!(
        (sign_on.mti(), sign_on.raw(70)),
        (*b"0800", Some(&b"001"[..]))
    );
    let mut accepted = sign_on.clone();
    accepted.set_mti(b"0810").unwrap();
    accepted.set_response_code(b"00").unwrap();
    send(&mut host, &accepted).await;
    // Then the host echo-tests its client, as many do, and expects its 0810.
    let mut echo = Message::new(Spec::iso87ascii(), b"0800").unwrap();
    echo.set(7, b"1202120000").unwrap();
    echo.set(11, b"777777").unwrap();
    echo.set(70, b"301").unwrap();
    send(&mut host, &echo).await;
    let answer = next_message(&mut host).await;
    assert_eq!(answer.mti(), *b"0810");
    assert_eq!(answer.response_code(), Some(*b"00"));
    assert_eq!(answer.stan(), Some(*b"777777"));
    assert_eq!(answer.raw(70), Some(&b"301"[..]));
    rig.stop().await;
}

#[tokio::test]
async fn a_host_that_drops_every_connection_at_once_is_redialled_with_a_growing_backoff() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let host_addr = listener.local_addr().unwrap().to_string();
    let accepted = Arc::new(AtomicUsize::new(0));
    let host = tokio::spawn({
        let accepted = accepted.clone();
        async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                accepted.fetch_add(1, Ordering::SeqCst);
                drop(stream);
            }
        }
    });
    let rig = rig(None, |c| {
        c.issuer.connect = host_addr;
        c.issuer.connections = 1;
    })
    .await;
    // Dials after 50, 100, 200, 400, 800, 1600 ms: six or seven in 2 s. Redialling every
    // 50 ms after each connection, as the link did, is about forty. An upper bound only:
    // a slow machine dials less often, never more.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let dials = accepted.load(Ordering::SeqCst);
    assert!((1..=10).contains(&dials), "{dials} connections in 2 s");
    rig.stop().await;
    host.abort();
}
