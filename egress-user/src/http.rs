//! `/metrics`, `/healthz` and `/readyz`.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use prometheus_client::registry::Registry;
use thiserror::Error;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Error)]
pub enum HttpError {
    #[error("cannot listen on --metrics-addr {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

pub struct HttpState {
    pub registry: Registry,
    /// `/readyz`: the programs are attached on every interface and the policy in force is the
    /// file's (a rejected reload clears it until a good one), and the agent's loops are alive.
    pub ready: AtomicBool,
    /// `/healthz`: the agent's loops (metrics, event drain, DNS learning) are alive.
    pub healthy: AtomicBool,
    /// Scrapes encode one at a time (each walks the maps); the others wait here, without a
    /// thread, and beyond [`MAX_WAITING_SCRAPES`] are turned away.
    pub scrapes: ScrapeQueue,
}

/// Scrapes waiting for the one being encoded, at most: an unauthenticated port must not let a
/// burst of requests queue seconds of map walks each.
pub const MAX_WAITING_SCRAPES: usize = 4;

/// One scrape at a time, and a bounded queue of waiting ones.
#[derive(Debug)]
pub struct ScrapeQueue {
    turn: tokio::sync::Semaphore,
    waiting: std::sync::atomic::AtomicUsize,
}

impl Default for ScrapeQueue {
    fn default() -> Self {
        Self {
            turn: tokio::sync::Semaphore::new(1),
            waiting: 0.into(),
        }
    }
}

pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<HttpState>,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { cancel.cancelled().await })
        .await
}

/// Binds the metrics address, with an error that names it.
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, HttpError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| HttpError::Bind { addr, source })
}

async fn metrics(State(state): State<Arc<HttpState>>) -> impl IntoResponse {
    let queue = &state.scrapes;
    if queue.waiting.fetch_add(1, Ordering::AcqRel) >= MAX_WAITING_SCRAPES {
        queue.waiting.fetch_sub(1, Ordering::AcqRel);
        return plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many scrapes at once\n",
        );
    }
    let turn = queue.turn.acquire().await;
    queue.waiting.fetch_sub(1, Ordering::AcqRel);
    // The semaphore is never closed; an error would mean the agent is stopping.
    let Ok(_turn) = turn else {
        return plain(StatusCode::SERVICE_UNAVAILABLE, "");
    };
    // Encoding walks the bounded maps, one system call per key (about a second at full learned
    // maps): it runs on the blocking pool, so a scrape never holds one of the async workers that
    // drain the DNS copies and serve `/readyz`.
    let state = state.clone();
    let encoded = tokio::task::spawn_blocking(move || {
        let mut body = String::new();
        prometheus_client::encoding::text::encode(&mut body, &state.registry).map(|()| body)
    })
    .await;
    match encoded {
        Ok(Ok(body)) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        ),
        Ok(Err(_)) | Err(_) => plain(StatusCode::INTERNAL_SERVER_ERROR, ""),
    }
}

/// A plain-text answer of the `/metrics` route.
fn plain(
    code: StatusCode,
    text: &str,
) -> (StatusCode, [(header::HeaderName, &'static str); 1], String) {
    (
        code,
        [(header::CONTENT_TYPE, "text/plain")],
        text.to_owned(),
    )
}

async fn healthz(State(state): State<Arc<HttpState>>) -> (StatusCode, &'static str) {
    if state.healthy.load(Ordering::Acquire) {
        (StatusCode::OK, "ok\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "a loop of the agent stopped\n",
        )
    }
}

async fn readyz(State(state): State<Arc<HttpState>>) -> (StatusCode, &'static str) {
    if state.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}
