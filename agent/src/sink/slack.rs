//! Slack: one incoming-webhook message a person understands at a glance (what happened, where,
//! which policy and rule, what was done), in Block Kit with a plain `text` fallback.
//!
//! Slack takes one message per second per webhook. A sender task owns the webhook: the first
//! event goes out at once, and whatever arrives in the following second goes out as one
//! summary message when the second is over. Everything an attacker chooses (paths, arguments,
//! process names, labels) is escaped so that no mention, link or formatting survives.
//!
//! The retry helpers ([`Retry`], [`Backoff`], [`retry_after`]) are shared with the Splunk sink.
use std::{
    collections::{BTreeMap, HashSet},
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use backon::BackoffBuilder;
use futures::future::BoxFuture;
use reqwest::header::{CONTENT_TYPE, HeaderMap, RETRY_AFTER};
use serde_json::{Value, json};
use tokio::{
    sync::{mpsc, oneshot},
    time::Instant,
};

use super::{Sink, SinkError};
use crate::{
    cloudevents::{EventType, Payload, Severity, VigilEvent, data::Member},
    event::Action,
    secret::Secret,
};

/// How a sink retries what may succeed later: a 5xx, a 429, a refused or broken connection.
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    /// The ceiling of the first delay; each later ceiling doubles, up to `max_delay`.
    pub min_delay: Duration,
    pub max_delay: Duration,
    /// A receiver still failing after this long is given up on for the batch at hand, and the
    /// batch reported: a dead receiver must not hold its sink forever.
    pub give_up_after: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Self {
            min_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(30),
            give_up_after: Duration::from_secs(300),
        }
    }
}

/// Exponential delays with full jitter: each delay is uniformly random between zero and its
/// ceiling, so that the agents of every node that failed together do not retry together.
/// (backon's own jitter only adds to the ceiling.)
pub(super) struct Backoff {
    ceilings: backon::ExponentialBackoff,
    max: Duration,
}

impl Backoff {
    pub(super) fn new(retry: &Retry) -> Self {
        Self {
            ceilings: backon::ExponentialBuilder::default()
                .with_min_delay(retry.min_delay)
                .with_max_delay(retry.max_delay)
                .without_max_times()
                .build(),
            max: retry.max_delay,
        }
    }

    pub(super) fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceilings.next().unwrap_or(self.max);
        ceiling.mul_f64(fastrand::f64())
    }
}

/// A receiver's `Retry-After` could otherwise park the sink for days.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(900);

/// `Retry-After` in seconds or as an HTTP date.
pub(super) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    let wait = match value.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => {
            let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
            (at.with_timezone(&chrono::Utc) - chrono::Utc::now())
                .to_std()
                .unwrap_or(Duration::ZERO)
        }
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

/// Where a Slack sink reports: never the webhook's URL, which is its secret.
const RECEIVER: &str = "the Slack incoming webhook";

#[derive(Debug)]
pub struct SlackOptions {
    /// Read by the caller from `webhookUrlFile`; never logged, never in an error.
    pub webhook_url: Secret,
    /// Events below this severity are not sent.
    pub min_severity: Severity,
    /// Only these types are sent; all when empty.
    pub types: Vec<EventType>,
    /// The least time between two messages (Slack allows one a second per webhook).
    pub min_interval: Duration,
    pub retry: Retry,
    /// A request taking longer than this is abandoned and retried.
    pub request_timeout: Duration,
    /// A PEM bundle of CAs trusted in addition to the built-in roots (a Slack-compatible
    /// server behind a private CA, or a TLS-inspecting egress proxy).
    pub ca_file: Option<PathBuf>,
}

impl SlackOptions {
    pub fn new(webhook_url: Secret) -> Self {
        Self {
            webhook_url,
            min_severity: Severity::Info,
            types: Vec::new(),
            min_interval: Duration::from_secs(1),
            retry: Retry::default(),
            request_timeout: Duration::from_secs(10),
            ca_file: None,
        }
    }
}

/// What a Slack sink has done since start. The fan-out counts events handed to the sink; these
/// count what became of them.
#[derive(Debug, Default)]
pub struct SlackStats {
    pub messages_sent: AtomicU64,
    pub events_sent: AtomicU64,
    /// Events left out by `min_severity` or `types`.
    pub events_filtered: AtomicU64,
    /// Attempts repeated after a 429, a 5xx or a failed connection.
    pub retries: AtomicU64,
    /// 429 answers.
    pub rate_limited: AtomicU64,
    /// Events in messages given up on after `Retry::give_up_after`.
    pub events_failed: AtomicU64,
    /// Events in messages Slack refused for good (a 4xx other than 429).
    pub events_rejected: AtomicU64,
    /// Slack's refusals by error (`channel_is_archived`, `no_service`, ...).
    pub permanent_errors: Mutex<BTreeMap<String, u64>>,
}

impl SlackStats {
    pub fn permanent(&self, error: &str) -> u64 {
        self.permanent_errors
            .lock()
            .expect("slack stats")
            .get(error)
            .copied()
            .unwrap_or(0)
    }
}

enum Command {
    Events(Vec<Arc<VigilEvent>>),
    /// Answered once everything handed over before it has been sent or given up on.
    Drain(oneshot::Sender<()>),
}

