//! http: the CloudEvents HTTP protocol binding 1.0 (structured, binary and batch content
//! modes) over reqwest with rustls, through cloudevents-sdk's reqwest binding.
//!
//! Delivery is at least once: connection errors, timeouts, 408, 429 and 5xx are retried with
//! exponential backoff and full jitter, and a `Retry-After` from the receiver replaces the
//! backoff. Any other answer outside 2xx, and a certificate the sink cannot trust, give up on
//! that request: retrying cannot change them, and the error names the sink, the URL and why.
use std::{
    fmt,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use ::cloudevents::{
    AttributesReader, Event as CloudEvent,
    binding::reqwest::RequestSerializer,
    event::SpecVersion,
    message::{
        BinaryDeserializer, BinarySerializer, MessageAttributeValue, StructuredDeserializer,
    },
};
use backon::{BackoffBuilder, ExponentialBuilder};
use futures::future::BoxFuture;
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
use reqwest::{
    Client, Request, RequestBuilder, StatusCode, Url,
    header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER, USER_AGENT},
};

use super::{Sink, SinkError};
use crate::cloudevents::VigilEvent;

/// `Content-Type` of a structured-mode request.
pub const STRUCTURED_CONTENT_TYPE: &str = "application/cloudevents+json";
/// `Content-Type` of a batch-mode request.
pub const BATCH_CONTENT_TYPE: &str = "application/cloudevents-batch+json";

pub use crate::config::HttpMode;

/// When to retry and for how long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryOptions {
    /// The ceiling of the first wait; each retry doubles it up to `max_backoff`, and the wait
    /// itself is drawn uniformly below the ceiling (full jitter), so that many agents coming
    /// back from one outage do not hit the receiver in step.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// Give up on a request once retrying it would run past this; `None` retries until it
    /// lands (the sink's bounded queue then takes the overflow and counts it).
    pub max_elapsed: Option<Duration>,
}

impl Default for RetryOptions {
    fn default() -> Self {
        Self {
            initial_backoff: Duration::from_millis(200),
            // A receiver back from an outage waits 2.5 s on average for its first request.
            max_backoff: Duration::from_secs(5),
            max_elapsed: None,
        }
    }
}

/// Everything an HTTP sink is configured with.
#[derive(Clone, PartialEq, Eq)]
pub struct HttpOptions {
    pub url: Url,
    pub mode: HttpMode,
    /// Sent with every request. Values may be secrets (`Authorization`): they never reach a
    /// log or an error, only their names do.
    pub headers: Vec<(String, String)>,
    /// A PEM bundle of CAs trusted in addition to the built-in roots.
    pub ca_file: Option<PathBuf>,
    /// Of one request, from connecting to the end of the response.
    pub timeout: Duration,
    pub retry: RetryOptions,
    /// Batch mode: at most this many events in one request...
    pub batch_max_events: usize,
    /// ...and at most this many bytes of body (an event larger than that goes alone).
    pub batch_max_bytes: usize,
}

impl HttpOptions {
    /// The defaults for everything but where and how.
    pub fn new(url: Url, mode: HttpMode) -> Self {
        Self {
            url,
            mode,
            headers: Vec::new(),
            ca_file: None,
            timeout: Duration::from_secs(10),
            retry: RetryOptions::default(),
            batch_max_events: 100,
            batch_max_bytes: 1024 * 1024,
        }
    }
}

impl fmt::Debug for HttpOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let header_names: Vec<&str> = self.headers.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("HttpOptions")
            .field("url", &redacted(&self.url))
            .field("mode", &self.mode)
            .field("headers", &header_names)
            .field("ca_file", &self.ca_file)
            .field("timeout", &self.timeout)
            .field("retry", &self.retry)
            .field("batch_max_events", &self.batch_max_events)
            .field("batch_max_bytes", &self.batch_max_bytes)
            .finish()
    }
}

/// What one HTTP sink has done since start, in events (retries in requests).
#[derive(Debug, Default)]
pub struct HttpStats {
    /// Events the receiver accepted (2xx).
    pub delivered: AtomicU64,
    /// Requests sent again after a retryable failure.
    pub retries: AtomicU64,
    /// Events given up on: refused by the receiver, untrusted TLS, or out of retry time.
    pub failed: AtomicU64,
}

