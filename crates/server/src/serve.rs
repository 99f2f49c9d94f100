//! HTTP serving threads: one single-threaded tokio runtime per thread, each
//! accepting on its own `SO_REUSEPORT` socket bound to the same address, so
//! the kernel spreads connections over the threads and a request never waits
//! for a wake-up from another thread (nginx's worker model). On one shared
//! multi-threaded runtime only about half of two cores did useful work under
//! 64 busy connections; see docs/benchmarks.md.
//!
//! Database connections a handler opens are registered with that thread's
//! runtime, so the runtimes are kept alive until the store is closed
//! ([`HttpThreads::finish`]).

use std::net::SocketAddr;

use axum::serve::{Listener, ListenerExt};
use tokio::sync::{oneshot, watch};
use tracing::warn;

use crate::front::MakeFront;
use crate::tls::TlsListener;

/// Binds `n` listening sockets to `addr` (port 0: one port chosen for all).
pub(crate) fn bind(
    addr: SocketAddr,
    n: usize,
) -> std::io::Result<(SocketAddr, Vec<std::net::TcpListener>)> {
    let mut bound = addr;
    let mut out = Vec::with_capacity(n);
    for i in 0..n.max(1) {
        let sock = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        sock.set_reuseaddr(true)?;
        sock.set_reuseport(true)?;
        sock.bind(bound)?;
        if i == 0 {
            bound = sock.local_addr()?;
        }
        // `listen` registers with the caller's runtime; `into_std` undoes that
        // so the serving thread's runtime can take the socket over.
        out.push(sock.listen(1024)?.into_std()?);
    }
    Ok((bound, out))
}

/// The serving threads of one server.
pub(crate) struct HttpThreads {
    /// One per thread: its accept loop and connections have ended.
    done: Vec<oneshot::Receiver<()>>,
    /// Lets the runtimes end (after the store is closed).
    release: watch::Sender<bool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

/// Serves `front` on each listener in its own thread until `stop` turns true; over TLS
/// when an acceptor is given.
pub(crate) fn spawn(
    listeners: Vec<std::net::TcpListener>,
    front: MakeFront,
    tls: Option<tokio_rustls::TlsAcceptor>,
    stop: watch::Receiver<bool>,
) -> std::io::Result<HttpThreads> {
    let (release, released) = watch::channel(false);
    let mut done = Vec::new();
    let mut threads = Vec::new();
    for (i, listener) in listeners.into_iter().enumerate() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let front = front.clone();
        let tls = tls.clone();
        let mut stop = stop.clone();
        let mut released = released.clone();
        let (done_tx, done_rx) = oneshot::channel();
        done.push(done_rx);
        threads.push(
            std::thread::Builder::new()
                .name(format!("fastpatch-http-{i}"))
                .spawn(move || {
                    rt.block_on(async move {
                        let stopped = async move {
                            let _ = stop.wait_for(|s| *s).await;
                        };
                        let served = match tokio::net::TcpListener::from_std(listener) {
                            // Responses go out whole in one write: no Nagle delay, plain or TLS.
                            Ok(listener) => match tls {
                                None => {
                                    let listener = listener.tap_io(|tcp| {
                                        let _ = tcp.set_nodelay(true);
                                    });
                                    serve(listener, front, stopped).await
                                }
                                Some(acceptor) => match TlsListener::new(listener, acceptor) {
                                    Ok(l) => {
                                        let l = l.tap_io(|tls| {
                                            let _ = tls.get_ref().0.set_nodelay(true);
                                        });
                                        serve(l, front, stopped).await
                                    }
                                    Err(e) => Err(e),
                                },
                            },
                            Err(e) => Err(e),
                        };
                        if let Err(e) = served {
                            warn!(error = %e, "HTTP thread stopped with an error");
                        }
                        let _ = done_tx.send(());
                        let _ = released.wait_for(|r| *r).await;
                    });
                })?,
        );
    }
    Ok(HttpThreads {
        done,
        release,
        threads,
    })
}

/// One thread's accept loop over any listener whose address is the peer's socket address.
async fn serve<L>(
    listener: L,
    front: MakeFront,
    stopped: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    L: Listener<Addr = SocketAddr>,
{
    axum::serve(listener, front)
        .with_graceful_shutdown(stopped)
        .await
}

impl HttpThreads {
    /// Waits until every thread stopped serving (after a stop signal).
    pub(crate) async fn stopped(&mut self) {
        for d in self.done.drain(..) {
            let _ = d.await;
        }
    }

    /// Ends the runtimes and joins the threads; call after closing the store.
    pub(crate) async fn finish(self) {
        let _ = self.release.send(true);
        for t in self.threads {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }
}
