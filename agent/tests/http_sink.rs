//! The HTTP sink against receivers on 127.0.0.1: the CloudEvents HTTP binding's wire format in
//! each mode, retries (429 with Retry-After, 5xx, refused connections, a slow receiver), the
//! refusals that are not retried (4xx, an untrusted certificate), and an independent consumer
//! (the Python `cloudevents` package) reading what the sink sent. No root, no kernel.

#[path = "support/python.rs"]
mod python;
#[path = "http_sink/receiver.rs"]
mod receiver;

use std::{
    collections::BTreeMap,
    io::Write,
    path::{Path, PathBuf},
    process::Command,
    sync::{Arc, Mutex, atomic::Ordering},
    time::{Duration, Instant},
};

use chrono::DateTime;
use percent_encoding::percent_decode_str;
use receiver::{Captured, Receiver, Reply};
use serde_json::{Value, json};
use vigil::{
    cloudevents::{Context, VigilEvent, observed},
    event::{Body, Event, Exec, Header, Verdict},
    metadata::process::{Lineage, ProcessInfo},
    sink::{
        Sink, SinkError,
        http::{HttpMode, HttpOptions, HttpSink, RetryOptions},
        spooled::SpooledSink,
    },
};

/// Attribute values a header cannot carry as they are: a space, a quote, a percent sign and
/// non-ASCII text (binary mode percent-encodes them).
const AWKWARD_SUBJECT: &str = "namespaces/ops/pods/caf\u{e9} \"100%\"";

fn exec_event(comm: &str, path: &str) -> VigilEvent {
    let header = Header {
        boot_ns: 5_000_000_000,
        cgroup_id: 7123,
        ppid: 4200,
        uid: 1000,
        gid: 1000,
        ..Header::new(Verdict::Observed, 4242, comm)
    };
    let args = vec![path.to_string(), "-c".to_string(), "id".to_string()];
    let event = Event {
        header,
        body: Body::Exec(Exec {
            exe_name: comm.into(),
            ..Exec::plain(path, args.clone())
        }),
    };
    let lineage = Lineage {
        process: ProcessInfo {
            comm: comm.into(),
            exe: Some(path.into()),
            args: args.into(),
        },
        parent: None,
    };
    observed(&event, &lineage, &Context::host("node-a", None))
}

fn events(n: usize) -> Vec<Arc<VigilEvent>> {
    (0..n)
        .map(|i| Arc::new(exec_event(&format!("sh{i}"), "/bin/sh")))
        .collect()
}

/// An event whose subject and policy need percent-encoding in binary mode.
fn awkward_event() -> Arc<VigilEvent> {
    let mut event = exec_event("caf\u{e9}", "/tmp/\u{1b}[31m\"x\" 100%");
    event.subject = AWKWARD_SUBJECT.into();
    event.policy = Some("ops/deny \u{e9}%".into());
    Arc::new(event)
}

/// Quick retries, so that the tests measure the receiver's waits and not the backoff.
fn options(url: reqwest::Url, mode: HttpMode) -> HttpOptions {
    let mut options = HttpOptions::new(url, mode);
    options.retry = RetryOptions {
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(200),
        max_elapsed: Some(Duration::from_secs(30)),
    };
    options
}

fn new_sink(options: HttpOptions) -> HttpSink {
    HttpSink::new("siem".into(), options).expect("sink")
}

/// The structured-mode JSON of `event`, as the sdk writes it.
fn structured(event: &VigilEvent) -> Value {
    serde_json::to_value(event.to_cloudevent().expect("cloudevent")).expect("json")
}

fn json_body(c: &Captured) -> Value {
    serde_json::from_slice(&c.body).expect("a JSON body")
}