/// Messages' worth of events the sender task may have waiting before `deliver` waits.
const COMMANDS: usize = 64;

pub struct SlackSink {
    name: String,
    min_severity: Severity,
    types: Vec<EventType>,
    tx: mpsc::Sender<Command>,
    stats: Arc<SlackStats>,
    /// Shared with the fan-out: the sender task counts what Slack refused or it gave up on.
    sink_stats: Arc<super::SinkStats>,
    delivered_since_flush: bool,
}

impl SlackSink {
    /// Starts the sink's sender task: call it inside the Tokio runtime.
    pub fn new(name: impl Into<String>, options: SlackOptions) -> Result<Self, SinkError> {
        let name = name.into();
        reqwest::Url::parse(options.webhook_url.expose()).map_err(|e| SinkError::BadUrl {
            sink: name.clone(),
            url: "the webhook URL (a secret, not shown)".into(),
            reason: e.to_string(),
        })?;
        let builder = reqwest::Client::builder()
            .timeout(options.request_timeout)
            // A redirect would carry the message somewhere the webhook's owner did not choose.
            .redirect(reqwest::redirect::Policy::none());
        let client = super::trust::add_ca_file(builder, &name, options.ca_file.as_deref())?
            .build()
            .map_err(|e| SinkError::Client {
                sink: name.clone(),
                source: e.without_url(),
            })?;
        let stats = Arc::new(SlackStats::default());
        let (tx, rx) = mpsc::channel(COMMANDS);
        let sink_stats = Arc::new(super::SinkStats::default());
        let sender = Sender {
            name: name.clone(),
            client,
            url: options.webhook_url,
            retry: options.retry,
            min_interval: options.min_interval,
            stats: stats.clone(),
            sink_stats: sink_stats.clone(),
            reported: HashSet::new(),
        };
        tokio::spawn(sender.run(rx));
        Ok(Self {
            name,
            min_severity: options.min_severity,
            types: options.types,
            tx,
            stats,
            sink_stats,
            delivered_since_flush: false,
        })
    }

    pub fn stats(&self) -> Arc<SlackStats> {
        self.stats.clone()
    }

    fn wanted(&self, event: &VigilEvent) -> bool {
        event.severity >= self.min_severity
            && (self.types.is_empty() || self.types.contains(&event.ty()))
    }

    fn stopped(&self) -> SinkError {
        SinkError::Stopped {
            sink: self.name.clone(),
        }
    }
}

impl super::SinkCounters for SlackStats {
    fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    /// Messages Slack refused, by its error.
    fn refusals(&self) -> Vec<(String, u64)> {
        self.permanent_errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(e, n)| (e.clone(), *n))
            .collect()
    }
}

impl Sink for SlackSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn counters(&self) -> Option<Arc<dyn super::SinkCounters>> {
        Some(self.stats.clone())
    }

    fn shared_stats(&self) -> Option<Arc<super::SinkStats>> {
        Some(self.sink_stats.clone())
    }

    /// Waits until everything handed over is sent to Slack or given up on (counted).
    fn settle(&mut self) -> BoxFuture<'_, Result<(), SinkError>> {
        self.delivered_since_flush = false;
        self.flush()
    }

    /// Hands the wanted events to the sender task; waits only while it has `COMMANDS`
    /// batches waiting.
    fn deliver<'a>(
        &'a mut self,
        events: &'a [Arc<VigilEvent>],
    ) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move {
            let wanted: Vec<_> = events.iter().filter(|e| self.wanted(e)).cloned().collect();
            let filtered = (events.len() - wanted.len()) as u64;
            self.stats
                .events_filtered
                .fetch_add(filtered, Ordering::Relaxed);
            if wanted.is_empty() {
                return Ok(());
            }
            self.delivered_since_flush = true;
            self.tx
                .send(Command::Events(wanted))
                .await
                .map_err(|_| self.stopped())
        })
    }

    /// The fan-out flushes whenever its queue is idle, and once more at shutdown. A flush
    /// right after a delivery returns at once: the sender task sends what it holds when the
    /// rate limit allows, and waiting here would leave the rest of a burst in the fan-out's
    /// queue and split it over more messages. A flush with nothing delivered since the last
    /// one (the one at shutdown) waits until everything is sent.
    fn flush(&mut self) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(async move {
            if std::mem::take(&mut self.delivered_since_flush) {
                return Ok(());
            }
            let (done, sent) = oneshot::channel();
            self.tx
                .send(Command::Drain(done))
                .await
                .map_err(|_| self.stopped())?;
            sent.await.map_err(|_| self.stopped())
        })
    }
}

/// The task that owns the webhook.
struct Sender {
    name: String,
    client: reqwest::Client,
    url: Secret,
    retry: Retry,
    min_interval: Duration,
    stats: Arc<SlackStats>,
    sink_stats: Arc<super::SinkStats>,
    /// Slack errors already logged: each is logged once, and counted every time.
    reported: HashSet<String>,
}

enum Outcome {
    Sent,
    /// Slack refused the message for good: the HTTP status and Slack's error.
    Refused(u16, String),
    GaveUp {
        attempts: u32,
        last: String,
    },
}