pub struct HttpSink {
    name: String,
    client: Client,
    url: Url,
    /// The URL as errors and logs show it: without a password.
    shown_url: String,
    mode: HttpMode,
    retry: RetryOptions,
    batch_max_events: usize,
    batch_max_bytes: usize,
    stats: Arc<HttpStats>,
}

/// Characters a `ce-` header value carries percent-encoded (HTTP binding 3.1.3.2): all but
/// printable ASCII, and space, `"` and `%` (bytes above ASCII are always encoded).
const HEADER_VALUE_ESCAPED: &AsciiSet = &CONTROLS.add(b' ').add(b'"').add(b'%');

/// Wraps the sdk's serializer for binary mode, which writes attribute values as they are:
/// a value with a space, a quote, a percent sign or non-ASCII text would be sent unencoded
/// or refused by the header map.
struct PercentEncoded(RequestSerializer);

impl PercentEncoded {
    fn encode(value: MessageAttributeValue) -> MessageAttributeValue {
        MessageAttributeValue::String(
            utf8_percent_encode(&value.to_string(), HEADER_VALUE_ESCAPED).to_string(),
        )
    }
}

impl BinarySerializer<RequestBuilder> for PercentEncoded {
    fn set_spec_version(self, spec_version: SpecVersion) -> ::cloudevents::message::Result<Self> {
        self.0.set_spec_version(spec_version).map(Self)
    }

    fn set_attribute(
        self,
        name: &str,
        value: MessageAttributeValue,
    ) -> ::cloudevents::message::Result<Self> {
        // `datacontenttype` becomes the plain `Content-Type` header, which has its own syntax.
        let value = if name == "datacontenttype" {
            value
        } else {
            Self::encode(value)
        };
        self.0.set_attribute(name, value).map(Self)
    }

    fn set_extension(
        self,
        name: &str,
        value: MessageAttributeValue,
    ) -> ::cloudevents::message::Result<Self> {
        self.0.set_extension(name, Self::encode(value)).map(Self)
    }

    fn end_with_data(self, bytes: Vec<u8>) -> ::cloudevents::message::Result<RequestBuilder> {
        self.0.end_with_data(bytes)
    }

    fn end(self) -> ::cloudevents::message::Result<RequestBuilder> {
        self.0.end()
    }
}

/// The URL with any password replaced, for logs and errors.
fn redacted(url: &Url) -> String {
    let mut shown = url.clone();
    if shown.password().is_some() {
        // Only fails for URLs that cannot have a password, which this one has.
        let _ = shown.set_password(Some("***"));
    }
    shown.to_string()
}

/// Whether an answer with `status` may succeed if sent again.
fn retryable(status: StatusCode) -> bool {
    status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error()
}

/// The longest `Retry-After` obeyed: a receiver asking for a day would hold the sink's
/// queue for a day; past this the sink asks again.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// `Retry-After` as a wait from `now`: delay-seconds or an HTTP date (RFC 9110 10.2.3), at
/// most [`MAX_RETRY_AFTER`]. A date in the past means now; an unreadable value is ignored
/// (the backoff applies).
fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    let wait = match value.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => {
            let at = httpdate::parse_http_date(value).ok()?;
            at.duration_since(now).unwrap_or(Duration::ZERO)
        }
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

/// A wait drawn uniformly from `[0, ceiling]`.
fn full_jitter(ceiling: Duration) -> Duration {
    let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(fastrand::u64(0..=nanos))
}

/// The start of a response body for an error message: short, on one line, printable.
fn snippet(body: &[u8]) -> String {
    const MAX: usize = 200;
    let text = String::from_utf8_lossy(&body[..body.len().min(MAX)]);
    let mut shown: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if body.len() > MAX {
        shown.push('…');
    }
    shown.trim().to_string()
}

/// The rustls error behind a failed request, if TLS is why it failed.
fn tls_error(err: &reqwest::Error) -> Option<&rustls::Error> {
    type Dyn = dyn std::error::Error + 'static;
    let mut next: Option<&Dyn> = Some(err);
    while let Some(e) = next {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        // `source` of an io::Error or a boxed error skips the error they wrap, which is
        // where hyper and rustls put theirs: look inside them instead.
        next = if let Some(io) = e.downcast_ref::<std::io::Error>() {
            io.get_ref().map(|inner| inner as &Dyn)
        } else {
            e.source()
        };
    }
    None
}

