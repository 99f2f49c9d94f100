//! The service each connection runs. An Omaha request (`POST /v1/update/`, the one route a
//! fleet calls all day) goes straight to its handler; everything else goes through the
//! router, with the peer address as axum's `ConnectInfo`. The router also holds the Omaha
//! routes, for their other methods (405) and for anyone who serves the router alone.
//!
//! Skipping the router for the hot route saves its path match, its `MatchedPath`, URL
//! parameter and `ConnectInfo` extensions (a map allocated and dropped per request), and its
//! boxed service call: see docs/benchmarks.md.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::{ConnectInfo, Request};
use axum::http::Method;
use axum::response::Response;
use axum::serve::{IncomingStream, Listener};
use axum::Router;
use futures_util::future::Either;
use tower::Service;

use crate::AppState;

/// Makes one [`Front`] per accepted connection.
#[derive(Clone)]
pub(crate) struct MakeFront {
    router: Router,
    /// None: no Omaha route of its own (the benchmark's `serve-static`).
    omaha: Option<Arc<AppState>>,
}

impl MakeFront {
    pub(crate) fn new(router: Router, omaha: Option<Arc<AppState>>) -> Self {
        Self { router, omaha }
    }
}

impl<L> Service<IncomingStream<'_, L>> for MakeFront
where
    L: Listener<Addr = SocketAddr>,
{
    type Response = Front;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Front, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, stream: IncomingStream<'_, L>) -> Self::Future {
        std::future::ready(Ok(Front {
            router: self.router.clone(),
            omaha: self.omaha.clone(),
            peer: *stream.remote_addr(),
        }))
    }
}

/// One connection's service.
#[derive(Clone)]
pub(crate) struct Front {
    router: Router,
    omaha: Option<Arc<AppState>>,
    peer: SocketAddr,
}

type OmahaFuture = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

impl Service<Request> for Front {
    type Response = Response;
    type Error = Infallible;
    type Future = Either<OmahaFuture, <Router as Service<Request>>::Future>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        if let Some(state) = &self.omaha {
            if is_omaha(&req) {
                let state = state.clone();
                let peer = self.peer;
                return Either::Left(Box::pin(async move {
                    Ok(crate::http::omaha_update(&state, peer, req).await)
                }));
            }
        }
        req.extensions_mut().insert(ConnectInfo(self.peer));
        Either::Right(self.router.call(req))
    }
}

/// `POST` to one of [`crate::http::OMAHA_PATHS`], as the router routes it.
fn is_omaha(req: &Request) -> bool {
    req.method() == Method::POST && crate::http::OMAHA_PATHS.contains(&req.uri().path())
}
