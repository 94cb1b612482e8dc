//! Splunk HTTP Event Collector: several events per `POST {url}/services/collector/event`,
//! each `{"time", "host", "source", "sourcetype", "index", "event": <the CloudEvent>}`.
//! Status codes are handled as Splunk documents them: busy or unhealthy (503) and 429 are
//! retried, a missing, invalid or disabled token stops and is reported, invalid data drops
//! the request's events and counts them. With `ack`, an event counts as delivered only once
//! the indexers acknowledge it (`/services/collector/ack`); a request whose acknowledgement
//! does not come within `ack_timeout` is sent again, with the same event ids.
use std::{
    collections::HashSet,
    io::Write,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use futures::future::BoxFuture;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use serde::Deserialize;
use tokio::time::Instant;

use super::{
    Sink, SinkError,
    slack::{Backoff, Retry, retry_after},
};
use crate::{cloudevents::VigilEvent, secret::Secret};

const CHANNEL_HEADER: &str = "X-Splunk-Request-Channel";

#[derive(Debug)]
pub struct SplunkOptions {
    /// The collector's base URL, e.g. `https://splunk.example:8088`.
    pub url: String,
    /// Read by the caller from `tokenEnv`; never logged, never in an error.
    pub token: Secret,
    /// The token's default index when `None`.
    pub index: Option<String>,
    /// The token's default sourcetype when `None`.
    pub sourcetype: Option<String>,
    /// The event's CloudEvent `source` (`/vigil/nodes/<node>`) when `None`.
    pub source: Option<String>,
    /// The node's name.
    pub host: String,
    /// Indexer acknowledgement: delivered only once Splunk confirms.
    pub ack: bool,
    /// PEM bundle of extra trusted CAs for the collector's certificate.
    pub ca_file: Option<PathBuf>,
    /// Requests are cut below this size (HEC refuses bodies over its `max_content_length`).
    pub max_request_bytes: usize,
    pub ack_poll_interval: Duration,
    /// A request not acknowledged within this is sent again.
    pub ack_timeout: Duration,
    pub retry: Retry,
    pub request_timeout: Duration,
}

impl SplunkOptions {
    pub fn new(url: String, token: Secret, host: String) -> Self {
        Self {
            url,
            token,
            index: None,
            sourcetype: None,
            source: None,
            host,
            ack: false,
            ca_file: None,
            max_request_bytes: 512 * 1024,
            ack_poll_interval: Duration::from_millis(500),
            ack_timeout: Duration::from_secs(60),
            retry: Retry::default(),
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// What a Splunk sink has done since start.
#[derive(Debug, Default)]
pub struct SplunkStats {
    /// Events Splunk accepted, and with `ack` acknowledged.
    pub events_delivered: AtomicU64,
    /// Events dropped because Splunk found their request's data invalid (codes 5, 6, 12, 13,
    /// 15).
    pub events_invalid: AtomicU64,
    /// Events refused for a token or configuration error (codes 1–4, 7, 10, 11, 14, 16).
    pub events_refused: AtomicU64,
    /// Attempts repeated after a 429, a 5xx or a failed connection.
    pub retries: AtomicU64,
    /// 503 (busy, unhealthy) and 429 answers.
    pub busy: AtomicU64,
    /// Requests sent again because their acknowledgement did not come in time.
    pub ack_timeouts: AtomicU64,
}

pub struct SplunkSink {
    name: String,
    client: reqwest::Client,
    /// For errors: the collector's URL (the token travels in a header).
    url: String,
    event_url: String,
    ack_url: String,
    authorization: HeaderValue,
    /// The channel of indexer acknowledgement: one per sink, for its lifetime.
    channel: Option<String>,
    options: SplunkOptions,
    stats: Arc<SplunkStats>,
    /// HEC codes already logged: each is logged once, and counted every time.
    reported: HashSet<i64>,
}

/// An HEC reply body: `{"text":"Success","code":0,"ackId":7}` or
/// `{"text":"Invalid data format","code":6,"invalidEventNumber":2}`.
#[derive(Debug, Default, Deserialize)]
struct HecReply {
    text: Option<String>,
    code: Option<i64>,
    #[serde(rename = "ackId")]
    ack_id: Option<u64>,
}

/// `{"acks":{"7":true}}`
#[derive(Debug, Deserialize)]
struct AckReply {
    acks: std::collections::HashMap<String, bool>,
}

enum Reply {
    Accepted(Option<u64>),
    Retry(Option<Duration>, String),
    Invalid(i64, String),
    Refused(u16, String),
}

enum Failure {
    Invalid(i64, String),
    Refused(SinkError),
    GaveUp(SinkError),
}

impl SplunkSink {
    pub fn new(name: impl Into<String>, options: SplunkOptions) -> Result<Self, SinkError> {
        let name = name.into();
        let base = options.url.trim_end_matches('/').to_string();
        reqwest::Url::parse(&base).map_err(|e| SinkError::BadUrl {
            sink: name.clone(),
            url: base.clone(),
            reason: e.to_string(),
        })?;
        let builder = reqwest::Client::builder()
            .timeout(options.request_timeout)
            // A redirect would carry the token somewhere the configuration did not name.
            .redirect(reqwest::redirect::Policy::none());
        let builder = super::trust::add_ca_file(builder, &name, options.ca_file.as_deref())?;
        let client = builder.build().map_err(|e| SinkError::Client {
            sink: name.clone(),
            source: e.without_url(),
        })?;
        let mut authorization =
            HeaderValue::from_str(&format!("Splunk {}", options.token.expose()))
                .map_err(|_| SinkError::BadToken { sink: name.clone() })?;
        authorization.set_sensitive(true);
        let channel = options.ack.then(|| uuid::Uuid::new_v4().to_string());
        Ok(Self {
            event_url: format!("{base}/services/collector/event"),
            ack_url: format!(
                "{base}/services/collector/ack?channel={}",
                channel.as_deref().unwrap_or_default()
            ),
            url: base,
            name,
            client,
            authorization,
            channel,
            options,
            stats: Arc::new(SplunkStats::default()),
            reported: HashSet::new(),
        })
    }

    pub fn stats(&self) -> Arc<SplunkStats> {
        self.stats.clone()
    }

    /// One event as HEC takes it. `time` is written by hand: seconds with six decimals, exact,
    /// where a float would round.
    fn encode(&self, event: &VigilEvent, out: &mut Vec<u8>) -> Result<(), SinkError> {
        let encode_error = |e: Box<dyn std::error::Error + Send + Sync>| SinkError::Encode {
            sink: self.name.clone(),
            id: event.id.to_string(),
            source: e,
        };
        let mut write = || -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
            write!(
                out,
                "{{\"time\":{}.{:06},\"host\":",
                event.time.timestamp(),
                event.time.timestamp_subsec_micros()
            )?;
            serde_json::to_writer(&mut *out, &self.options.host)?;
            out.extend_from_slice(b",\"source\":");
            let source = self.options.source.as_deref().unwrap_or(&event.source);
            serde_json::to_writer(&mut *out, source)?;
            if let Some(sourcetype) = &self.options.sourcetype {
                out.extend_from_slice(b",\"sourcetype\":");
                serde_json::to_writer(&mut *out, sourcetype)?;
            }
            if let Some(index) = &self.options.index {
                out.extend_from_slice(b",\"index\":");
                serde_json::to_writer(&mut *out, index)?;
            }
            out.extend_from_slice(b",\"event\":");
            event.write_json(out)?;
            out.extend_from_slice(b"}\n");
            Ok(())
        };
        write().map_err(encode_error)
    }

    /// The request bodies for `events`, each with its number of events.
    fn requests(&self, events: &[Arc<VigilEvent>]) -> Result<Vec<(Vec<u8>, usize)>, SinkError> {
        let mut requests = Vec::new();
        let mut body = Vec::new();
        let mut n = 0;
        let mut one = Vec::new();
        for event in events {
            one.clear();
            self.encode(event, &mut one)?;
            if n > 0 && body.len() + one.len() > self.options.max_request_bytes {
                requests.push((std::mem::take(&mut body), n));
                n = 0;
            }
            body.extend_from_slice(&one);
            n += 1;
        }
        if n > 0 {
            requests.push((body, n));
        }
        Ok(requests)
    }

    /// Sends one request until it is accepted (and acknowledged), refused, or given up.
    async fn send(&mut self, body: &[u8]) -> Result<(), Failure> {
        let started = Instant::now();
        let mut backoff = Backoff::new(&self.options.retry);
        let mut attempts = 0;
        loop {
            attempts += 1;
            let (wait, last) = match self.post_events(body).await {
                Reply::Accepted(ack_id) => match (self.channel.is_some(), ack_id) {
                    (false, _) => return Ok(()),
                    (true, None) => {
                        // Splunk took the events; only the confirmation is unavailable.
                        self.report_once(
                            -1,
                            "ack is on but Splunk's replies carry no ackId: indexer \
                             acknowledgement is not enabled for this token; events count as \
                             delivered when accepted",
                        );
                        return Ok(());
                    }
                    (true, Some(id)) => match self.await_ack(id).await? {
                        true => return Ok(()),
                        false => {
                            self.stats.ack_timeouts.fetch_add(1, Ordering::Relaxed);
                            (
                                Duration::ZERO,
                                format!(
                                    "ackId {id} not acknowledged within {:?}",
                                    self.options.ack_timeout
                                ),
                            )
                        }
                    },
                },
                Reply::Retry(after, last) => (after.unwrap_or_else(|| backoff.next_delay()), last),
                Reply::Invalid(code, reason) => return Err(Failure::Invalid(code, reason)),
                Reply::Refused(status, reason) => {
                    return Err(Failure::Refused(self.refused(status, reason)));
                }
            };
            if started.elapsed() + wait > self.options.retry.give_up_after {
                return Err(Failure::GaveUp(SinkError::GaveUp {
                    sink: self.name.clone(),
                    receiver: self.url.clone(),
                    attempts,
                    last,
                }));
            }
            self.stats.retries.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(wait).await;
        }
    }

    async fn post_events(&self, body: &[u8]) -> Reply {
        let mut request = self
            .client
            .post(&self.event_url)
            .header(AUTHORIZATION, self.authorization.clone())
            .header(CONTENT_TYPE, "application/json")
            .body(body.to_vec());
        if let Some(channel) = &self.channel {
            request = request.header(CHANNEL_HEADER, channel);
        }
        match request.send().await {
            Err(err) => Reply::Retry(None, err.without_url().to_string()),
            Ok(reply) => {
                let status = reply.status().as_u16();
                let after = retry_after(reply.headers());
                let body: HecReply = reply
                    .text()
                    .await
                    .ok()
                    .and_then(|t| serde_json::from_str(&t).ok())
                    .unwrap_or_default();
                self.classify(status, after, body)
            }
        }
    }

    /// HEC's status codes, as Splunk documents them.
    fn classify(&self, status: u16, after: Option<Duration>, reply: HecReply) -> Reply {
        let code = reply.code.unwrap_or(-1);
        let reason = format!(
            "{} (code {code})",
            reply
                .text
                .as_deref()
                .unwrap_or("no HEC reply")
                .chars()
                .take(200)
                .collect::<String>()
        );
        if status == 200 && code <= 0 {
            return Reply::Accepted(reply.ack_id);
        }
        match (status, code) {
            (429 | 503, _) | (_, 9 | 18 | 19) => {
                self.stats.busy.fetch_add(1, Ordering::Relaxed);
                Reply::Retry(after, format!("HTTP {status}: {reason}"))
            }
            (500..=599, _) | (_, 8) => Reply::Retry(None, format!("HTTP {status}: {reason}")),
            (_, 5 | 6 | 12 | 13 | 15) => Reply::Invalid(code, reason),
            _ => Reply::Refused(status, reason),
        }
    }

    /// Polls the acknowledgement of `id` until it is true (`Ok(true)`), `ack_timeout` passes
    /// (`Ok(false)`), or Splunk refuses the polling for good.
    async fn await_ack(&mut self, id: u64) -> Result<bool, Failure> {
        let deadline = Instant::now() + self.options.ack_timeout;
        let body = serde_json::to_vec(&serde_json::json!({ "acks": [id] }))
            .expect("a JSON value serializes");
        let key = id.to_string();
        loop {
            tokio::time::sleep(self.options.ack_poll_interval).await;
            let reply = self
                .client
                .post(&self.ack_url)
                .header(AUTHORIZATION, self.authorization.clone())
                .header(CONTENT_TYPE, "application/json")
                .header(CHANNEL_HEADER, self.channel.as_deref().unwrap_or_default())
                .body(body.clone())
                .send()
                .await;
            if let Ok(reply) = reply {
                let status = reply.status().as_u16();
                let text = reply.text().await.unwrap_or_default();
                if status == 200 {
                    if let Ok(acks) = serde_json::from_str::<AckReply>(&text)
                        && acks.acks.get(&key).copied().unwrap_or(false)
                    {
                        return Ok(true);
                    }
                } else {
                    let reply: HecReply = serde_json::from_str(&text).unwrap_or_default();
                    // Busy or failing: poll again. Anything else (acknowledgement disabled,
                    // a bad token or channel) polling cannot mend.
                    match self.classify(status, None, reply) {
                        Reply::Refused(_, reason) | Reply::Invalid(_, reason) => {
                            return Err(Failure::Refused(self.refused(status, reason)));
                        }
                        Reply::Retry(..) | Reply::Accepted(_) => {}
                    }
                }
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
        }
    }

    fn refused(&self, status: u16, reason: String) -> SinkError {
        SinkError::Refused {
            sink: self.name.clone(),
            receiver: self.url.clone(),
            status,
            reason,
        }
    }

    fn report_once(&mut self, code: i64, what: &str) {
        if self.reported.insert(code) {
            tracing::error!(sink = self.name, receiver = self.url, "{what}");
        }
    }
}

impl super::SinkCounters for SplunkStats {
    fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    /// Events HEC refused: as invalid data, or for the token or configuration.
    fn refusals(&self) -> Vec<(String, u64)> {
        vec![
            (
                "invalid_data".into(),
                self.events_invalid.load(Ordering::Relaxed),
            ),
            (
                "token_or_configuration".into(),
                self.events_refused.load(Ordering::Relaxed),
            ),
        ]
    }
}

impl Sink for SplunkSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn counters(&self) -> Option<Arc<dyn super::SinkCounters>> {
        Some(self.stats.clone())
    }

    fn deliver<'a>(
        &'a mut self,
        events: &'a [Arc<VigilEvent>],
    ) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move {
            let requests = self.requests(events)?;
            let mut left = events.len() as u64;
            for (body, n) in requests {
                let n = n as u64;
                match self.send(&body).await {
                    Ok(()) => {
                        self.stats.events_delivered.fetch_add(n, Ordering::Relaxed);
                    }
                    Err(Failure::Invalid(code, reason)) => {
                        self.stats.events_invalid.fetch_add(n, Ordering::Relaxed);
                        self.report_once(
                            code,
                            &format!(
                                "Splunk refused a request's data ({reason}): its events are \
                                 dropped and counted; later refusals of this kind are only \
                                 counted"
                            ),
                        );
                    }
                    Err(Failure::Refused(err)) => {
                        self.stats.events_refused.fetch_add(left, Ordering::Relaxed);
                        return Err(err);
                    }
                    Err(Failure::GaveUp(err)) => return Err(err),
                }
                left -= n;
            }
            Ok(())
        })
    }

    // `flush` has nothing to do: `deliver` returns once Splunk has the events (acknowledged,
    // with `ack`).
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, VecDeque};

    use serde_json::{Value, json};

    use super::*;
    use crate::sink::fake_http::{
        CapturedLog, FakeServer, HOSTILE, Request, Responder, Response, exec_violation,
    };

    const TOKEN: &str = "11111111-2222-3333-4444-555555555555";

    #[test]
    fn the_options_debug_form_hides_the_token() {
        let options = SplunkOptions::new(
            "https://127.0.0.1:8088".into(),
            Secret::new(TOKEN.into()),
            "n1".into(),
        );
        let shown = format!("{options:?}");
        assert!(!shown.contains(TOKEN), "{shown}");
        assert!(shown.contains("token: Secret(<redacted>)"), "{shown}");
    }

    /// Acknowledgements the fake gives: an ackId is acknowledged once it is at least this.
    type AcksFrom = Arc<AtomicU64>;

    fn reply(status: u16, body: Value) -> Response {
        Response::new(status, "application/json; charset=UTF-8", body.to_string())
    }

    /// Splunk's HTTP Event Collector as documented: the token checked (`Token is required`,
    /// code 2; `Invalid token`, code 4); the body parsed as concatenated event objects (`No
    /// data`, 5; `Invalid data format`, 6; `Event field is required`, 12; `Event field cannot
    /// be blank`, 13, with `invalidEventNumber`); with acknowledgement on, the channel
    /// required (`Data channel is missing`, 10), an `ackId` per request and
    /// `/services/collector/ack`; without, `ACK is disabled` (14). `script` answers event
    /// requests first, in order.
    fn hec(ack: bool, acks_from: AcksFrom, script: Vec<Response>) -> Responder {
        let mut script: VecDeque<Response> = script.into();
        let mut next_ack = 0u64;
        Box::new(move |req: &Request| {
            let (path, query) = req.target.split_once('?').unwrap_or((&req.target, ""));
            match req.header("authorization") {
                None => return reply(401, json!({"text": "Token is required", "code": 2})),
                Some(auth) if auth != format!("Splunk {TOKEN}") => {
                    return reply(403, json!({"text": "Invalid token", "code": 4}));
                }
                Some(_) => {}
            }
            let channel = req
                .header("x-splunk-request-channel")
                .map(str::to_string)
                .or_else(|| query.strip_prefix("channel=").map(str::to_string));
            match path {
                "/services/collector/event" => {
                    if let Some(scripted) = script.pop_front() {
                        return scripted;
                    }
                    if ack && channel.is_none() {
                        return reply(400, json!({"text": "Data channel is missing", "code": 10}));
                    }
                    let events: Vec<Result<Value, _>> =
                        serde_json::Deserializer::from_slice(&req.body)
                            .into_iter::<Value>()
                            .collect();
                    if events.is_empty() {
                        return reply(400, json!({"text": "No data", "code": 5}));
                    }
                    for (i, event) in events.iter().enumerate() {
                        let refusal = match event {
                            Err(_) => Some(("Invalid data format", 6)),
                            Ok(e) => match e.get("event") {
                                None => Some(("Event field is required", 12)),
                                Some(Value::String(s)) if s.is_empty() => {
                                    Some(("Event field cannot be blank", 13))
                                }
                                Some(_) => None,
                            },
                        };
                        if let Some((text, code)) = refusal {
                            return reply(
                                400,
                                json!({"text": text, "code": code, "invalidEventNumber": i}),
                            );
                        }
                    }
                    if ack {
                        next_ack += 1;
                        reply(
                            200,
                            json!({"text": "Success", "code": 0, "ackId": next_ack - 1}),
                        )
                    } else {
                        reply(200, json!({"text": "Success", "code": 0}))
                    }
                }
                "/services/collector/ack" => {
                    if !ack {
                        return reply(400, json!({"text": "ACK is disabled", "code": 14}));
                    }
                    if channel.is_none() {
                        return reply(400, json!({"text": "Data channel is missing", "code": 10}));
                    }
                    let Some(ids) = serde_json::from_slice::<Value>(&req.body)
                        .ok()
                        .and_then(|b| b["acks"].as_array().cloned())
                    else {
                        return reply(400, json!({"text": "Invalid data format", "code": 6}));
                    };
                    let from = acks_from.load(Ordering::SeqCst);
                    let acks: serde_json::Map<String, Value> = ids
                        .iter()
                        .filter_map(Value::as_u64)
                        .map(|id| (id.to_string(), Value::Bool(id >= from)))
                        .collect();
                    reply(200, json!({ "acks": acks }))
                }
                _ => reply(
                    404,
                    json!({"text": "The requested URL was not found on this server.", "code": 404}),
                ),
            }
        })
    }

    fn options(server: &FakeServer) -> SplunkOptions {
        let mut options =
            SplunkOptions::new(server.url.clone(), Secret::new(TOKEN.into()), "n1".into());
        options.index = Some("security".into());
        options.sourcetype = Some("vigil".into());
        options.retry = Retry {
            min_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(50),
            give_up_after: Duration::from_secs(5),
        };
        options.ack_poll_interval = Duration::from_millis(20);
        options
    }

    fn event(path: &str) -> Arc<VigilEvent> {
        let mut event = exec_violation("evil", path, BTreeMap::new());
        event.id = crate::event::EventId::random();
        Arc::new(event)
    }

    /// The HEC events of one request.
    fn hec_events(request: &Request) -> Vec<Value> {
        serde_json::Deserializer::from_slice(&request.body)
            .into_iter::<Value>()
            .collect::<Result<_, _>>()
            .expect("concatenated JSON objects")
    }

    #[tokio::test]
    async fn events_go_in_one_request_in_the_hec_format_field_by_field() {
        let server = FakeServer::start(hec(false, AcksFrom::default(), vec![])).await;
        let mut sink = SplunkSink::new("splunk", options(&server)).expect("sink");
        let mut first = exec_violation("evil", "/tmp/a", BTreeMap::new());
        first.id = "id-1".into();
        let second = event("/tmp/b");
        sink.deliver(&[Arc::new(first.clone()), second.clone()])
            .await
            .expect("delivered");
        let requests = server.requests();
        assert_eq!(requests.len(), 1);
        let request = &requests[0];
        assert_eq!(request.method, "POST");
        assert_eq!(request.target, "/services/collector/event");
        assert_eq!(
            request.header("authorization"),
            Some(&*format!("Splunk {TOKEN}"))
        );
        assert_eq!(request.header("content-type"), Some("application/json"));
        assert_eq!(request.header("x-splunk-request-channel"), None);
        let events = hec_events(request);
        assert_eq!(events.len(), 2);
        let e = events[0].as_object().expect("an object");
        let keys: Vec<&str> = e.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            ["event", "host", "index", "source", "sourcetype", "time"]
        );
        // The kernel timestamp 2024-05-01T12:00:00.123456789Z, in seconds to the microsecond.
        assert!(
            String::from_utf8_lossy(&request.body).starts_with("{\"time\":1714564800.123456,"),
            "{}",
            String::from_utf8_lossy(&request.body)
        );
        assert_eq!(e["host"], "n1");
        assert_eq!(e["source"], "/vigil/nodes/n1");
        assert_eq!(e["sourcetype"], "vigil");
        assert_eq!(e["index"], "security");
        let cloudevent =
            serde_json::to_value(first.to_cloudevent().expect("a CloudEvent")).expect("JSON");
        assert_eq!(e["event"], cloudevent);
        assert_eq!(e["event"]["id"], "id-1");
        assert_eq!(e["event"]["type"], "dev.vigil.exec.v1");
        assert_eq!(e["event"]["specversion"], "1.0");
        assert_eq!(events[1]["event"]["id"], second.id.as_str());
        assert_eq!(sink.stats().events_delivered.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn requests_are_cut_at_the_size_limit() {
        let server = FakeServer::start(hec(false, AcksFrom::default(), vec![])).await;
        let mut options = options(&server);
        options.max_request_bytes = 1;
        let mut sink = SplunkSink::new("splunk", options).expect("sink");
        let events: Vec<_> = (0..3).map(|i| event(&format!("/tmp/{i}"))).collect();
        sink.deliver(&events).await.expect("delivered");
        let requests = server.requests();
        assert_eq!(requests.len(), 3);
        for (request, event) in requests.iter().zip(&events) {
            assert_eq!(hec_events(request)[0]["event"]["id"], event.id.as_str());
        }
    }

    #[tokio::test]
    async fn busy_unhealthy_and_rate_limited_answers_are_retried() {
        let server = FakeServer::start(hec(
            false,
            AcksFrom::default(),
            vec![
                reply(503, json!({"text": "Server is busy", "code": 9})),
                reply(
                    503,
                    json!({"text": "HEC is unhealthy, queues are full", "code": 18}),
                ),
                reply(429, json!({"text": "Too many requests", "code": 9}))
                    .with_header("Retry-After", "1"),
            ],
        ))
        .await;
        let mut sink = SplunkSink::new("splunk", options(&server)).expect("sink");
        sink.deliver(&[event("/tmp/a")]).await.expect("delivered");
        let requests = server.requests();
        assert_eq!(requests.len(), 4);
        assert!(
            requests[3].at - requests[2].at >= Duration::from_secs(1),
            "Retry-After"
        );
        assert!(requests.windows(2).all(|w| w[0].body == w[1].body));
        let stats = sink.stats();
        assert_eq!(stats.busy.load(Ordering::Relaxed), 3);
        assert_eq!(stats.retries.load(Ordering::Relaxed), 3);
        assert_eq!(stats.events_delivered.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_wrong_or_disabled_token_stops_without_retrying_and_is_reported() {
        let server = FakeServer::start(hec(
            false,
            AcksFrom::default(),
            vec![reply(403, json!({"text": "Token disabled", "code": 1}))],
        ))
        .await;
        let mut sink = SplunkSink::new("splunk", options(&server)).expect("sink");
        let err = sink.deliver(&[event("/tmp/a"), event("/tmp/b")]).await;
        let err = err.expect_err("refused").to_string();
        assert_eq!(
            err,
            format!(
                "sink splunk: {} refused for good: HTTP 403: Token disabled (code 1)",
                server.url
            )
        );
        let mut options = options(&server);
        options.token = Secret::new("wrong".into());
        let mut wrong = SplunkSink::new("splunk", options).expect("sink");
        let err = wrong
            .deliver(&[event("/tmp/c")])
            .await
            .expect_err("refused");
        assert!(
            err.to_string()
                .ends_with("HTTP 403: Invalid token (code 4)"),
            "{err}"
        );
        assert!(!err.to_string().contains("wrong"), "{err}");
        assert_eq!(server.requests().len(), 2, "no retry");
        assert_eq!(sink.stats().events_refused.load(Ordering::Relaxed), 2);
        assert_eq!(wrong.stats().events_refused.load(Ordering::Relaxed), 1);
        assert_eq!(sink.stats().retries.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn invalid_data_drops_and_counts_the_request_and_the_next_goes_on() {
        let server = FakeServer::start(hec(
            false,
            AcksFrom::default(),
            vec![reply(
                400,
                json!({"text": "Invalid data format", "code": 6, "invalidEventNumber": 0}),
            )],
        ))
        .await;
        let log = CapturedLog::default();
        let _guard = log.start();
        let mut sink = SplunkSink::new("splunk", options(&server)).expect("sink");
        sink.deliver(&[event("/tmp/a"), event("/tmp/b")])
            .await
            .expect("dropped, not failed");
        sink.deliver(&[event("/tmp/c")]).await.expect("delivered");
        let stats = sink.stats();
        assert_eq!(stats.events_invalid.load(Ordering::Relaxed), 2);
        assert_eq!(stats.events_delivered.load(Ordering::Relaxed), 1);
        assert_eq!(server.requests().len(), 2);
        let log = log.text();
        assert!(log.contains("Invalid data format (code 6)"), "{log}");
        assert!(!log.contains(TOKEN), "{log}");
    }

    #[tokio::test]
    async fn with_ack_events_count_as_delivered_only_once_acknowledged() {
        let acks_from = Arc::new(AtomicU64::new(u64::MAX));
        let server = FakeServer::start(hec(true, acks_from.clone(), vec![])).await;
        let mut options = options(&server);
        options.ack = true;
        let mut sink = SplunkSink::new("splunk", options).expect("sink");
        let stats = sink.stats();
        let events = vec![event("/tmp/a"), event("/tmp/b")];
        let delivery = tokio::spawn(async move {
            let result = sink.deliver(&events).await;
            (sink, result)
        });
        let polled = server.wait_for(4, Duration::from_secs(5)).await;
        assert!(polled.len() >= 4, "the event request and polls");
        assert_eq!(stats.events_delivered.load(Ordering::Relaxed), 0);
        assert!(!delivery.is_finished());
        acks_from.store(0, Ordering::SeqCst);
        let (_sink, result) = delivery.await.expect("joined");
        result.expect("delivered");
        assert_eq!(stats.events_delivered.load(Ordering::Relaxed), 2);
        let requests = server.requests();
        let channel = requests[0]
            .header("x-splunk-request-channel")
            .expect("a channel")
            .to_string();
        uuid::Uuid::parse_str(&channel).expect("the channel is a UUID");
        assert_eq!(requests[0].target, "/services/collector/event");
        for poll in &requests[1..] {
            assert_eq!(poll.method, "POST");
            assert_eq!(
                poll.target,
                format!("/services/collector/ack?channel={channel}")
            );
            assert_eq!(
                poll.header("authorization"),
                Some(&*format!("Splunk {TOKEN}"))
            );
            assert_eq!(poll.json(), json!({"acks": [0]}));
        }
    }

    #[tokio::test]
    async fn a_request_not_acknowledged_in_time_is_sent_again_with_the_same_ids() {
        // ackId 0 never comes; the resent request's ackId 1 does.
        let server = FakeServer::start(hec(true, Arc::new(AtomicU64::new(1)), vec![])).await;
        let mut options = options(&server);
        options.ack = true;
        options.ack_timeout = Duration::from_millis(200);
        let mut sink = SplunkSink::new("splunk", options).expect("sink");
        sink.deliver(&[event("/tmp/a")]).await.expect("delivered");
        let sent: Vec<Request> = server
            .requests()
            .into_iter()
            .filter(|r| r.target == "/services/collector/event")
            .collect();
        assert_eq!(sent.len(), 2);
        assert_eq!(sent[0].body, sent[1].body);
        let stats = sink.stats();
        assert_eq!(stats.ack_timeouts.load(Ordering::Relaxed), 1);
        assert_eq!(stats.events_delivered.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn ack_on_a_token_without_acknowledgement_counts_accepted_events_and_says_so_once() {
        // Such a collector accepts the events and replies without an ackId.
        let server = FakeServer::start(hec(false, AcksFrom::default(), vec![])).await;
        let log = CapturedLog::default();
        let _guard = log.start();
        let mut options = options(&server);
        options.ack = true;
        let mut sink = SplunkSink::new("splunk", options).expect("sink");
        sink.deliver(&[event("/tmp/a")]).await.expect("delivered");
        sink.deliver(&[event("/tmp/b")]).await.expect("delivered");
        assert_eq!(sink.stats().events_delivered.load(Ordering::Relaxed), 2);
        let requests = server.requests();
        assert_eq!(requests.len(), 2, "no polling without an ackId");
        assert!(requests[0].header("x-splunk-request-channel").is_some());
        let log = log.text();
        assert_eq!(
            log.matches("not enabled for this token").count(),
            1,
            "{log}"
        );
    }

    #[tokio::test]
    async fn hostile_names_reach_splunk_as_valid_json_unchanged() {
        let server = FakeServer::start(hec(false, AcksFrom::default(), vec![])).await;
        let mut sink = SplunkSink::new("splunk", options(&server)).expect("sink");
        let path = format!("/tmp/{HOSTILE}\u{fffd}\u{1b}[31m");
        let labels = BTreeMap::from([(HOSTILE.to_string(), HOSTILE.to_string())]);
        let event = exec_violation(HOSTILE, &path, labels);
        sink.deliver(&[Arc::new(event)]).await.expect("delivered");
        let requests = server.requests();
        let events = hec_events(&requests[0]);
        let data = &events[0]["event"]["data"];
        assert_eq!(data["process"]["comm"], HOSTILE);
        assert_eq!(data["exec"]["path"], path.as_str());
        assert_eq!(data["pod"]["labels"][HOSTILE], HOSTILE);
    }

    #[tokio::test]
    async fn a_collector_that_stays_down_is_given_up_on_and_the_error_names_its_url() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", closed.local_addr().expect("address"));
        drop(closed);
        let mut options = SplunkOptions::new(url.clone(), Secret::new(TOKEN.into()), "n1".into());
        options.retry = Retry {
            min_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(20),
            give_up_after: Duration::from_millis(200),
        };
        let mut sink = SplunkSink::new("splunk", options).expect("sink");
        let err = sink.deliver(&[event("/tmp/a")]).await.expect_err("gave up");
        let err = err.to_string();
        assert!(
            err.starts_with(&format!("sink splunk: {url} still failing after")),
            "{err}"
        );
        assert!(sink.stats().retries.load(Ordering::Relaxed) >= 2);
    }

    #[test]
    fn an_unreadable_or_empty_ca_bundle_is_refused_naming_its_path() {
        let dir = tempfile::tempdir().expect("dir");
        let mut options = SplunkOptions::new(
            "https://127.0.0.1:8088".into(),
            Secret::new(TOKEN.into()),
            "n1".into(),
        );
        options.ca_file = Some(dir.path().join("missing.pem"));
        let err = SplunkSink::new("splunk", options).err().expect("refused");
        assert!(
            err.to_string().starts_with(&format!(
                "sink splunk: CA bundle {}/missing.pem:",
                dir.path().display()
            )),
            "{err}"
        );
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").expect("write");
        let mut options = SplunkOptions::new(
            "https://127.0.0.1:8088".into(),
            Secret::new(TOKEN.into()),
            "n1".into(),
        );
        options.ca_file = Some(empty);
        let err = SplunkSink::new("splunk", options).err().expect("refused");
        assert!(
            err.to_string().ends_with("no PEM certificate in it"),
            "{err}"
        );
    }
}