/// Whether a TLS failure comes from what the peer presented, which no retry changes.
fn tls_is_permanent(err: &rustls::Error) -> bool {
    matches!(
        err,
        rustls::Error::InvalidCertificate(_)
            | rustls::Error::NoCertificatesPresented
            | rustls::Error::PeerIncompatible(_)
    )
}

/// A reqwest error as text: its chain of causes, without the URL (which may hold a
/// password; the caller names the URL itself).
fn describe(err: reqwest::Error) -> String {
    let err = err.without_url();
    let mut text = err.to_string();
    let mut source = std::error::Error::source(&err);
    while let Some(e) = source {
        let cause = e.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
        source = e.source();
    }
    text
}

/// One request, built once and cloned for each attempt (its body is bytes, so it clones).
struct Prepared {
    request: Request,
    /// Events in it (for the counters).
    events: usize,
    /// The first event's id, for errors.
    first_id: String,
}

impl HttpSink {
    pub fn new(name: String, options: HttpOptions) -> Result<Self, SinkError> {
        let shown_url = redacted(&options.url);
        let config_error = |reason: String| SinkError::HttpConfig {
            sink: name.clone(),
            url: shown_url.clone(),
            reason,
        };
        if !matches!(options.url.scheme(), "http" | "https") {
            return Err(config_error(format!(
                "scheme {:?} is not http or https",
                options.url.scheme()
            )));
        }
        if options.batch_max_events == 0 || options.batch_max_bytes == 0 {
            return Err(config_error("batch limits must be above zero".into()));
        }
        if options.retry.initial_backoff.is_zero()
            || options.retry.max_backoff < options.retry.initial_backoff
        {
            return Err(config_error(
                "retry backoff: initial must be above zero and at most max".into(),
            ));
        }

        let mut headers = HeaderMap::new();
        headers.insert(
            USER_AGENT,
            HeaderValue::from_static(concat!("vigil/", env!("CARGO_PKG_VERSION"))),
        );
        for (key, value) in &options.headers {
            let header = HeaderName::from_bytes(key.as_bytes())
                .map_err(|_| config_error(format!("header name {key:?} is not a valid name")))?;
            // The binding owns these: a custom one would contradict the event it goes with.
            if header == CONTENT_TYPE || header.as_str().starts_with("ce-") {
                return Err(config_error(format!(
                    "header {key}: set by the CloudEvents binding, not by configuration"
                )));
            }
            let mut value = HeaderValue::from_str(value).map_err(|_| {
                config_error(format!(
                    "header {key}: the value has characters a header cannot carry"
                ))
            })?;
            value.set_sensitive(true);
            headers.insert(header, value);
        }

        let builder = Client::builder()
            .default_headers(headers)
            .timeout(options.timeout)
            .connect_timeout(options.timeout)
            // A POST redirected by 301/302 would become a GET without the event: a redirect
            // is reported as the refusal it is for this sink.
            .redirect(reqwest::redirect::Policy::none());
        let builder = super::trust::add_ca_file(builder, &name, options.ca_file.as_deref())?;
        let client = builder
            .build()
            .map_err(|e| config_error(format!("setting up the client: {}", describe(e))))?;

        tracing::debug!(
            sink = name,
            url = shown_url,
            mode = ?options.mode,
            headers = ?options.headers.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            ca_file = ?options.ca_file,
            "http sink ready"
        );
        Ok(Self {
            name,
            client,
            url: options.url,
            shown_url,
            mode: options.mode,
            retry: options.retry,
            batch_max_events: options.batch_max_events,
            batch_max_bytes: options.batch_max_bytes,
            stats: Arc::new(HttpStats::default()),
        })
    }

    /// The sink's counters; they live as long as any holder.
    pub fn stats(&self) -> Arc<HttpStats> {
        self.stats.clone()
    }

    fn encode_error(
        &self,
        id: &str,
        e: impl std::error::Error + Send + Sync + 'static,
    ) -> SinkError {
        SinkError::Encode {
            sink: self.name.clone(),
            id: id.to_string(),
            source: Box::new(e),
        }
    }

    fn cloudevent(&self, event: &VigilEvent) -> Result<CloudEvent, SinkError> {
        event
            .to_cloudevent()
            .map_err(|e| self.encode_error(&event.id, e))
    }

