//! The network side's sockets: listen and accept, or dial out and redial.
//!
//! Listening is the common case (vpan is the server of the link). Some networks want the
//! issuer side to dial them instead (`network.connect`): vpan then keeps one connection up,
//! redialling with a doubling backoff. Either way each connection is served by
//! [`connection::serve`](super::connection::serve). `max_connections` is a semaphore:
//! a connection past it is accepted and closed at once, and counted.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::metrics as m;

use super::connection::{self, ConnectionLimits, Reading};
use super::flow::Flow;

/// One network connection in `vpan_network_connections`, from its opening to the end of
/// its task, however that ends (a panic too).
struct Counted;

impl Counted {
    fn new() -> Counted {
        metrics::gauge!(m::NETWORK_CONNECTIONS).increment(1.0);
        Counted
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        metrics::gauge!(m::NETWORK_CONNECTIONS).decrement(1.0);
    }
}

/// Accepts network connections until `shutdown`, then waits for each to drain.
pub async fn listen(
    listener: TcpListener,
    flow: Arc<Flow>,
    limits: ConnectionLimits,
    max_connections: usize,
    shutdown: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(max_connections));
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = shutdown.cancelled() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and the like: back off a little rather than spin.
                crate::logging::throttled!(warn, error = %e, "network accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            metrics::counter!(m::FRAMES_REJECTED_TOTAL, "reason" => "max_connections").increment(1);
            crate::logging::throttled!(warn, %peer, max_connections, "connection refused: network.max_connections reached");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        crate::logging::throttled!(info, %peer, "network connection accepted");
        let flow = flow.clone();
        let limits = limits.clone();
        let token = shutdown.clone();
        connections.spawn(async move {
            let _counted = Counted::new();
            connection::serve(stream, flow, limits, token, |_| {}).await;
            drop(permit);
        });
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
}

/// How long a connection must have held for the next redial to wait the first backoff again.
const HELD: Duration = Duration::from_secs(1);

/// Dials the network at `addr` and keeps one connection up until `shutdown`, waiting up
/// to `max_backoff` between dials; `connected` says whether it is up now (for `/healthz`). A connection the network stops sending on
/// is redialled at once: its requests still in flight are finished (and answered, should
/// the peer have only half-closed) on its own task, since waiting for them, up to
/// `issuer.timeout_ms`, would keep the link down that much longer. Returns once those
/// are finished too.
pub async fn dial(
    addr: String,
    max_backoff: Duration,
    flow: Arc<Flow>,
    limits: ConnectionLimits,
    connected: Arc<AtomicBool>,
    shutdown: CancellationToken,
) {
    let mut finishing = JoinSet::new();
    keep_dialling(
        addr,
        max_backoff,
        flow,
        limits,
        connected,
        shutdown,
        &mut finishing,
    )
    .await;
    while finishing.join_next().await.is_some() {}
}

async fn keep_dialling(
    addr: String,
    max_backoff: Duration,
    flow: Arc<Flow>,
    limits: ConnectionLimits,
    connected: Arc<AtomicBool>,
    shutdown: CancellationToken,
    finishing: &mut JoinSet<()>,
) {
    let mut backoff = Duration::from_millis(100).min(max_backoff);
    loop {
        let dialled = tokio::select! {
            r = super::dial(&addr) => r,
            () = shutdown.cancelled() => return,
        };
        match dialled {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                tracing::info!(network = %addr, "connected to the network");
                let since = std::time::Instant::now();
                // Dialled just as the stop began: the connection drains what it is sent,
                // but for /healthz the link stays down from the stop on. Checked after the
                // mark, as the stop cancels before it marks the link down: whichever of the
                // two comes last, the link ends down.
                connected.store(true, Ordering::SeqCst);
                if shutdown.is_cancelled() {
                    connected.store(false, Ordering::SeqCst);
                }
                let counted = Counted::new();
                let (lost, lost_rx) = tokio::sync::oneshot::channel();
                let mut lost = Some(lost);
                let link = connected.clone();
                let serving = connection::serve(
                    stream,
                    flow.clone(),
                    limits.clone(),
                    shutdown.clone(),
                    move |reading| match reading {
                        // Still open, answering what it holds, but taking nothing new.
                        Reading::Stopped => link.store(false, Ordering::Relaxed),
                        Reading::Ended => {
                            if let Some(lost) = lost.take() {
                                let _ = lost.send(());
                            }
                        }
                    },
                );
                finishing.spawn(async move {
                    serving.await;
                    drop(counted);
                });
                // Sent when the peer stops sending or the connection ends; dropped unsent
                // only if the task panicked, which ends the connection all the same.
                let _ = lost_rx.await;
                connected.store(false, Ordering::Relaxed);
                while finishing.try_join_next().is_some() {}
                tracing::warn!(network = %addr, "network connection lost; redialling");
                // A peer that takes the connection and drops it at once is not redialled
                // ever faster: the backoff starts again only after a connection that held
                // a second (or the cap, when shorter), as the issuer link's does. Held for
                // the cap, a cap of 30 s kept a link that served for seconds at a time
                // waiting longer at each loss.
                if since.elapsed() >= HELD.min(max_backoff) {
                    backoff = Duration::from_millis(100).min(max_backoff);
                }
            }
            Err(e) => {
                tracing::warn!(network = %addr, error = %e, "network unreachable; redialling")
            }
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = shutdown.cancelled() => return,
        }
        backoff = (backoff * 2).min(max_backoff);
    }
}