impl Sender {
    async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let mut pending: Vec<Arc<VigilEvent>> = Vec::new();
        let mut drains: Vec<oneshot::Sender<()>> = Vec::new();
        let mut next_slot = Instant::now();
        let mut open = true;
        loop {
            if pending.is_empty() {
                for done in drains.drain(..) {
                    let _ = done.send(());
                }
                if !open {
                    return;
                }
                match rx.recv().await {
                    Some(command) => take(command, &mut pending, &mut drains),
                    None => open = false,
                }
                continue;
            }
            if open {
                tokio::select! {
                    biased;
                    () = tokio::time::sleep_until(next_slot) => {}
                    command = rx.recv() => {
                        match command {
                            Some(command) => take(command, &mut pending, &mut drains),
                            None => open = false,
                        }
                        continue;
                    }
                }
            } else {
                tokio::time::sleep_until(next_slot).await;
            }
            // The slot is open: whatever is already waiting joins this message.
            while let Ok(command) = rx.try_recv() {
                take(command, &mut pending, &mut drains);
            }
            next_slot = self.send(std::mem::take(&mut pending)).await;
        }
    }

    /// Sends `events` as one message; returns when the next message may go.
    async fn send(&mut self, events: Vec<Arc<VigilEvent>>) -> Instant {
        let n = events.len() as u64;
        let body = serde_json::to_vec(&message(&events)).expect("a JSON value serializes");
        match self.post(&body).await {
            Outcome::Sent => {
                self.stats.messages_sent.fetch_add(1, Ordering::Relaxed);
                self.stats.events_sent.fetch_add(n, Ordering::Relaxed);
            }
            Outcome::Refused(status, error) => {
                self.stats.events_rejected.fetch_add(n, Ordering::Relaxed);
                self.sink_stats.failed.fetch_add(n, Ordering::Relaxed);
                *self
                    .stats
                    .permanent_errors
                    .lock()
                    .expect("slack stats")
                    .entry(error.clone())
                    .or_default() += 1;
                if self.reported.insert(error.clone()) {
                    let err = SinkError::Refused {
                        sink: self.name.clone(),
                        receiver: RECEIVER.into(),
                        status,
                        reason: format!("{error}{}", hint(&error)),
                    };
                    tracing::error!(
                        %err,
                        events = n,
                        "Slack refused a message; further refusals with this error are only counted"
                    );
                }
            }
            Outcome::GaveUp { attempts, last } => {
                self.stats.events_failed.fetch_add(n, Ordering::Relaxed);
                self.sink_stats.failed.fetch_add(n, Ordering::Relaxed);
                let err = SinkError::GaveUp {
                    sink: self.name.clone(),
                    receiver: RECEIVER.into(),
                    attempts,
                    last,
                };
                tracing::error!(%err, events = n, "Slack message given up");
            }
        }
        Instant::now() + self.min_interval
    }

    async fn post(&mut self, body: &[u8]) -> Outcome {
        let started = Instant::now();
        let mut backoff = Backoff::new(&self.retry);
        let mut attempts = 0;
        loop {
            attempts += 1;
            let reply = self
                .client
                .post(self.url.expose())
                .header(CONTENT_TYPE, "application/json")
                .body(body.to_vec())
                .send()
                .await;
            let (wait, last) = match reply {
                Ok(reply) => {
                    let status = reply.status();
                    let after = retry_after(reply.headers());
                    let error = slack_error(&reply.text().await.unwrap_or_default());
                    if status.is_success() {
                        return Outcome::Sent;
                    }
                    let last = format!("HTTP {} {error}", status.as_u16());
                    if status.as_u16() == 429 {
                        self.stats.rate_limited.fetch_add(1, Ordering::Relaxed);
                        (after.unwrap_or_else(|| backoff.next_delay()), last)
                    } else if status.is_server_error() {
                        (backoff.next_delay(), last)
                    } else {
                        return Outcome::Refused(status.as_u16(), error);
                    }
                }
                // Without the URL: it is the webhook's secret.
                Err(err) => (backoff.next_delay(), err.without_url().to_string()),
            };
            if started.elapsed() + wait > self.retry.give_up_after {
                return Outcome::GaveUp { attempts, last };
            }
            self.stats.retries.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(wait).await;
        }
    }
}

fn take(
    command: Command,
    pending: &mut Vec<Arc<VigilEvent>>,
    drains: &mut Vec<oneshot::Sender<()>>,
) {
    match command {
        Command::Events(events) => pending.extend(events),
        Command::Drain(done) => drains.push(done),
    }
}

/// Slack's error from a reply body (`channel_is_archived`), kept to the characters Slack's
/// errors use so that whatever a proxy answers cannot forge a log line.
fn slack_error(body: &str) -> String {
    let error: String = body
        .trim()
        .chars()
        .take(64)
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    if error.is_empty() {
        "(no error in the body)".into()
    } else {
        error
    }
}