    fn build(
        &self,
        builder: RequestBuilder,
        first_id: &str,
        events: usize,
    ) -> Result<Prepared, SinkError> {
        let request = builder
            .build()
            .map_err(|e| self.encode_error(first_id, std::io::Error::other(describe(e))))?;
        Ok(Prepared {
            request,
            events,
            first_id: first_id.to_string(),
        })
    }

    /// The requests `events` become in this sink's mode.
    fn prepare(&self, events: &[Arc<VigilEvent>]) -> Result<Vec<Prepared>, SinkError> {
        let post = || self.client.post(self.url.clone());
        let cloudevents = || events.iter().map(|event| self.cloudevent(event));
        match self.mode {
            HttpMode::Structured => cloudevents()
                .map(|ce| {
                    let ce = ce?;
                    let id = ce.id().to_string();
                    let builder = StructuredDeserializer::deserialize_structured(
                        ce,
                        RequestSerializer::new(post()),
                    )
                    .map_err(|e| self.encode_error(&id, e))?;
                    self.build(builder, &id, 1)
                })
                .collect(),
            HttpMode::Binary => cloudevents()
                .map(|ce| {
                    let ce = ce?;
                    let id = ce.id().to_string();
                    let builder = BinaryDeserializer::deserialize_binary(
                        ce,
                        PercentEncoded(RequestSerializer::new(post())),
                    )
                    .map_err(|e| self.encode_error(&id, e))?;
                    self.build(builder, &id, 1)
                })
                .collect(),
            HttpMode::Batch => batches(
                events,
                self.batch_max_events,
                self.batch_max_bytes,
                |event, out| {
                    event
                        .write_json(out)
                        .map_err(|e| self.encode_error(&event.id, e))
                },
            )?
            .into_iter()
            .map(|batch| {
                let builder = post()
                    .header(CONTENT_TYPE, BATCH_CONTENT_TYPE)
                    .body(batch.body);
                self.build(builder, &events[batch.first].id, batch.events)
            })
            .collect(),
        }
    }

    /// Sends one request until it is accepted, refused for good, or out of retry time.
    async fn send(&self, prepared: &Prepared) -> Result<(), SinkError> {
        let started = Instant::now();
        let mut ceilings = ExponentialBuilder::default()
            .with_min_delay(self.retry.initial_backoff)
            .with_max_delay(self.retry.max_backoff)
            .with_factor(2.0)
            .without_max_times()
            .build();
        let mut attempts: u32 = 0;
        loop {
            attempts += 1;
            let request = prepared.request.try_clone().ok_or_else(|| {
                self.encode_error(
                    &prepared.first_id,
                    std::io::Error::other("the request body cannot be sent twice"),
                )
            })?;
            let (reason, asked_wait) = match self.client.execute(request).await {
                Ok(response) if response.status().is_success() => {
                    self.stats
                        .delivered
                        .fetch_add(prepared.events as u64, Ordering::Relaxed);
                    return Ok(());
                }
                Ok(response) => {
                    let status = response.status();
                    let asked_wait = retry_after(response.headers(), SystemTime::now());
                    if !retryable(status) {
                        let body = response.bytes().await.unwrap_or_default();
                        return Err(self.failed(
                            prepared,
                            SinkError::HttpRefused {
                                sink: self.name.clone(),
                                url: self.shown_url.clone(),
                                status: status.as_u16(),
                                body: snippet(&body),
                            },
                        ));
                    }
                    (format!("HTTP {status}"), asked_wait)
                }
                Err(err) => {
                    if let Some(tls) = tls_error(&err).filter(|e| tls_is_permanent(e)) {
                        // A CA with the issuer's name but another key fails the signature.
                        let hint = if matches!(
                            tls,
                            rustls::Error::InvalidCertificate(
                                rustls::CertificateError::UnknownIssuer
                                    | rustls::CertificateError::BadSignature
                            )
                        ) {
                            " (the server's certificate is not signed by a trusted CA: is \
                             caFile the CA that issued it?)"
                        } else {
                            ""
                        };
                        return Err(self.failed(
                            prepared,
                            SinkError::Tls {
                                sink: self.name.clone(),
                                url: self.shown_url.clone(),
                                reason: format!("{tls}{hint}"),
                            },
                        ));
                    }
                    (describe(err), None)
                }
            };
            let wait = asked_wait
                .unwrap_or_else(|| full_jitter(ceilings.next().unwrap_or(self.retry.max_backoff)));
            if let Some(max) = self.retry.max_elapsed
                && started.elapsed() + wait > max
            {
                return Err(self.failed(
                    prepared,
                    SinkError::HttpGaveUp {
                        sink: self.name.clone(),
                        url: self.shown_url.clone(),
                        attempts,
                        elapsed: started.elapsed(),
                        last: reason,
                    },
                ));
            }
            self.stats.retries.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                sink = self.name,
                url = self.shown_url,
                attempt = attempts,
                events = prepared.events,
                retry_in = ?wait,
                from_retry_after = asked_wait.is_some(),
                "delivery failed, retrying: {reason}"
            );
            tokio::time::sleep(wait).await;
        }
    }

    fn failed(&self, prepared: &Prepared, err: SinkError) -> SinkError {
        self.stats
            .failed
            .fetch_add(prepared.events as u64, Ordering::Relaxed);
        tracing::error!(
            sink = self.name,
            url = self.shown_url,
            events = prepared.events,
            first_id = prepared.first_id,
            "giving up: {err}"
        );
        err
    }
}