#[tokio::test]
async fn structured_mode_sends_one_cloudevent_json_per_request_with_custom_headers() {
    let rx = Receiver::start(vec![]).await;
    let mut opts = options(rx.url("http"), HttpMode::Structured);
    opts.headers = vec![
        ("X-Team".into(), "security".into()),
        ("Authorization".into(), "Bearer t0ken".into()),
    ];
    let mut sink = new_sink(opts);
    let sent = events(2);
    sink.deliver(&sent).await.expect("delivered");

    let got = rx.captured();
    assert_eq!(got.len(), 2);
    for (c, event) in got.iter().zip(&sent) {
        assert_eq!((c.method.as_str(), c.path.as_str()), ("POST", "/events"));
        assert_eq!(c.header("content-type"), "application/cloudevents+json");
        assert_eq!(c.header("x-team"), "security");
        assert_eq!(c.header("authorization"), "Bearer t0ken");
        assert!(c.header("user-agent").starts_with("vigil/"));
        assert!(
            !c.headers.iter().any(|(n, _)| n.starts_with("ce-")),
            "structured mode carries no ce- headers: {:?}",
            c.headers
        );
        let body = json_body(c);
        assert_eq!(body, structured(event));
        assert_eq!(body["specversion"], "1.0");
        assert_eq!(body["id"], event.id.as_str());
        assert_eq!(body["datacontenttype"], "application/json");
        assert_eq!(body["data"]["process"]["comm"], event_comm(event));
    }
    let stats = sink.stats();
    assert_eq!(stats.delivered.load(Ordering::Relaxed), 2);
    assert_eq!(stats.retries.load(Ordering::Relaxed), 0);
}

fn event_comm(event: &VigilEvent) -> Value {
    structured(event)["data"]["process"]["comm"].clone()
}

#[tokio::test]
async fn binary_mode_sends_attributes_as_percent_encoded_ce_headers_and_data_as_body() {
    let rx = Receiver::start(vec![]).await;
    let mut sink = new_sink(options(rx.url("http"), HttpMode::Binary));
    let event = awkward_event();
    sink.deliver(std::slice::from_ref(&event))
        .await
        .expect("delivered");

    let got = rx.captured();
    assert_eq!(got.len(), 1);
    let c = &got[0];
    let expected = structured(&event);
    assert_eq!(c.header("content-type"), "application/json");
    assert_eq!(c.header("ce-specversion"), "1.0");
    let decoded = |name: &str| {
        let raw = c.header(name);
        assert!(
            raw.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b'"'),
            "{name}: {raw:?} is not printable ASCII without quotes"
        );
        percent_decode_str(raw)
            .decode_utf8()
            .expect("UTF-8")
            .into_owned()
    };
    for attr in [
        "id",
        "source",
        "type",
        "subject",
        "vigilverdict",
        "vigilaction",
        "vigilseverity",
        "vigilpolicy",
    ] {
        assert_eq!(
            Value::String(decoded(&format!("ce-{attr}"))),
            expected[attr],
            "ce-{attr}"
        );
    }
    assert_eq!(decoded("ce-subject"), AWKWARD_SUBJECT);
    assert_eq!(
        c.header("ce-subject"),
        "namespaces/ops/pods/caf%C3%A9%20%22100%25%22"
    );
    let time = DateTime::parse_from_rfc3339(&decoded("ce-time")).expect("RFC 3339 time");
    assert_eq!(time, event.time);
    // Every attribute is a header, and no other ce- header is there.
    let ce_headers: Vec<&str> = c
        .headers
        .iter()
        .filter_map(|(n, _)| n.strip_prefix("ce-"))
        .collect();
    let mut attrs: Vec<&str> = expected
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .filter(|k| !matches!(*k, "data" | "datacontenttype"))
        .collect();
    let mut ce_sorted = ce_headers.clone();
    ce_sorted.sort_unstable();
    attrs.sort_unstable();
    assert_eq!(ce_sorted, attrs);
    assert_eq!(json_body(c), expected["data"]);
}

#[tokio::test]
async fn batch_mode_sends_json_arrays_of_structured_events_cut_by_count_and_bytes() {
    let rx = Receiver::start(vec![]).await;
    let mut opts = options(rx.url("http"), HttpMode::Batch);
    opts.batch_max_events = 2;
    let mut sink = new_sink(opts);
    let sent = events(5);
    sink.deliver(&sent).await.expect("delivered");

    let got = rx.captured();
    assert_eq!(got.len(), 3, "5 events, at most 2 per request");
    let mut ids = Vec::new();
    for c in &got {
        assert_eq!(
            c.header("content-type"),
            "application/cloudevents-batch+json"
        );
        assert!(!c.headers.iter().any(|(n, _)| n.starts_with("ce-")));
        let Value::Array(batch) = json_body(c) else {
            panic!("not a JSON array")
        };
        for item in batch {
            let event = sent
                .iter()
                .find(|e| item["id"] == e.id.as_str())
                .expect("a sent event");
            assert_eq!(item, structured(event));
            ids.push(event.id.to_string());
        }
    }
    let sent_ids: Vec<String> = sent.iter().map(|e| e.id.to_string()).collect();
    assert_eq!(ids, sent_ids, "each event once, in order");
    assert_eq!(sink.stats().delivered.load(Ordering::Relaxed), 5);

    // By bytes: each request stays under the cap, an event alone may exceed it.
    let rx = Receiver::start(vec![]).await;
    let one = serde_json::to_vec(&structured(&sent[0])).unwrap().len();
    let mut opts = options(rx.url("http"), HttpMode::Batch);
    opts.batch_max_bytes = 2 * one + 40;
    let mut sink = new_sink(opts);
    sink.deliver(&sent).await.expect("delivered");
    let sizes: Vec<usize> = rx
        .captured()
        .iter()
        .map(|c| json_body(c).as_array().unwrap().len())
        .collect();
    assert_eq!(sizes.iter().sum::<usize>(), 5);
    assert!(sizes.iter().all(|n| *n <= 2), "{sizes:?}");
    assert!(rx.captured().iter().all(|c| c.body.len() <= 2 * one + 40));
}

