//! A small HTTP/1.1 server on 127.0.0.1 for the receivers that cannot run here (Slack's
//! incoming webhooks, Splunk's HTTP Event Collector). It records every request and answers
//! with what a test's responder returns, so each fake replies as its real service documents.
use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{TcpListener, TcpStream},
};

#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    /// Path and query, as sent.
    pub target: String,
    /// Names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub at: Instant,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn new(status: u16, content_type: &str, body: impl Into<String>) -> Self {
        Self {
            status,
            headers: vec![("Content-Type".into(), content_type.into())],
            body: body.into(),
        }
    }

    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
}

pub type Responder = Box<dyn FnMut(&Request) -> Response + Send>;

pub struct FakeServer {
    pub url: String,
    requests: Arc<Mutex<Vec<Request>>>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeServer {
    pub async fn start(responder: Responder) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let responder = Arc::new(Mutex::new(responder));
        let seen = requests.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, seen.clone(), responder.clone()));
            }
        });
        Self {
            url,
            requests,
            task,
        }
    }

    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().expect("requests").clone()
    }

    /// Waits until at least `n` requests arrived, or `limit` passed.
    pub async fn wait_for(&self, n: usize, limit: Duration) -> Vec<Request> {
        let until = Instant::now() + limit;
        loop {
            let seen = self.requests();
            if seen.len() >= n || Instant::now() >= until {
                return seen;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(
    stream: TcpStream,
    seen: Arc<Mutex<Vec<Request>>>,
    responder: Arc<Mutex<Responder>>,
) {
    let mut stream = BufReader::new(stream);
    // Clients keep connections open; one request after another until the client closes.
    while let Some(request) = read_request(&mut stream).await {
        let response = (responder.lock().expect("responder"))(&request);
        seen.lock().expect("requests").push(request);
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Length: {}\r\n",
            response.status,
            reason(response.status),
            response.body.len()
        );
        for (name, value) in &response.headers {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
        out.push_str("\r\n");
        out.push_str(&response.body);
        if stream.get_mut().write_all(out.as_bytes()).await.is_err() {
            return;
        }
    }
}

async fn read_request(stream: &mut BufReader<TcpStream>) -> Option<Request> {
    let mut line = String::new();
    if stream.read_line(&mut line).await.ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let target = parts.next()?.to_string();
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        stream.read_line(&mut line).await.ok()?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':')?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .map_or(Some(0), |(_, v)| v.parse().ok())?;
    let mut body = vec![0; length];
    stream.read_exact(&mut body).await.ok()?;
    Some(Request {
        method,
        target,
        headers,
        body,
        at: Instant::now(),
    })
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        410 => "Gone",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

/// An exec killed by a RuntimePolicy in pod `shop/web-1` on node `n1`, at a fixed time and
/// with a fixed id, run as `comm` from `path` in a pod with `labels`.
pub fn exec_violation(
    comm: &str,
    path: &str,
    labels: std::collections::BTreeMap<String, String>,
) -> crate::cloudevents::VigilEvent {
    exec_violation_with(comm, path, labels, None)
}

/// [`exec_violation`] of a file the kernel found drifted (`drift`).
pub fn exec_violation_with(
    comm: &str,
    path: &str,
    labels: std::collections::BTreeMap<String, String>,
    drift: Option<crate::behaviour::exec::Drift>,
) -> crate::cloudevents::VigilEvent {
    use crate::{
        cloudevents::{Context, violation},
        event::{Action, Body, Event, Exec},
        metadata::{
            cluster::{Owner, PodInfo, PodLookup},
            process::{Lineage, ProcessInfo},
        },
        policy::PolicyRef,
    };
    let args = vec![path.to_string(), "-x".into()];
    let event = Event {
        header: crate::event::test_violation(Action::Kill, comm),
        body: Body::Exec(Exec {
            exe_name: comm.into(),
            drift,
            ..Exec::plain(path, args.clone())
        }),
    };
    let policy = PolicyRef {
        kind: "RuntimePolicy".into(),
        name: "no-tmp".into(),
        namespace: Some("shop".into()),
        rule: "spec.exec.deny[0]".into(),
        text: "prefix /tmp/".into(),
    };
    let pod = PodLookup::found(&PodInfo {
        namespace: "shop".into(),
        name: "web-1".into(),
        uid: "u-1".into(),
        labels,
        service_account: Some("web".into()),
        owner: Some(Owner {
            kind: "Deployment".into(),
            name: "web".into(),
        }),
        container_id: Some("c0ffee".into()),
        container_name: Some("app".into()),
        image: Some("nginx:1".into()),
    });
    let ctx = Context {
        node: "n1".into(),
        cgroup_path: Some("/kubepods/pod-u-1/c0ffee".into()),
        pod: Some(&pod),
    };
    let lineage = Lineage {
        process: ProcessInfo {
            comm: comm.into(),
            exe: Some(path.into()),
            args: args.into(),
        },
        parent: Some(ProcessInfo {
            comm: "sh".into(),
            exe: Some("/bin/sh".into()),
            args: vec!["sh".into()].into(),
        }),
    };
    let mut event = violation(
        &event,
        &lineage,
        &ctx,
        &crate::cloudevents::shared::Shared::new(policy),
        Action::Kill,
    );
    event.id = "00000000-0000-4000-8000-000000000001".into();
    event.time = chrono::DateTime::parse_from_rfc3339("2024-05-01T12:00:00.123456789Z")
        .expect("a time")
        .with_timezone(&chrono::Utc);
    event
}

/// What attackers name their binaries, processes and labels: a Slack broadcast, a user
/// mention, a disguised link, formatting, and a code span's own delimiter.
pub const HOSTILE: &str = "<!channel> <@U1> <http://evil|click> *bold* `x`";

/// A log that tests can read: the sinks' log lines, to check what is (and is not) in them.
#[derive(Clone, Default)]
pub struct CapturedLog(Arc<Mutex<Vec<u8>>>);

impl CapturedLog {
    /// Captures what this thread logs until the guard drops (a current-thread runtime runs
    /// the sinks' tasks on this thread too).
    pub fn start(&self) -> tracing::subscriber::DefaultGuard {
        let log = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || log.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("log")).into_owned()
    }
}

impl std::io::Write for CapturedLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