/// One batch-mode request body: a JSON array of `events` events from index `first` on.
struct Batch {
    body: Vec<u8>,
    first: usize,
    events: usize,
}

/// Writes `items` with `encode` straight into JSON arrays of at most `max_events` and,
/// brackets and commas counted, `max_bytes` (an item larger than that on its own forms an
/// array): each item is encoded once, into the body it is sent in, and only one that
/// overflows a body is copied into the next.
fn batches<T, E>(
    items: &[T],
    max_events: usize,
    max_bytes: usize,
    mut encode: impl FnMut(&T, &mut Vec<u8>) -> Result<(), E>,
) -> Result<Vec<Batch>, E> {
    // Room for the events it will likely hold at the usual size, at most a full body.
    let start = |first: usize| {
        let likely = (items.len() - first).min(max_events);
        let mut body = Vec::with_capacity(likely.saturating_mul(1024).min(max_bytes) + 2);
        body.push(b'[');
        Batch {
            body,
            first,
            events: 0,
        }
    };
    let close = |mut batch: Batch, out: &mut Vec<Batch>| {
        batch.body.push(b']');
        out.push(batch);
    };
    let mut out = Vec::new();
    let mut batch = start(0);
    for (i, item) in items.iter().enumerate() {
        if batch.events == max_events {
            close(std::mem::replace(&mut batch, start(i)), &mut out);
        }
        let mark = batch.body.len();
        if batch.events > 0 {
            batch.body.push(b',');
        }
        encode(item, &mut batch.body)?;
        // With its `]`.
        if batch.events > 0 && batch.body.len() + 1 > max_bytes {
            let mut next = start(i);
            next.body.extend_from_slice(&batch.body[mark + 1..]);
            batch.body.truncate(mark);
            close(std::mem::replace(&mut batch, next), &mut out);
        }
        batch.events += 1;
    }
    if batch.events > 0 {
        close(batch, &mut out);
    }
    Ok(out)
}

impl super::SinkCounters for HttpStats {
    fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }
}

impl Sink for HttpSink {
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
        Box::pin(self.deliver_events(events))
    }
}