/// What to do about Slack's documented permanent errors of incoming webhooks.
fn hint(error: &str) -> &'static str {
    match error {
        "invalid_payload" => " (the message was malformed; please report it as a Vigil bug)",
        "no_service" | "no_active_hooks" | "invalid_token" => {
            " (the webhook was removed or revoked: create a new one and update webhookUrlFile)"
        }
        "no_team" | "team_disabled" => " (the Slack workspace is gone or disabled)",
        "channel_is_archived" => " (the webhook's channel is archived)",
        "channel_not_found" | "user_not_found" => {
            " (the webhook's channel or user no longer exists)"
        }
        "action_prohibited" => " (a Slack admin restricted posting to the webhook's channel)",
        _ => "",
    }
}

/// Block Kit allows 50 blocks a message: a header, one section per listed event, one for the
/// rest, and a context block.
const MAX_LISTED: usize = 40;
/// Characters of one attacker-chosen value shown; Slack refuses sections over 3,000.
const MAX_VALUE: usize = 160;
const MAX_LABELS: usize = 8;

/// The message for `events` (one event, or the summary of a burst).
fn message(events: &[Arc<VigilEvent>]) -> Value {
    let header = match events {
        [one] => format!(
            "Vigil: {} {} ({})",
            one.ty().short(),
            verb(one),
            one.severity.name()
        ),
        _ => format!("Vigil: {} events ({})", events.len(), tally(events)),
    };
    let mut blocks = vec![json!({
        "type": "header",
        "text": {"type": "plain_text", "text": header, "emoji": false},
    })];
    for event in events.iter().take(MAX_LISTED) {
        blocks.push(mrkdwn_section(&details(event)));
    }
    if events.len() > MAX_LISTED {
        blocks.push(mrkdwn_section(&format!(
            "…and {} more: {}",
            events.len() - MAX_LISTED,
            tally(&events[MAX_LISTED..])
        )));
    }
    let context = match events {
        [one] => format!("event {} · {}", code(&one.id), one.time.to_rfc3339()),
        _ => format!(
            "{} to {}",
            events[0].time.to_rfc3339(),
            events[events.len() - 1].time.to_rfc3339()
        ),
    };
    blocks.push(json!({
        "type": "context",
        "elements": [{"type": "mrkdwn", "text": context, "verbatim": true}],
    }));
    let text = match events {
        [one] => format!("Vigil: {}", summary(one)),
        _ => {
            let lines: Vec<String> = events.iter().take(5).map(|e| summary(e)).collect();
            let more = if events.len() > 5 { "; …" } else { "" };
            format!("Vigil: {} events: {}{more}", events.len(), lines.join("; "))
        }
    };
    json!({
        "text": text,
        "blocks": blocks,
        // Attacker-chosen text must not make Slack fetch anything.
        "unfurl_links": false,
        "unfurl_media": false,
    })
}

fn mrkdwn_section(text: &str) -> Value {
    // `verbatim`: no automatic links to URLs, channels or users in our own text either.
    json!({"type": "section", "text": {"type": "mrkdwn", "text": text, "verbatim": true}})
}

/// What was done, in words: "killed", "denied", "alert", "observed", "lost events".
fn verb(event: &VigilEvent) -> &'static str {
    if matches!(event.payload, Payload::Loss(_)) {
        return "lost events";
    }
    match event.action {
        Action::Kill => "killed",
        Action::Deny => "denied",
        Action::Alert => "alert",
        Action::None => "observed",
    }
}

