//! The HTTP endpoint of `--metrics-addr`: `GET /metrics` (Prometheus text), `/healthz` (the
//! event loop goes round) and `/readyz` (programs attached, policies compiled, caches synced).
use std::{convert::Infallible, net::SocketAddr, sync::Arc};

use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode, body::Bytes, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use super::metrics::{Telemetry, encode};

#[derive(Debug, thiserror::Error)]
#[error("--metrics-addr {addr}: cannot listen: {source}")]
pub struct ServeError {
    pub addr: SocketAddr,
    pub source: std::io::Error,
}

/// What prometheus-client writes: the OpenMetrics text format (`_total`, `# EOF`).
const TEXT_FORMAT: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Scrapers served at once; more wait for a turn.
const CONNECTIONS: usize = 16;
/// A client that has not sent its request headers by then is dropped.
const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

fn reply(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = content_type.parse() {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}

fn answer(
    request: &Request<hyper::body::Incoming>,
    telemetry: &Telemetry,
    registry: &Registry,
) -> Response<Full<Bytes>> {
    let plain = "text/plain; charset=utf-8";
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return reply(StatusCode::METHOD_NOT_ALLOWED, plain, "GET only\n".into());
    }
    let check = |ok: bool, what: &str| {
        if ok {
            reply(StatusCode::OK, plain, "ok\n".into())
        } else {
            reply(StatusCode::SERVICE_UNAVAILABLE, plain, format!("{what}\n"))
        }
    };
    match request.uri().path() {
        "/metrics" => reply(StatusCode::OK, TEXT_FORMAT, encode(registry)),
        "/healthz" => check(telemetry.alive(), "the event loop is stuck"),
        "/readyz" => check(
            telemetry.ready(),
            "not ready: programs, policies or caches not in place yet",
        ),
        _ => reply(StatusCode::NOT_FOUND, plain, "not found\n".into()),
    }
}

/// The running endpoint; dropping it stops it.
pub struct Server(tokio::task::JoinHandle<()>);

impl Drop for Server {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Binds `addr` (so that a port in use stops start-up with the reason) and serves until the
/// returned [`Server`] is dropped.
pub async fn serve(addr: SocketAddr, telemetry: Arc<Telemetry>) -> Result<Server, ServeError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError { addr, source })?;
    let registry = Arc::new(telemetry.registry());
    tracing::info!(%addr, "serving /metrics, /healthz and /readyz");
    let turns = Arc::new(tokio::sync::Semaphore::new(CONNECTIONS));
    Ok(Server(tokio::spawn(async move {
        loop {
            let Ok(turn) = turns.clone().acquire_owned().await else {
                return;
            };
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(err) => {
                    // Out of descriptors, say: do not spin on it.
                    tracing::warn!(%err, "metrics endpoint: accepting a connection failed");
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                    continue;
                }
            };
            let telemetry = telemetry.clone();
            let registry = registry.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request| {
                    let response = answer(&request, &telemetry, &registry);
                    async move { Ok::<_, Infallible>(response) }
                });
                // A scraper that hangs up early is its own business.
                let _ = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
                drop(turn);
            });
        }
    })))
}