impl HttpSink {
    /// Sends `events`, returning once each request is accepted, refused for good, or out of
    /// retry time.
    async fn deliver_events(&self, events: &[Arc<VigilEvent>]) -> Result<(), SinkError> {
        let total_events = events.len();
        let requests = self.prepare(events)?;
        // A request refused for good does not hold back the others: they are sent, and
        // the refusals reported together.
        let mut failures = Vec::new();
        for prepared in &requests {
            if let Err(err) = self.send(prepared).await {
                failures.push((prepared.events, err));
            }
        }
        let failed_events = failures.iter().map(|(n, _)| n).sum();
        let mut failures = failures.into_iter();
        match (failures.next(), failures.len()) {
            (None, _) => Ok(()),
            (Some((_, only)), 0) if requests.len() == 1 => Err(only),
            (Some((_, first)), more) => Err(SinkError::Partly {
                sink: self.name.clone(),
                url: self.shown_url.clone(),
                failed_events,
                total_events,
                failed_requests: more + 1,
                first: Box::new(first),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_http_dates_and_ignores_garbage() {
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(RETRY_AFTER, HeaderValue::from_str(v).unwrap());
            retry_after(&h, now)
        };
        assert_eq!(with("7"), Some(Duration::from_secs(7)));
        assert_eq!(with(" 0 "), Some(Duration::ZERO));
        // IMF-fixdate, RFC 850 and asctime, all 3 s after `now`.
        assert_eq!(
            with("Sun, 06 Nov 1994 08:49:40 GMT"),
            Some(Duration::from_secs(3))
        );
        assert_eq!(
            with("Sunday, 06-Nov-94 08:49:40 GMT"),
            Some(Duration::from_secs(3))
        );
        assert_eq!(
            with("Sun Nov  6 08:49:40 1994"),
            Some(Duration::from_secs(3))
        );
        assert_eq!(with("Sun, 06 Nov 1994 08:00:00 GMT"), Some(Duration::ZERO));
        assert_eq!(with("soon"), None);
        assert_eq!(with("-3"), None);
        assert_eq!(retry_after(&HeaderMap::new(), now), None);
        // A day, in either form, is capped.
        assert_eq!(with("86400"), Some(MAX_RETRY_AFTER));
        assert_eq!(with("Mon, 07 Nov 1994 08:49:37 GMT"), Some(MAX_RETRY_AFTER));
    }

    #[test]
    fn retryable_statuses_are_408_429_and_5xx_only() {
        for code in [408, 429, 500, 502, 503, 504, 599] {
            assert!(retryable(StatusCode::from_u16(code).unwrap()), "{code}");
        }
        for code in [301, 307, 400, 401, 403, 404, 405, 409, 413, 415, 422] {
            assert!(!retryable(StatusCode::from_u16(code).unwrap()), "{code}");
        }
    }

    #[test]
    fn full_jitter_stays_below_the_ceiling_and_spreads() {
        let ceiling = Duration::from_millis(100);
        let waits: Vec<Duration> = (0..1000).map(|_| full_jitter(ceiling)).collect();
        assert!(waits.iter().all(|w| *w <= ceiling));
        assert!(waits.iter().any(|w| *w < ceiling / 4));
        assert!(waits.iter().any(|w| *w > ceiling * 3 / 4));
        assert_eq!(full_jitter(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn header_values_are_percent_encoded_as_the_binding_says() {
        let enc =
            |s: &str| PercentEncoded::encode(MessageAttributeValue::String(s.into())).to_string();
        assert_eq!(enc("namespaces/a/pods/b-1"), "namespaces/a/pods/b-1");
        assert_eq!(enc("a b\"c%d"), "a%20b%22c%25d");
        assert_eq!(enc("é\n\u{7f}"), "%C3%A9%0A%7F");
        assert_eq!(
            enc("~!#$&'()*+,/:;<=>?@[\\]^_`{|}"),
            "~!#$&'()*+,/:;<=>?@[\\]^_`{|}"
        );
    }

    #[test]
    fn modes_read_from_configuration_by_their_lowercase_names() {
        let modes: Vec<HttpMode> =
            serde_json::from_str(r#"["structured", "binary", "batch"]"#).unwrap();
        assert_eq!(
            modes,
            vec![HttpMode::Structured, HttpMode::Binary, HttpMode::Batch]
        );
        assert!(serde_json::from_str::<HttpMode>(r#""Structured""#).is_err());
    }

    #[test]
    fn urls_lose_their_password_when_shown() {
        let url = Url::parse("https://user:s3cret@collector.test:8443/events?x=1").unwrap();
        let shown = redacted(&url);
        assert!(!shown.contains("s3cret"), "{shown}");
        assert_eq!(shown, "https://user:***@collector.test:8443/events?x=1");
        let plain = Url::parse("http://127.0.0.1:9/e").unwrap();
        assert_eq!(redacted(&plain), "http://127.0.0.1:9/e");
    }

    #[test]
    fn batches_are_cut_by_count_and_by_bytes() {
        // Ten items of 10 bytes each, `0000000000` to `9999999999`.
        let items: Vec<u8> = (b'0'..=b'9').collect();
        let cut = |max_events: usize, max_bytes: usize| {
            let batches = batches(&items, max_events, max_bytes, |item, out| {
                out.extend_from_slice(&[*item; 10]);
                Ok::<(), ()>(())
            })
            .unwrap();
            // Every item exactly once, in order, in well-formed arrays of what each says.
            let mut seen = Vec::new();
            for b in &batches {
                let text = std::str::from_utf8(&b.body).unwrap();
                let inner = text
                    .strip_prefix('[')
                    .and_then(|t| t.strip_suffix(']'))
                    .unwrap();
                let parts: Vec<&str> = inner.split(',').collect();
                assert_eq!(parts.len(), b.events, "{text}");
                assert_eq!(parts[0].as_bytes()[0], items[b.first], "{text}");
                for p in parts {
                    assert_eq!(p.len(), 10, "{text}");
                    assert!(p.bytes().all(|c| c == p.as_bytes()[0]), "{text}");
                    seen.push(p.as_bytes()[0]);
                }
                if b.events > 1 {
                    assert!(b.body.len() <= max_bytes, "{text} over {max_bytes}");
                }
            }
            assert_eq!(seen, items);
            batches.iter().map(|b| b.events).collect::<Vec<_>>()
        };
        assert_eq!(cut(4, usize::MAX), vec![4, 4, 2]);
        assert_eq!(cut(100, usize::MAX), vec![10]);
        // Three items: 2 + 3 * 10 + 2 commas = 34 bytes; a fourth would need 45.
        assert_eq!(cut(100, 34), vec![3, 3, 3, 1]);
        assert_eq!(cut(100, 33), vec![2, 2, 2, 2, 2]);
        // Larger than the cap alone: sent alone, never dropped.
        assert_eq!(cut(100, 5), vec![1; 10]);
        assert_eq!(cut(3, 34), vec![3, 3, 3, 1]);
        let none: Vec<Batch> = batches(&[] as &[u8], 4, 100, |_, _| Ok::<(), ()>(())).unwrap();
        assert!(none.is_empty());
        // An encoding error stops the batch and is returned.
        assert_eq!(
            batches(&items, 4, 100, |item, _| if *item == b'5' {
                Err(*item)
            } else {
                Ok(())
            })
            .err(),
            Some(b'5')
        );
    }

    #[test]
    fn options_debug_shows_header_names_but_no_values_or_password() {
        let mut options = HttpOptions::new(
            Url::parse("https://u:pw-secret@127.0.0.1/").unwrap(),
            HttpMode::Batch,
        );
        options.headers = vec![("Authorization".into(), "Bearer tok-secret".into())];
        let shown = format!("{options:?}");
        assert!(shown.contains("Authorization"), "{shown}");
        assert!(
            !shown.contains("tok-secret") && !shown.contains("pw-secret"),
            "{shown}"
        );
    }

    #[test]
    fn bad_options_are_refused_naming_the_sink_and_url() {
        let url = Url::parse("http://127.0.0.1:9/events").unwrap();
        let refused = |edit: &dyn Fn(&mut HttpOptions)| {
            let mut options = HttpOptions::new(url.clone(), HttpMode::Structured);
            edit(&mut options);
            match HttpSink::new("siem".into(), options) {
                Ok(_) => panic!("accepted"),
                Err(err) => err.to_string(),
            }
        };
        let err = refused(&|o| o.headers = vec![("bad name".into(), "v".into())]);
        assert!(
            err.contains("siem")
                && err.contains("http://127.0.0.1:9/events")
                && err.contains("bad name"),
            "{err}"
        );
        let err = refused(&|o| o.headers = vec![("X-Token".into(), "s3cr\nt".into())]);
        assert!(err.contains("X-Token") && !err.contains("s3cr"), "{err}");
        let err = refused(&|o| o.headers = vec![("Content-Type".into(), "text/plain".into())]);
        assert!(err.contains("Content-Type"), "{err}");
        let err = refused(&|o| o.headers = vec![("ce-id".into(), "1".into())]);
        assert!(err.contains("ce-id"), "{err}");
        let err = refused(&|o| o.url = Url::parse("ftp://127.0.0.1/").unwrap());
        assert!(err.contains("ftp"), "{err}");
        let err = refused(&|o| o.ca_file = Some("/nonexistent/ca.pem".into()));
        assert!(
            err.contains("siem") && err.contains("/nonexistent/ca.pem"),
            "{err}"
        );
        let dir = tempfile::tempdir().unwrap();
        let garbage = dir.path().join("ca.pem");
        std::fs::write(&garbage, "not a certificate").unwrap();
        let err = refused(&|o| o.ca_file = Some(garbage.clone()));
        assert!(
            err.contains("ca.pem") && err.contains("no PEM certificate"),
            "{err}"
        );
        let err = refused(&|o| o.batch_max_events = 0);
        assert!(err.contains("batch"), "{err}");
    }
}