/// `3 exec, 1 connect`
fn tally(events: &[Arc<VigilEvent>]) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for event in events {
        *counts.entry(event.ty().short()).or_default() += 1;
    }
    counts
        .iter()
        .map(|(ty, n)| format!("{n} {ty}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The behaviour's target: the binary, the destination, the memory request.
fn target(event: &VigilEvent) -> String {
    match &event.payload {
        Payload::Loss(loss) => format!("{} records", loss.lost.total),
        Payload::Behaviour(data) => match &data.member {
            Member::Exec(e) => e.path.clone(),
            Member::Connect(c) => c.line(),
            Member::Wx(w) => w.line(),
            Member::Move(m) => m.line(),
        },
    }
}

/// Pod `namespace/name`, or the host.
fn place(event: &VigilEvent) -> String {
    let Some(data) = event.behaviour() else {
        return String::from("the agent");
    };
    match &data.pod {
        Some(pod) => match (&pod.namespace, &pod.name) {
            (Some(ns), Some(name)) => format!("pod {}", code(&format!("{ns}/{name}"))),
            _ => format!("pod uid {}", code(&pod.uid)),
        },
        None => format!("host {}", code(&data.node)),
    }
}

/// The one-line form, for the plain-text fallback (notifications).
fn summary(event: &VigilEvent) -> String {
    format!(
        "{} {} {} in {}",
        verb(event),
        event.ty().short(),
        code(&target(event)),
        place(event)
    )
}

/// The section of one event: every line a responder needs, values in code spans.
fn details(event: &VigilEvent) -> String {
    let what = match event.ty() {
        EventType::Exec => "exec of",
        EventType::Connect => "connect:",
        EventType::Wx => "memory:",
        EventType::Cgroup => "cgroup move:",
        EventType::Loss => "lost:",
    };
    let mut lines = vec![format!(
        "*{}* · {what} {} · severity *{}*",
        verb(event).to_uppercase(),
        code(&target(event)),
        event.severity.name()
    )];
    let Some(data) = event.behaviour() else {
        lines.push(format!("Node: {}", code(&event.subject)));
        return lines.join("\n");
    };
    if let Member::Exec(e) = &data.member {
        let drift = e.origin.as_ref().map(|o| o.words());
        let mut marks: Vec<&str> = drift.as_deref().into_iter().collect();
        marks.extend(
            [
                (e.memfd, "memfd"),
                (e.deleted, "deleted"),
                (e.script, "script"),
                (e.mapped, "mapped, not exec'd"),
                (e.unjudged, "ran unjudged: its exec probes were skipped"),
                (e.unverifiable, "real path unverifiable"),
                (e.args_truncated, "args truncated"),
            ]
            .into_iter()
            .filter_map(|(on, mark)| on.then_some(mark)),
        );
        let marks = if marks.is_empty() {
            String::new()
        } else {
            format!(" ({})", marks.join(", "))
        };
        lines.push(format!("Args: {}{marks}", code(&e.args.join(" "))));
    }
    let mut place_line = format!("Where: {}", place(event));
    if let Some(container) = data
        .container
        .as_ref()
        .and_then(|c| c.name.clone().flatten())
    {
        place_line.push_str(&format!(" · container {}", code(&container)));
    }
    if data.pod.is_some() {
        place_line.push_str(&format!(" · node {}", code(&data.node)));
    }
    lines.push(place_line);
    if let Some(labels) = data.pod.as_ref().and_then(|p| p.labels.as_ref())
        && !labels.is_empty()
    {
        let mut shown: Vec<String> = labels
            .iter()
            .take(MAX_LABELS)
            .map(|(k, v)| code(&format!("{k}={v}")))
            .collect();
        if labels.len() > MAX_LABELS {
            shown.push(format!("+{} more", labels.len() - MAX_LABELS));
        }
        lines.push(format!("Labels: {}", shown.join(" ")));
    }
    let p = &data.process;
    let mut process = format!("Process: {} pid {} uid {}", code(&p.comm), p.pid, p.uid);
    if let Some(exe) = &p.exe {
        process.push_str(&format!(" exe {}", code(exe)));
    }
    if let Some(parent) = &data.parent {
        process.push_str(&format!(
            " · parent {} pid {}",
            code(&parent.comm),
            parent.pid
        ));
    }
    lines.push(process);
    if let Some(policy) = &data.policy {
        let name = match &policy.namespace {
            Some(ns) => format!("{ns}/{}", policy.name),
            None => policy.name.clone(),
        };
        lines.push(format!(
            "Policy: {} {} · rule {} {} · action *{}*",
            code(&policy.kind),
            code(&name),
            code(&policy.rule),
            code(&policy.text),
            event.action.name()
        ));
    }
    if let Some(count) = data.count {
        let since = data
            .first_seen
            .as_deref()
            .map(|t| format!(" since {}", code(t)))
            .unwrap_or_default();
        lines.push(format!("Count: *{count}* identical{since}"));
    }
    lines.join("\n")
}

/// An attacker-chosen value as Slack shows it literally: in a code span (no bold, italics,
/// strike or links inside), with `&`, `<` and `>` escaped as Slack requires (so no
/// `<!channel>`, `<@U…>` or `<url|text>` is ever parsed), backticks replaced by a look-alike
/// (Slack has no escape for them, and one would end the span), and control and
/// direction-changing characters shown as `\u{…}` (a line break would end the span; a
/// right-to-left override would make the text read differently from what it is).
fn code(value: &str) -> String {
    if value.is_empty() {
        return "(empty)".into();
    }
    let mut out = String::with_capacity(value.len() + 2);
    out.push('`');
    let mut chars = value.chars();
    for ch in chars.by_ref().take(MAX_VALUE) {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '`' => out.push('\u{2cb}'),
            c if c.is_control()
                || matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}'
                    | '\u{2066}'..='\u{2069}' | '\u{feff}') =>
            {
                out.push_str(&format!("\\u{{{:x}}}", c as u32));
            }
            c => out.push(c),
        }
    }
    if chars.next().is_some() {
        out.push('…');
    }
    out.push('`');
    out
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;
    use crate::sink::{
        FanOut,
        fake_http::{
            CapturedLog, FakeServer, HOSTILE, Request, Responder, Response, exec_violation,
            exec_violation_with,
        },
    };

    /// The path part of the webhook URL is its secret.
    const SECRET: &str = "/services/T0001/B0001/s3cr3tXYZ";

    #[test]
    fn the_options_debug_form_hides_the_webhook_url() {
        let options = SlackOptions::new(Secret::new(format!("https://hooks.example{SECRET}")));
        let shown = format!("{options:?}");
        assert!(!shown.contains("s3cr3tXYZ"), "{shown}");
        assert!(shown.contains("webhook_url: Secret(<redacted>)"), "{shown}");
    }

    /// Slack's incoming webhook as documented: `ok` on success; `invalid_payload` for a body
    /// that is not a JSON message with `text` or `blocks`; then whatever `script` says, in
    /// order (429 with `Retry-After`, 5xx, the permanent errors).
    fn slack(script: Vec<Response>) -> Responder {
        let mut script: VecDeque<Response> = script.into();
        Box::new(move |req: &Request| {
            let message = serde_json::from_slice::<Value>(&req.body).ok();
            let valid = req.method == "POST"
                && req.target == SECRET
                && req.header("content-type") == Some("application/json")
                && message.is_some_and(|m| {
                    m.get("text")
                        .and_then(Value::as_str)
                        .is_some_and(|t| !t.is_empty())
                        || m.get("blocks").is_some_and(Value::is_array)
                });
            if !valid {
                return Response::new(400, "text/html", "invalid_payload");
            }
            script
                .pop_front()
                .unwrap_or_else(|| Response::new(200, "text/html", "ok"))
        })
    }

    fn error(status: u16, body: &str) -> Response {
        Response::new(status, "text/html", body)
    }

    fn options(server: &FakeServer) -> SlackOptions {
        let mut options = SlackOptions::new(Secret::new(format!("{}{SECRET}", server.url)));
        options.retry = Retry {
            min_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(50),
            give_up_after: Duration::from_secs(2),
        };
        options
    }

    fn event(path: &str) -> Arc<VigilEvent> {
        Arc::new(exec_violation("evil", path, BTreeMap::new()))
    }

    /// Delivers and waits until everything is sent, as the fan-out does at shutdown.
    async fn deliver_all(sink: &mut SlackSink, events: &[Arc<VigilEvent>]) {
        sink.deliver(events).await.expect("deliver");
        sink.flush().await.expect("flush");
        sink.flush().await.expect("drain");
    }

    #[tokio::test]
    async fn a_ca_file_that_is_missing_or_holds_no_certificate_refuses_the_sink_by_its_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("missing.pem");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").expect("write");
        for (path, reason) in [
            (missing, "No such file"),
            (empty, "no PEM certificate in it"),
        ] {
            let mut options =
                SlackOptions::new(Secret::new(format!("https://hooks.example{SECRET}")));
            options.ca_file = Some(path.clone());
            let err = SlackSink::new("chat", options).err().expect("refused");
            let text = err.to_string();
            assert!(
                text.contains("chat") && text.contains(&path.display().to_string()),
                "{text}"
            );
            assert!(text.contains(reason), "{text}");
            assert!(!text.contains(SECRET), "the webhook leaked: {text}");
        }
    }

    /// A responder reads "drift" in words, with where the file sits.
    #[test]
    fn drift_is_said_in_plain_words() {
        let drift = crate::behaviour::exec::Drift {
            why: crate::behaviour::exec::DriftWhy::WritableMount,
            origin: agent_common::FileOrigin {
                fs_magic: 0x0102_1994,
                dev: 47,
                ino: 9,
                change: 0,
            },
        };
        let event = exec_violation_with("x", "/scratch/x", BTreeMap::new(), Some(drift));
        let text = details(&event);
        assert!(
            text.contains(
                "Args: `/scratch/x -x` (drift: not from the image, on a writable tmpfs mount (0:47, inode 9))"
            ),
            "{text}"
        );
        let plain = details(&exec_violation("x", "/tmp/x", BTreeMap::new()));
        assert!(!plain.contains("drift"), "{plain}");
    }

    #[tokio::test]
    async fn hostile_names_reach_slack_escaped_in_the_documented_message() {
        let server = FakeServer::start(slack(vec![])).await;
        let mut sink = SlackSink::new("chat", options(&server)).expect("sink");
        let path = format!("/tmp/{HOSTILE}");
        let labels = BTreeMap::from([("app".to_string(), HOSTILE.to_string())]);
        let event = Arc::new(exec_violation(HOSTILE, &path, labels));
        deliver_all(&mut sink, &[event]).await;
        let requests = server.requests();
        assert_eq!(requests.len(), 1);
        // Every `<` escaped (no mention, broadcast or link is parsed), the formatting inside
        // code spans, and the backtick that would end a span replaced.
        let h = "&lt;!channel&gt; &lt;@U1&gt; &lt;http://evil|click&gt; *bold* \u{2cb}x\u{2cb}";
        let section = [
            format!("*KILLED* · exec of `/tmp/{h}` · severity *high*"),
            format!("Args: `/tmp/{h} -x`"),
            "Where: pod `shop/web-1` · container `app` · node `n1`".into(),
            format!("Labels: `app={h}`"),
            format!("Process: `{h}` pid 42 uid 0 exe `/tmp/{h}` · parent `sh` pid 1"),
            "Policy: `RuntimePolicy` `shop/no-tmp` · rule `spec.exec.deny[0]` `prefix /tmp/` \
             · action *kill*"
                .into(),
        ]
        .join("\n");
        let expected = json!({
            "text": format!("Vigil: killed exec `/tmp/{h}` in pod `shop/web-1`"),
            "blocks": [
                {
                    "type": "header",
                    "text": {"type": "plain_text", "text": "Vigil: exec killed (high)", "emoji": false},
                },
                {
                    "type": "section",
                    "text": {"type": "mrkdwn", "text": section, "verbatim": true},
                },
                {
                    "type": "context",
                    "elements": [{
                        "type": "mrkdwn",
                        "text": "event `00000000-0000-4000-8000-000000000001` · \
                                 2024-05-01T12:00:00.123456789+00:00",
                        "verbatim": true,
                    }],
                },
            ],
            "unfurl_links": false,
            "unfurl_media": false,
        });
        assert_eq!(requests[0].json(), expected);
        let body = String::from_utf8(requests[0].body.clone()).expect("UTF-8");
        assert!(!body.contains('<') && !body.contains('>'), "{body}");
        assert_eq!(sink.stats().messages_sent.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_burst_of_20_within_a_second_is_at_most_two_messages_naming_all_20() {
        let server = FakeServer::start(slack(vec![])).await;
        let sink = SlackSink::new("chat", options(&server)).expect("sink");
        let stats = sink.stats();
        let fan = FanOut::start(
            vec![(
                Box::new(sink) as Box<dyn crate::sink::Sink>,
                Default::default(),
            )],
            1024,
        );
        let started = std::time::Instant::now();
        for i in 0..20 {
            fan.send(exec_violation(
                "evil",
                &format!("/tmp/evil-{i:02}"),
                BTreeMap::new(),
            ));
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
        // One message a second: a burst spread over `elapsed` is at most one more message
        // than it has whole seconds (2 when the test ran within the second it aims for).
        let most = started.elapsed().as_secs() as usize + 2;
        fan.close().await;
        let requests = server.requests();
        assert!(
            (1..=most).contains(&requests.len()),
            "{} messages for a burst of {:?}",
            requests.len(),
            started.elapsed()
        );
        if let [first, second] = &requests[..] {
            assert!(
                second.at - first.at >= Duration::from_millis(950),
                "messages {:?} apart",
                second.at - first.at
            );
        }
        let sections: Vec<String> = requests
            .iter()
            .flat_map(|r| r.json()["blocks"].as_array().cloned().expect("blocks"))
            .filter(|b| b["type"] == "section")
            .map(|b| b["text"]["text"].as_str().expect("text").to_string())
            .collect();
        assert_eq!(sections.len(), 20);
        for i in 0..20 {
            let path = format!("`/tmp/evil-{i:02}`");
            assert_eq!(
                sections.iter().filter(|s| s.contains(&path)).count(),
                1,
                "{path}"
            );
        }
        assert_eq!(stats.events_sent.load(Ordering::Relaxed), 20);
        assert_eq!(
            stats.messages_sent.load(Ordering::Relaxed),
            requests.len() as u64
        );
        let last = requests.last().expect("a message").json();
        let header = &last["blocks"][0]["text"]["text"];
        if requests.len() == 2 {
            assert_eq!(header, "Vigil: 19 events (19 exec)");
        }
    }

    #[tokio::test]
    async fn a_429_waits_its_retry_after_and_sends_the_same_message_again() {
        let server = FakeServer::start(slack(vec![
            error(429, "rate_limited").with_header("Retry-After", "1"),
        ]))
        .await;
        let mut sink = SlackSink::new("chat", options(&server)).expect("sink");
        deliver_all(&mut sink, &[event("/tmp/a")]).await;
        let requests = server.requests();
        assert_eq!(requests.len(), 2);
        assert!(requests[1].at - requests[0].at >= Duration::from_secs(1));
        assert_eq!(requests[0].body, requests[1].body);
        let stats = sink.stats();
        assert_eq!(stats.rate_limited.load(Ordering::Relaxed), 1);
        assert_eq!(stats.retries.load(Ordering::Relaxed), 1);
        assert_eq!(stats.messages_sent.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn server_errors_are_retried_until_slack_takes_the_message() {
        let server = FakeServer::start(slack(vec![
            error(500, "rollup_error"),
            error(503, "service_unavailable"),
        ]))
        .await;
        let mut sink = SlackSink::new("chat", options(&server)).expect("sink");
        deliver_all(&mut sink, &[event("/tmp/a")]).await;
        assert_eq!(server.requests().len(), 3);
        let stats = sink.stats();
        assert_eq!(stats.retries.load(Ordering::Relaxed), 2);
        assert_eq!(stats.messages_sent.load(Ordering::Relaxed), 1);
        assert_eq!(stats.events_failed.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn a_refused_connection_is_retried_then_given_up_and_counted_without_the_url() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}{SECRET}", closed.local_addr().expect("address"));
        drop(closed);
        let log = CapturedLog::default();
        let _guard = log.start();
        let mut options = SlackOptions::new(Secret::new(url));
        options.retry = Retry {
            min_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(20),
            give_up_after: Duration::from_millis(200),
        };
        let mut sink = SlackSink::new("chat", options).expect("sink");
        deliver_all(&mut sink, &[event("/tmp/a"), event("/tmp/b")]).await;
        let stats = sink.stats();
        assert_eq!(stats.events_failed.load(Ordering::Relaxed), 2);
        let failed = sink
            .shared_stats()
            .expect("shared")
            .failed
            .load(Ordering::Relaxed);
        assert_eq!(failed, 2, "given up: reported as sinkFailed");
        assert!(stats.retries.load(Ordering::Relaxed) >= 2);
        assert_eq!(stats.messages_sent.load(Ordering::Relaxed), 0);
        let log = log.text();
        assert!(
            log.contains("sink chat: the Slack incoming webhook still failing"),
            "{log}"
        );
        assert!(!log.contains("s3cr3t"), "{log}");
    }

    #[tokio::test]
    async fn permanent_errors_stop_at_once_are_counted_and_logged_once() {
        for (status, slack_error) in [
            (400, "invalid_payload"),
            (404, "no_service"),
            (410, "channel_is_archived"),
            (403, "action_prohibited"),
        ] {
            let server = FakeServer::start(slack(vec![
                error(status, slack_error),
                error(status, slack_error),
            ]))
            .await;
            let log = CapturedLog::default();
            let guard = log.start();
            let mut options = options(&server);
            options.min_interval = Duration::from_millis(20);
            let mut sink = SlackSink::new("chat", options).expect("sink");
            deliver_all(&mut sink, &[event("/tmp/a")]).await;
            deliver_all(&mut sink, &[event("/tmp/b")]).await;
            drop(guard);
            assert_eq!(server.requests().len(), 2, "{slack_error}: no retry");
            let stats = sink.stats();
            assert_eq!(stats.permanent(slack_error), 2, "{slack_error}");
            assert_eq!(stats.events_rejected.load(Ordering::Relaxed), 2);
            let failed = sink
                .shared_stats()
                .expect("shared")
                .failed
                .load(Ordering::Relaxed);
            assert_eq!(failed, 2, "refused: reported as sinkFailed");
            assert_eq!(stats.retries.load(Ordering::Relaxed), 0);
            let log = log.text();
            assert_eq!(log.matches(slack_error).count(), 1, "{log}");
            assert!(
                log.contains(&format!(
                    "sink chat: the Slack incoming webhook refused for good: HTTP {status}: \
                     {slack_error}"
                )),
                "{log}"
            );
            assert!(!log.contains("s3cr3t"), "{log}");
        }
    }

    #[tokio::test]
    async fn events_below_the_minimum_severity_or_of_other_types_are_not_sent() {
        let server = FakeServer::start(slack(vec![])).await;
        let mut options = options(&server);
        options.min_severity = Severity::Critical;
        let mut sink = SlackSink::new("chat", options).expect("sink");
        deliver_all(&mut sink, &[event("/tmp/a")]).await;
        let mut options = self::options(&server);
        options.types = vec![EventType::Connect];
        let mut other = SlackSink::new("chat", options).expect("sink");
        deliver_all(&mut other, &[event("/tmp/a")]).await;
        assert!(server.requests().is_empty());
        assert_eq!(sink.stats().events_filtered.load(Ordering::Relaxed), 1);
        assert_eq!(other.stats().events_filtered.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_flood_lists_40_events_and_counts_the_rest_within_block_kit_limits() {
        let events: Vec<_> = (0..45).map(|i| event(&format!("/tmp/e{i}"))).collect();
        let message = message(&events);
        let blocks = message["blocks"].as_array().expect("blocks");
        assert_eq!(blocks.len(), 43);
        assert_eq!(blocks[0]["text"]["text"], "Vigil: 45 events (45 exec)");
        assert_eq!(blocks[41]["text"]["text"], "…and 5 more: 5 exec");
        assert!(message["text"].as_str().expect("text").ends_with("; …"));
    }

    #[test]
    fn code_spans_show_control_and_direction_characters_and_cut_long_values() {
        assert_eq!(
            code("a\nb\u{202e}c\u{1b}[31m"),
            "`a\\u{a}b\\u{202e}c\\u{1b}[31m`"
        );
        assert_eq!(code("\u{fffd}bad"), "`\u{fffd}bad`");
        let long = "x".repeat(MAX_VALUE + 1);
        assert_eq!(code(&long), format!("`{}…`", "x".repeat(MAX_VALUE)));
        assert_eq!(code(""), "(empty)");
    }

    #[test]
    fn retry_after_reads_seconds_and_dates_and_is_capped() {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, "7".parse().expect("value"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
        headers.insert(RETRY_AFTER, "999999".parse().expect("value"));
        assert_eq!(retry_after(&headers), Some(MAX_RETRY_AFTER));
        let soon = (chrono::Utc::now() + chrono::Duration::seconds(30)).to_rfc2822();
        headers.insert(RETRY_AFTER, soon.parse().expect("value"));
        let wait = retry_after(&headers).expect("a date");
        assert!(
            wait > Duration::from_secs(25) && wait <= Duration::from_secs(30),
            "{wait:?}"
        );
        headers.insert(RETRY_AFTER, "soon".parse().expect("value"));
        assert_eq!(retry_after(&headers), None);
    }

    #[test]
    fn full_jitter_delays_stay_under_a_doubling_ceiling() {
        let retry = Retry {
            min_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(400),
            give_up_after: Duration::from_secs(1),
        };
        let mut backoff = Backoff::new(&retry);
        let ceilings = [100, 200, 400, 400, 400];
        let delays: Vec<Duration> = ceilings.iter().map(|_| backoff.next_delay()).collect();
        for (delay, ceiling) in delays.iter().zip(ceilings) {
            assert!(*delay <= Duration::from_millis(ceiling), "{delays:?}");
        }
        // Full jitter goes below half the ceiling about half the time; 200 draws all above it
        // would mean no jitter (a chance of 2^-200).
        let low = (0..200)
            .filter(|_| Backoff::new(&retry).next_delay() < Duration::from_millis(50))
            .count();
        assert!(low > 0);
    }
}
