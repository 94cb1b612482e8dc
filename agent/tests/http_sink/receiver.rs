//! A CloudEvents receiver on 127.0.0.1 for the HTTP sink's tests: it records every request as
//! it arrived and answers each from a script (status, headers, delay), then with 200.
use std::{
    collections::VecDeque,
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// One request as it arrived.
#[derive(Debug, Clone)]
pub struct Captured {
    pub method: String,
    pub path: String,
    /// Names in lower case, in the order they came.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub at: Instant,
    /// What the receiver answered.
    pub status: u16,
}

impl Captured {
    /// The only value of header `name`; panics when it is missing or repeated.
    pub fn header(&self, name: &str) -> &str {
        let values: Vec<&str> = self
            .headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(values.len(), 1, "header {name} in {:?}", self.headers);
        values[0]
    }
}

/// How to answer one request.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: &'static str,
    /// Waited after the request has been read and recorded, before answering.
    pub delay: Duration,
}

impl Reply {
    pub fn status(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: "",
            delay: Duration::ZERO,
        }
    }

    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    pub fn body(mut self, body: &'static str) -> Self {
        self.body = body;
        self
    }

    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

#[derive(Default)]
struct State {
    script: Mutex<VecDeque<Reply>>,
    captured: Mutex<Vec<Captured>>,
    tls_failures: Mutex<Vec<String>>,
}

pub struct Receiver {
    pub addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Receiver {
    /// Plain HTTP on a free port of 127.0.0.1.
    pub async fn start(script: Vec<Reply>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1");
        Self::serve(listener, script, None)
    }

    /// HTTPS with `tls` on a free port of 127.0.0.1.
    pub async fn start_tls(script: Vec<Reply>, tls: Arc<rustls::ServerConfig>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1");
        Self::serve(listener, script, Some(TlsAcceptor::from(tls)))
    }

    /// On a listener the test bound itself (to know the port before the receiver is up).
    pub fn serve(listener: TcpListener, script: Vec<Reply>, tls: Option<TlsAcceptor>) -> Self {
        let addr = listener.local_addr().expect("local address");
        let state = Arc::new(State {
            script: Mutex::new(script.into()),
            ..State::default()
        });
        let task = tokio::spawn(accept(listener, state.clone(), tls));
        Self { addr, state, task }
    }

    pub fn url(&self, scheme: &str) -> reqwest::Url {
        reqwest::Url::parse(&format!("{scheme}://{}/events", self.addr)).expect("url")
    }

    pub fn captured(&self) -> Vec<Captured> {
        lock(&self.state.captured).clone()
    }

    /// Handshakes the receiver saw fail, with why.
    pub fn tls_failures(&self) -> Vec<String> {
        lock(&self.state.tls_failures).clone()
    }
}

async fn accept(listener: TcpListener, state: Arc<State>, tls: Option<TlsAcceptor>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let state = state.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let service = {
                let state = state.clone();
                service_fn(move |req| answer(state.clone(), req))
            };
            let served = match tls {
                None => {
                    http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await
                }
                Some(acceptor) => match acceptor.accept(stream).await {
                    Ok(stream) => {
                        http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await
                    }
                    Err(err) => {
                        lock(&state.tls_failures).push(err.to_string());
                        return;
                    }
                },
            };
            // A client that timed out and hung up is part of some tests.
            drop(served);
        });
    }
}

async fn answer(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes().to_vec())
        .unwrap_or_default();
    let reply = lock(&state.script)
        .pop_front()
        .unwrap_or_else(|| Reply::status(200));
    lock(&state.captured).push(Captured {
        method: parts.method.to_string(),
        path: parts.uri.path().to_string(),
        headers: parts
            .headers
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body,
        at: Instant::now(),
        status: reply.status,
    });
    tokio::time::sleep(reply.delay).await;
    let mut response = Response::builder().status(reply.status);
    for (name, value) in &reply.headers {
        response = response.header(*name, value);
    }
    Ok(response
        .body(Full::new(Bytes::from_static(reply.body.as_bytes())))
        .expect("a valid response"))
}