#[tokio::test]
async fn a_429_with_retry_after_is_waited_out_and_the_event_arrives_once() {
    let rx = Receiver::start(vec![Reply::status(429).header("retry-after", "2")]).await;
    let mut sink = new_sink(options(rx.url("http"), HttpMode::Structured));
    let sent = events(1);
    sink.deliver(&sent).await.expect("delivered after the wait");

    let got = rx.captured();
    assert_eq!(
        got.iter().map(|c| c.status).collect::<Vec<_>>(),
        vec![429, 200]
    );
    let waited = got[1].at - got[0].at;
    assert!(
        waited >= Duration::from_secs(2),
        "retried after {waited:?}, before Retry-After's 2 s"
    );
    // A liveness bound, not a speed claim: the retry came, and not after an age.
    assert!(waited < Duration::from_secs(60), "waited {waited:?}");
    assert_eq!(json_body(&got[1])["id"], sent[0].id.as_str());
    let accepted = got.iter().filter(|c| c.status == 200).count();
    assert_eq!(accepted, 1, "accepted once");
    let stats = sink.stats();
    assert_eq!(stats.retries.load(Ordering::Relaxed), 1);
    assert_eq!(stats.delivered.load(Ordering::Relaxed), 1);
    assert_eq!(stats.failed.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn retry_after_as_an_http_date_is_honoured() {
    let at = std::time::SystemTime::now() + Duration::from_secs(3);
    let rx = Receiver::start(vec![
        Reply::status(503).header("retry-after", httpdate::fmt_http_date(at)),
    ])
    .await;
    let mut sink = new_sink(options(rx.url("http"), HttpMode::Binary));
    sink.deliver(&events(1)).await.expect("delivered");
    let got = rx.captured();
    assert_eq!(got.len(), 2);
    // The date has whole seconds: the wait is at least 2 s of the 3.
    let waited = got[1].at - got[0].at;
    assert!(waited >= Duration::from_secs(2), "retried after {waited:?}");
}

#[tokio::test]
async fn server_errors_are_retried_until_accepted_with_the_same_event() {
    let rx = Receiver::start(vec![
        Reply::status(500),
        Reply::status(503),
        Reply::status(502),
        Reply::status(408),
    ])
    .await;
    let mut sink = new_sink(options(rx.url("http"), HttpMode::Batch));
    let sent = events(3);
    sink.deliver(&sent).await.expect("delivered");

    let got = rx.captured();
    assert_eq!(
        got.iter().map(|c| c.status).collect::<Vec<_>>(),
        vec![500, 503, 502, 408, 200]
    );
    let first = &got[0].body;
    assert!(
        got.iter().all(|c| &c.body == first),
        "the same batch each time"
    );
    let stats = sink.stats();
    assert_eq!(stats.retries.load(Ordering::Relaxed), 4);
    assert_eq!(stats.delivered.load(Ordering::Relaxed), 3);
}

#[tokio::test]
async fn a_400_is_not_retried_and_the_error_names_sink_url_and_status() {
    let rx = Receiver::start(vec![Reply::status(400).body("invalid event\n")]).await;
    let url = rx.url("http");
    let mut sink = new_sink(options(url.clone(), HttpMode::Structured));
    let err = sink.deliver(&events(1)).await.expect_err("refused");

    assert!(
        matches!(err, SinkError::HttpRefused { status: 400, .. }),
        "{err:?}"
    );
    let text = err.to_string();
    for part in ["siem", url.as_str(), "400", "invalid event"] {
        assert!(text.contains(part), "{part:?} missing from: {text}");
    }
    assert_eq!(rx.captured().len(), 1, "not retried");
    let stats = sink.stats();
    assert_eq!(stats.failed.load(Ordering::Relaxed), 1);
    assert_eq!(stats.retries.load(Ordering::Relaxed), 0);
    assert_eq!(stats.delivered.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn a_refused_event_does_not_hold_back_the_others_of_its_batch() {
    let rx = Receiver::start(vec![Reply::status(200), Reply::status(422)]).await;
    let mut sink = new_sink(options(rx.url("http"), HttpMode::Structured));
    let sent = events(3);
    let err = sink.deliver(&sent).await.expect_err("one refused");

    let text = err.to_string();
    assert!(
        text.contains("1 of 3 events") && text.contains("422"),
        "{text}"
    );
    let got = rx.captured();
    assert_eq!(got.len(), 3);
    assert_eq!(json_body(&got[2])["id"], sent[2].id.as_str());
    let stats = sink.stats();
    assert_eq!(stats.delivered.load(Ordering::Relaxed), 2);
    assert_eq!(stats.failed.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn a_receiver_that_is_not_listening_yet_gets_the_event_once_it_appears() {
    // The port is known, nothing listens on it until the receiver starts.
    let probe = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = probe.local_addr().unwrap();
    drop(probe);
    let url = reqwest::Url::parse(&format!("http://{addr}/events")).unwrap();
    let mut sink = new_sink(options(url, HttpMode::Structured));
    let stats = sink.stats();
    let sent = events(1);
    let id = sent[0].id;
    let started = Instant::now();
    let delivery = tokio::spawn(async move { sink.deliver(&sent).await });

    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!delivery.is_finished(), "delivered with nobody listening");
    let retries_while_down = stats.retries.load(Ordering::Relaxed);
    assert!(
        retries_while_down >= 2,
        "{retries_while_down} retries in 1 s"
    );
    let listener = tokio::net::TcpListener::bind(addr).await.expect("rebind");
    let rx = Receiver::serve(listener, vec![], None);
    tokio::time::timeout(Duration::from_secs(10), delivery)
        .await
        .expect("delivered soon after the receiver came up")
        .expect("task")
        .expect("delivered");

    let got = rx.captured();
    assert_eq!(got.len(), 1);
    assert_eq!(json_body(&got[0])["id"], id.as_str());
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert_eq!(stats.delivered.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn a_receiver_that_takes_5_s_is_waited_for_within_the_timeout() {
    let rx = Receiver::start(vec![Reply::status(200).delay(Duration::from_secs(5))]).await;
    let mut sink = new_sink(options(rx.url("http"), HttpMode::Structured));
    let started = Instant::now();
    sink.deliver(&events(1)).await.expect("delivered");
    assert!(started.elapsed() >= Duration::from_secs(5));
    assert_eq!(rx.captured().len(), 1, "one request, no retry");
    assert_eq!(sink.stats().retries.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn a_receiver_slower_than_the_timeout_is_retried_and_the_event_lands() {
    let rx = Receiver::start(vec![Reply::status(200).delay(Duration::from_secs(5))]).await;
    let mut opts = options(rx.url("http"), HttpMode::Structured);
    opts.timeout = Duration::from_secs(1);
    let mut sink = new_sink(opts);
    let sent = events(1);
    let started = Instant::now();
    sink.deliver(&sent).await.expect("delivered");

    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}: the 5 s answer was waited for",
        started.elapsed()
    );
    let got = rx.captured();
    // At least once: the slow request had been received too; the id lets receivers
    // de-duplicate.
    assert_eq!(got.len(), 2);
    assert!(
        got.iter()
            .all(|c| json_body(c)["id"] == sent[0].id.as_str())
    );
    assert_eq!(sink.stats().retries.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn retrying_stops_at_max_elapsed_with_an_error_naming_the_last_failure() {
    let rx = Receiver::start((0..100).map(|_| Reply::status(503)).collect()).await;
    let mut opts = options(rx.url("http"), HttpMode::Batch);
    opts.retry.max_elapsed = Some(Duration::from_millis(600));
    let mut sink = new_sink(opts);
    let started = Instant::now();
    let err = sink.deliver(&events(2)).await.expect_err("gave up");

    assert!(
        started.elapsed() < Duration::from_secs(60),
        "gave up at all"
    );
    let text = err.to_string();
    assert!(
        text.contains("siem") && text.contains("gave up") && text.contains("503"),
        "{text}"
    );
    let stats = sink.stats();
    assert_eq!(stats.failed.load(Ordering::Relaxed), 2);
    assert_eq!(
        stats.retries.load(Ordering::Relaxed) + 1,
        rx.captured().len() as u64
    );
}

/// Logs of the current thread, as text.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn header_values_and_url_passwords_reach_neither_logs_nor_errors() {
    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let rx = Receiver::start(vec![Reply::status(503), Reply::status(401)]).await;
    let mut url = rx.url("http");
    url.set_username("vigil").unwrap();
    url.set_password(Some("pa55word")).unwrap();
    let mut opts = options(url, HttpMode::Structured);
    opts.headers = vec![("X-Api-Key".into(), "s3cr3t-t0ken".into())];
    let mut sink = new_sink(opts);
    let err = sink.deliver(&events(1)).await.expect_err("401");

    let got = rx.captured();
    assert_eq!(got[0].header("x-api-key"), "s3cr3t-t0ken");
    // reqwest sends the URL's user and password as Basic authentication.
    assert!(got[0].header("authorization").starts_with("Basic "));
    let logs = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let err = format!("{err} {err:?}");
    assert!(
        logs.contains("retrying") && logs.contains("giving up"),
        "{logs}"
    );
    assert!(
        logs.contains("X-Api-Key"),
        "header names are logged: {logs}"
    );
    for text in [&logs, &err] {
        assert!(!text.contains("s3cr3t"), "a header value leaked: {text}");
        assert!(!text.contains("pa55word"), "the password leaked: {text}");
    }
}

/// A certificate for 127.0.0.1 signed by itself, and its rustls server configuration.
fn self_signed() -> (String, Arc<rustls::ServerConfig>) {
    let certified =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).expect("certificate");
    let key = rustls::pki_types::PrivateKeyDer::try_from(certified.signing_key.serialize_der())
        .expect("key");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocols")
    .with_no_client_auth()
    .with_single_cert(vec![certified.cert.der().clone()], key)
    .expect("server config");
    (certified.cert.pem(), Arc::new(config))
}

fn write_pem(dir: &Path, name: &str, pem: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, pem).expect("write PEM");
    path
}

#[tokio::test]
async fn tls_is_trusted_with_the_ca_file_and_refused_without_it_or_with_another_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (pem, config) = self_signed();
    let (other_pem, _) = self_signed();
    let ca = write_pem(dir.path(), "ca.pem", &pem);
    let wrong_ca = write_pem(dir.path(), "other-ca.pem", &other_pem);
    let rx = Receiver::start_tls(vec![], config).await;
    let url = rx.url("https");

    let mut opts = options(url.clone(), HttpMode::Binary);
    opts.ca_file = Some(ca);
    let mut trusting = new_sink(opts);
    let sent = events(1);
    trusting.deliver(&sent).await.expect("delivered over TLS");
    let got = rx.captured();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].header("ce-id"), sent[0].id.as_str());

    for ca_file in [None, Some(wrong_ca)] {
        let mut opts = options(url.clone(), HttpMode::Binary);
        opts.ca_file = ca_file.clone();
        let mut refusing = new_sink(opts);
        let started = Instant::now();
        let err = refusing.deliver(&sent).await.expect_err("untrusted");
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "a certificate error is not retried: {err} after {:?}",
            started.elapsed()
        );
        assert!(matches!(err, SinkError::Tls { .. }), "{err:?}");
        let text = err.to_string();
        for part in ["siem", url.as_str(), "invalid peer certificate", "caFile"] {
            assert!(
                text.contains(part),
                "{ca_file:?}: {part:?} missing from: {text}"
            );
        }
        assert_eq!(refusing.stats().failed.load(Ordering::Relaxed), 1);
        assert_eq!(refusing.stats().retries.load(Ordering::Relaxed), 0);
    }
    assert_eq!(
        rx.captured().len(),
        1,
        "nothing reached the receiver untrusted"
    );
    // The receiver reads the client's alert after the client has given up.
    let deadline = Instant::now() + Duration::from_secs(60);
    while rx.tls_failures().len() < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(rx.tls_failures().len(), 2, "{:?}", rx.tls_failures());
}

/// Where the Python `cloudevents` package is installed for these tests, made on first use.
/// `None` only outside CI when python3 or pip cannot provide it.
fn python_with_cloudevents() -> Option<PathBuf> {
    python::with_package(
        "py-cloudevents",
        "cloudevents==2.2.0",
        "import cloudevents.core.bindings.http",
    )
}

/// Attributes and data of `event` as the Python script prints them.
fn expected(event: &VigilEvent) -> Value {
    let mut structured = structured(event);
    let data = structured.as_object_mut().unwrap().remove("data").unwrap();
    json!({"attributes": structured, "data": data})
}

#[tokio::test]
async fn the_python_cloudevents_package_reads_every_mode_into_the_same_events() {
    let Some(python) = python_with_cloudevents() else {
        return;
    };
    let mut requests = Vec::new();
    let mut expect = Vec::new();
    for (mode, batch) in [
        (
            HttpMode::Structured,
            vec![awkward_event(), events(1).remove(0)],
        ),
        (HttpMode::Binary, vec![awkward_event(), events(1).remove(0)]),
        (HttpMode::Batch, {
            let mut b = events(3);
            b.push(awkward_event());
            b
        }),
    ] {
        let rx = Receiver::start(vec![]).await;
        let mut sink = new_sink(options(rx.url("http"), mode));
        sink.deliver(&batch).await.expect("delivered");
        for c in rx.captured() {
            let headers: BTreeMap<String, String> = c.headers.into_iter().collect();
            requests.push(json!({"headers": headers, "body": String::from_utf8(c.body).unwrap()}));
        }
        expect.extend(batch.iter().map(|e| expected(e)));
    }
    assert_eq!(requests.len(), 5, "2 structured, 2 binary, 1 batch");

    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("requests.json");
    std::fs::write(&input, serde_json::to_vec(&requests).unwrap()).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/http_sink/consume.py");
    let out = Command::new(&python)
        .arg(&script)
        .arg(&input)
        .output()
        .expect("run the consumer");
    assert!(
        out.status.success(),
        "consumer failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let parsed: Vec<Value> = serde_json::from_slice(&out.stdout).expect("consumer output");
    assert_eq!(parsed.len(), expect.len());
    for (got, want) in parsed.iter().zip(&expect) {
        let mut got = got.clone();
        let mut want = want.clone();
        // The same instant, to the microsecond: Python's datetime keeps no nanoseconds.
        let got_time = take_time(&mut got);
        let want_time = take_time(&mut want);
        let apart = (got_time - want_time).num_nanoseconds().unwrap().abs();
        assert!(apart < 1000, "{got_time} vs {want_time}");
        assert_eq!(got, want);
    }
}

fn take_time(event: &mut Value) -> DateTime<chrono::FixedOffset> {
    let time = event["attributes"]
        .as_object_mut()
        .unwrap()
        .remove("time")
        .expect("a time");
    DateTime::parse_from_rfc3339(time.as_str().unwrap()).expect("RFC 3339")
}

#[tokio::test]
async fn behind_the_fan_out_a_dead_receiver_delays_no_other_http_sink() {
    use vigil::sink::FanOut;

    let healthy = Receiver::start(vec![]).await;
    let probe = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_url =
        reqwest::Url::parse(&format!("http://{}/events", probe.local_addr().unwrap())).unwrap();
    drop(probe);
    let mut dead_options = options(dead_url, HttpMode::Batch);
    dead_options.retry.max_elapsed = None;
    let dead = HttpSink::new("dead".into(), dead_options).unwrap();
    let dead_stats = dead.stats();
    let alive = new_sink(options(healthy.url("http"), HttpMode::Batch));
    let alive_stats = alive.stats();
    let fan = FanOut::start(
        vec![
            (
                Box::new(dead) as Box<dyn vigil::sink::Sink>,
                Default::default(),
            ),
            (Box::new(alive), Default::default()),
        ],
        1024,
    );

    let sent: Vec<VigilEvent> = events(50).iter().map(|e| (**e).clone()).collect();
    let ids: Vec<String> = sent.iter().map(|e| e.id.to_string()).collect();
    let started = Instant::now();
    for event in sent {
        fan.send(event);
    }
    while alive_stats.delivered.load(Ordering::Relaxed) < 50 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the healthy sink is held up"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut got: Vec<String> = healthy
        .captured()
        .iter()
        .flat_map(|c| {
            json_body(c)
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["id"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    got.dedup();
    assert_eq!(got, ids);
    assert_eq!(dead_stats.delivered.load(Ordering::Relaxed), 0);
    assert!(dead_stats.retries.load(Ordering::Relaxed) > 0);
    // The dead sink retries until its receiver returns: the fan-out is not closed here, and
    // its worker ends with the test's runtime.
    drop(fan);
}

/// A port of 127.0.0.1 nobody listens on (yet): the test binds it when the receiver returns.
async fn silent_port() -> std::net::SocketAddr {
    let probe = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = probe.local_addr().unwrap();
    drop(probe);
    addr
}

fn spooled(url: reqwest::Url, mode: HttpMode, dir: &Path) -> SpooledSink {
    SpooledSink::new(
        Box::new(new_sink(options(url, mode))),
        dir.to_path_buf(),
        1024 * 1024,
    )
    .expect("spooled sink")
}

/// The structured events the receiver got, in any mode's body (one event, or a batch).
fn received(rx: &Receiver) -> Vec<Value> {
    rx.captured()
        .iter()
        .flat_map(|c| match json_body(c) {
            Value::Array(events) => events,
            one => vec![one],
        })
        .collect()
}

#[tokio::test]
async fn a_spool_takes_events_while_the_receiver_is_down_and_a_restarted_sink_delivers_them_unchanged()
 {
    let dir = tempfile::tempdir().unwrap();
    let addr = silent_port().await;
    let url = reqwest::Url::parse(&format!("http://{addr}/events")).unwrap();
    let first = events(40);
    let second = events(25);
    {
        let mut sink = spooled(url.clone(), HttpMode::Batch, dir.path());
        // Taking events does not wait for the receiver: they are on disk when this returns.
        tokio::time::timeout(Duration::from_secs(10), sink.deliver(&first))
            .await
            .expect("the spool takes events with the receiver down")
            .expect("spooled");
        sink.deliver(&second).await.expect("spooled");
        assert_eq!(
            sink.shared_stats().unwrap().failed.load(Ordering::Relaxed),
            0
        );
        // The agent stops: the sink and its sender go, the spool stays.
        sink.close().await;
    }
    let restarted = spooled(url, HttpMode::Batch, dir.path());
    let rx = Receiver::serve(
        tokio::net::TcpListener::bind(addr).await.unwrap(),
        vec![],
        None,
    );
    let all: Vec<Arc<VigilEvent>> = first.iter().chain(&second).cloned().collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while received(&rx).len() < all.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let got = received(&rx);
    assert_eq!(got.len(), all.len(), "every spooled event, once");
    for (want, got) in all.iter().zip(&got) {
        assert_eq!(got, &structured(want), "the event as it was taken, same id");
    }
    restarted.close().await;
}

#[tokio::test]
async fn spooled_events_go_out_in_each_mode_and_a_refused_one_is_counted_without_holding_back_the_rest()
 {
    for mode in [HttpMode::Structured, HttpMode::Binary] {
        let dir = tempfile::tempdir().unwrap();
        let rx = Receiver::start(vec![
            Reply::status(200),
            Reply::status(400),
            Reply::status(200),
        ])
        .await;
        let mut sink = spooled(rx.url("http"), mode, dir.path());
        let sent = events(3);
        sink.deliver(&sent).await.expect("spooled");
        let deadline = Instant::now() + Duration::from_secs(60);
        while rx.captured().len() < 3 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let got = rx.captured();
        assert_eq!(got.len(), 3, "{mode:?}: the refused one is not retried");
        let stats = sink.shared_stats().unwrap();
        let failed = || stats.failed.load(Ordering::Relaxed);
        let deadline = Instant::now() + Duration::from_secs(60);
        while failed() == 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(failed(), 1, "{mode:?}");
        let ids: Vec<String> = got
            .iter()
            .map(|c| match mode {
                HttpMode::Binary => c
                    .headers
                    .iter()
                    .find(|(k, _)| k == "ce-id")
                    .map(|(_, v)| v.clone())
                    .expect("ce-id"),
                _ => json_body(c)["id"].as_str().unwrap().to_string(),
            })
            .collect();
        let want: Vec<String> = sent.iter().map(|e| e.id.to_string()).collect();
        assert_eq!(ids, want, "{mode:?}: in order, each with its id");
    }
}
