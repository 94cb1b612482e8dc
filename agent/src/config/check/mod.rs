//! The configuration file, checked field by field. Parsed as plain YAML first and walked by
//! hand, so that every problem names its field path (`sinks[1].caFile`) and all of them are
//! reported at once.
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    time::Duration,
};

use serde_yaml_ng::{Mapping, Value};

use super::{Config, ConfigError, Format, HttpMode, Secret, SinkKind, SinkSpec, Spool};
use crate::cloudevents::{EventType, Severity};

const DEFAULT_MAX_BYTES: u64 = 100 * 1024 * 1024;
const DEFAULT_KEEP: u64 = 5;

const TOP: &[&str] = &["sinks", "aggregation"];
const COMMON: &[&str] = &["name", "type", "minSeverity", "types"];

/// The keys each sink type takes beside the common ones.
fn own_keys(ty: &str) -> Option<&'static [&'static str]> {
    Some(match ty {
        "stdout" => &["format"],
        "file" => &["path", "maxBytes", "keep"],
        "http" => &["url", "mode", "headers", "caFile"],
        "slack" => &["webhookUrlFile", "caFile"],
        "splunk-hec" => &["url", "tokenEnv", "index", "sourcetype", "ack", "caFile"],
        "kubernetes-events" => &[],
        _ => return None,
    })
}

const TYPES: &str = "stdout, file, http, slack, splunk-hec, kubernetes-events";

/// The sink types that send to a receiver, and so may keep a disk spool.
const SPOOLED: &[&str] = &["http", "slack", "splunk-hec", "kubernetes-events"];

/// The least `spool.maxBytes` (the spool's segments are an eighth of it).
const MIN_SPOOL_BYTES: u64 = crate::sink::spool::MIN_CAP;

struct Checker<'a> {
    file: &'a Path,
    env: &'a dyn Fn(&str) -> Option<String>,
    errors: Vec<ConfigError>,
}

/// Checks `text` (the content of `file`); `env` reads environment variables (for `tokenEnv`).
pub fn parse(
    text: &str,
    file: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, Vec<ConfigError>> {
    let mut c = Checker {
        file,
        env,
        errors: Vec::new(),
    };
    let root: Value = match serde_yaml_ng::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            let at = e
                .location()
                .map(|l| format!(" (line {}, column {})", l.line(), l.column()))
                .unwrap_or_default();
            c.err("(file)", format!("not YAML{at}: {e}"));
            return Err(c.errors);
        }
    };
    let config = c.config(&root);
    if c.errors.is_empty() {
        Ok(config)
    } else {
        Err(c.errors)
    }
}

impl Checker<'_> {
    fn err(&mut self, field: impl Into<String>, reason: impl Into<String>) {
        self.errors.push(ConfigError {
            file: self.file.to_path_buf(),
            field: field.into(),
            reason: reason.into(),
        });
    }

    fn mapping<'v>(&mut self, value: &'v Value, field: &str) -> Option<&'v Mapping> {
        match value {
            Value::Mapping(m) => Some(m),
            other => {
                self.err(field, format!("must be a mapping, not {}", kind(other)));
                None
            }
        }
    }

    /// Refuses keys outside `allowed`, naming them and what is allowed.
    fn known_keys(&mut self, map: &Mapping, field: &str, allowed: &[&str]) {
        for key in map.keys() {
            match key.as_str() {
                Some(k) if allowed.contains(&k) => {}
                Some(k) => self.err(
                    join(field, k),
                    format!("unknown field; expected one of {}", allowed.join(", ")),
                ),
                None => self.err(field, format!("keys must be strings, not {}", kind(key))),
            }
        }
    }

    fn string(&mut self, map: &Mapping, key: &str, field: &str, required: bool) -> Option<String> {
        let path = join(field, key);
        match map.get(key) {
            None | Some(Value::Null) if required => {
                self.err(path, "required");
                None
            }
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.trim().is_empty() => {
                self.err(path, "must not be empty");
                None
            }
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => {
                self.err(path, format!("must be a string, not {}", kind(other)));
                None
            }
        }
    }

    fn unsigned(&mut self, map: &Mapping, key: &str, field: &str, default: u64) -> u64 {
        let path = join(field, key);
        match map.get(key) {
            None | Some(Value::Null) => default,
            Some(Value::Number(n)) => match n.as_u64() {
                Some(0) => {
                    self.err(path, "must be above 0");
                    default
                }
                Some(v) => v,
                None => {
                    self.err(path, format!("must be a whole number above 0, not {n}"));
                    default
                }
            },
            Some(other) => {
                self.err(
                    path,
                    format!("must be a whole number (bytes), not {}", kind(other)),
                );
                default
            }
        }
    }

    fn boolean(&mut self, map: &Mapping, key: &str, field: &str) -> bool {
        match map.get(key) {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                self.err(
                    join(field, key),
                    format!("must be true or false, not {}", kind(other)),
                );
                false
            }
        }
    }

    fn config(&mut self, root: &Value) -> Config {
        let mut config = Config {
            sinks: Vec::new(),
            aggregation_window: None,
        };
        let Some(top) = self.mapping(root, "(file)") else {
            return config;
        };
        self.known_keys(top, "", TOP);
        match top.get("sinks") {
            None | Some(Value::Null) => self.err("sinks", "required: at least one sink"),
            Some(Value::Sequence(list)) if list.is_empty() => {
                self.err("sinks", "at least one sink is required")
            }
            Some(Value::Sequence(list)) => {
                let mut names = BTreeSet::new();
                let mut spools = std::collections::BTreeMap::new();
                for (i, item) in list.iter().enumerate() {
                    let field = format!("sinks[{i}]");
                    if let Some(spec) = self.sink(item, &field) {
                        if !names.insert(spec.name.clone()) {
                            self.err(
                                format!("{field}.name"),
                                format!("`{}` names another sink too", spec.name),
                            );
                        }
                        if let Some(spool) = &spec.spool
                            && let Some(other) = spools.insert(spool.dir.clone(), spec.name.clone())
                        {
                            self.err(
                                format!("{field}.spool.dir"),
                                format!("the spool of sink `{other}` too; each sink needs its own"),
                            );
                        }
                        config.sinks.push(spec);
                    }
                }
            }
            Some(other) => self.err("sinks", format!("must be a list, not {}", kind(other))),
        }
        if let Some(value) = top.get("aggregation")
            && let Some(agg) = self.mapping(value, "aggregation")
        {
            self.known_keys(agg, "aggregation", &["window"]);
            if let Some(text) = self.string(agg, "window", "aggregation", true) {
                match duration(&text) {
                    Some(d) if !d.is_zero() => config.aggregation_window = Some(d),
                    _ => self.err(
                        "aggregation.window",
                        format!("`{text}` is not a duration such as 10s, 500ms or 1m"),
                    ),
                }
            }
        }
        config
    }

    fn sink(&mut self, item: &Value, field: &str) -> Option<SinkSpec> {
        let map = self.mapping(item, field)?;
        let name = self.string(map, "name", field, true);
        if let Some(n) = &name
            && !n
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            self.err(
                join(field, "name"),
                format!("`{n}` must be lower-case letters, digits and `-`"),
            );
        }
        let ty = self.string(map, "type", field, true)?;
        let Some(own) = own_keys(&ty) else {
            self.err(
                join(field, "type"),
                format!("unknown sink type `{ty}`; expected one of {TYPES}"),
            );
            return None;
        };
        let spooled = SPOOLED.contains(&ty.as_str());
        let allowed: Vec<&str> = COMMON
            .iter()
            .chain(own)
            .chain(spooled.then_some(&"spool"))
            .copied()
            .collect();
        if !spooled && map.contains_key("spool") {
            self.err(
                join(field, "spool"),
                format!(
                    "a {ty} sink writes locally and keeps no spool; spool is for {}",
                    SPOOLED.join(", ")
                ),
            );
        }
        self.known_keys(map, field, &allowed);
        let min_severity = match self.string(map, "minSeverity", field, false) {
            None => Severity::Info,
            Some(s) => severity(&s).unwrap_or_else(|| {
                self.err(
                    join(field, "minSeverity"),
                    format!("`{s}` is not one of info, low, medium, warning, high, critical"),
                );
                Severity::Info
            }),
        };
        let types = self.types(map, field);
        let spool = if spooled {
            self.spool(map, field)
        } else {
            None
        };
        let kind = self.kind(&ty, map, field)?;
        Some(SinkSpec {
            name: name?,
            min_severity,
            types,
            spool,
            kind,
        })
    }

    fn types(&mut self, map: &Mapping, field: &str) -> Vec<EventType> {
        let path = join(field, "types");
        let Some(value) = map.get("types") else {
            return Vec::new();
        };
        let Value::Sequence(list) = value else {
            self.err(path, format!("must be a list, not {}", kind(value)));
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, t) in list.iter().enumerate() {
            match EventType::ALL
                .iter()
                .find(|e| Some(e.as_str()) == t.as_str())
            {
                Some(e) => out.push(*e),
                None => {
                    let known: Vec<&str> = EventType::ALL.iter().map(|e| e.as_str()).collect();
                    self.err(
                        format!("{path}[{i}]"),
                        format!("not an event type; expected one of {}", known.join(", ")),
                    );
                }
            }
        }
        out
    }

    fn kind(&mut self, ty: &str, map: &Mapping, field: &str) -> Option<SinkKind> {
        Some(match ty {
            "stdout" => SinkKind::Stdout {
                format: match self.string(map, "format", field, false).as_deref() {
                    None => None,
                    Some("json") => Some(Format::Json),
                    Some("pretty") => Some(Format::Pretty),
                    Some(other) => {
                        self.err(
                            join(field, "format"),
                            format!("`{other}` is not json or pretty"),
                        );
                        return None;
                    }
                },
            },
            "file" => {
                let path = self.absolute_path(map, "path", field, true)?;
                if let Some(parent) = path.parent()
                    && !parent.is_dir()
                {
                    self.err(
                        join(field, "path"),
                        format!("its directory {} does not exist", parent.display()),
                    );
                }
                let max_bytes = self.unsigned(map, "maxBytes", field, DEFAULT_MAX_BYTES);
                let keep = self.unsigned(map, "keep", field, DEFAULT_KEEP);
                SinkKind::File {
                    path,
                    max_bytes,
                    keep: u32::try_from(keep).unwrap_or(u32::MAX),
                }
            }
            "http" => {
                let url = self.url(map, "url", field)?;
                let mode = match self.string(map, "mode", field, false).as_deref() {
                    None | Some("structured") => HttpMode::Structured,
                    Some("binary") => HttpMode::Binary,
                    Some("batch") => HttpMode::Batch,
                    Some(other) => {
                        self.err(
                            join(field, "mode"),
                            format!("`{other}` is not structured, binary or batch"),
                        );
                        return None;
                    }
                };
                SinkKind::Http {
                    url,
                    mode,
                    headers: self.headers(map, field),
                    ca_file: self.ca_file(map, field),
                }
            }
            "slack" => {
                let ca_file = self.ca_file(map, field);
                let file = self.absolute_path(map, "webhookUrlFile", field, true)?;
                let at = join(field, "webhookUrlFile");
                let text = match std::fs::read_to_string(&file) {
                    Ok(t) => t.trim().to_string(),
                    Err(e) => {
                        self.err(at, format!("{} cannot be read: {e}", file.display()));
                        return None;
                    }
                };
                // The URL is the secret: say what is wrong with it, never what it is.
                match url::Url::parse(&text) {
                    Ok(u) if secure_or_loopback(&u) => {}
                    Ok(_) => {
                        self.err(
                            at,
                            format!(
                                "{} holds a URL that is not https (plain http only to loopback)",
                                file.display()
                            ),
                        );
                        return None;
                    }
                    Err(e) => {
                        self.err(at, format!("{} does not hold a URL: {e}", file.display()));
                        return None;
                    }
                }
                SinkKind::Slack {
                    webhook_url: Secret::new(text),
                    ca_file,
                }
            }
            "splunk-hec" => {
                let url = self.url(map, "url", field);
                let token =
                    self.string(map, "tokenEnv", field, true).and_then(|var| {
                        match (self.env)(&var).filter(|v| !v.trim().is_empty()) {
                            Some(v) => Some(Secret::new(v.trim().to_string())),
                            None => {
                                self.err(
                                    join(field, "tokenEnv"),
                                    format!("the environment variable {var} is not set or empty"),
                                );
                                None
                            }
                        }
                    });
                let index = self.string(map, "index", field, false);
                let sourcetype = self.string(map, "sourcetype", field, false);
                let ack = self.boolean(map, "ack", field);
                let ca_file = self.ca_file(map, field);
                SinkKind::SplunkHec {
                    url: url?,
                    token: token?,
                    index,
                    sourcetype,
                    ack,
                    ca_file,
                }
            }
            "kubernetes-events" => SinkKind::KubernetesEvents,
            _ => unreachable!("own_keys knows every type"),
        })
    }

    fn absolute_path(
        &mut self,
        map: &Mapping,
        key: &str,
        field: &str,
        required: bool,
    ) -> Option<PathBuf> {
        let text = self.string(map, key, field, required)?;
        let path = PathBuf::from(&text);
        if !path.is_absolute() {
            self.err(
                join(field, key),
                format!("`{text}` must be an absolute path"),
            );
            return None;
        }
        Some(path)
    }

    fn url(&mut self, map: &Mapping, key: &str, field: &str) -> Option<url::Url> {
        let text = self.string(map, key, field, true)?;
        match url::Url::parse(&text) {
            Ok(u) if !matches!(u.scheme(), "http" | "https") => {
                self.err(
                    join(field, key),
                    format!("`{text}` must be an http or https URL"),
                );
                None
            }
            Ok(u) if u.host_str().is_none_or(str::is_empty) => {
                self.err(join(field, key), format!("`{text}` has no host"));
                None
            }
            Ok(u) if !u.username().is_empty() || u.password().is_some() => {
                // Credentials belong in a secret, not in a config file anyone may read.
                self.err(
                    join(field, key),
                    "must not carry credentials; use headers or the sink's secret",
                );
                None
            }
            Ok(u) => Some(u),
            Err(e) => {
                self.err(join(field, key), format!("`{text}` is not a URL: {e}"));
                None
            }
        }
    }

    fn ca_file(&mut self, map: &Mapping, field: &str) -> Option<PathBuf> {
        let path = self.absolute_path(map, "caFile", field, false)?;
        match std::fs::read_to_string(&path) {
            Ok(text) if text.contains("-----BEGIN CERTIFICATE-----") => Some(path),
            Ok(_) => {
                self.err(
                    join(field, "caFile"),
                    format!("{} holds no PEM certificate", path.display()),
                );
                None
            }
            Err(e) => {
                self.err(
                    join(field, "caFile"),
                    format!("{} cannot be read: {e}", path.display()),
                );
                None
            }
        }
    }

    fn headers(&mut self, map: &Mapping, field: &str) -> Vec<(String, String)> {
        let path = join(field, "headers");
        let Some(value) = map.get("headers") else {
            return Vec::new();
        };
        let Some(headers) = self.mapping(value, &path) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (k, v) in headers {
            let (Some(name), Some(value)) = (k.as_str(), v.as_str()) else {
                self.err(&path, "names and values must be strings");
                continue;
            };
            let token = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
            if !token {
                self.err(join(&path, name), "not a valid header name");
            } else if value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
                self.err(join(&path, name), "the value must not contain line breaks");
            } else {
                out.push((name.to_string(), value.to_string()));
            }
        }
        out
    }

    fn spool(&mut self, map: &Mapping, field: &str) -> Option<Spool> {
        let path = join(field, "spool");
        let value = map.get("spool")?;
        let spool = self.mapping(value, &path)?;
        self.known_keys(spool, &path, &["dir", "maxBytes"]);
        let dir = self.absolute_path(spool, "dir", &path, true)?;
        let max_bytes = self.unsigned(spool, "maxBytes", &path, DEFAULT_MAX_BYTES);
        if max_bytes < MIN_SPOOL_BYTES {
            self.err(
                join(&path, "maxBytes"),
                format!("{max_bytes} is below the least a spool needs ({MIN_SPOOL_BYTES})"),
            );
            return None;
        }
        Some(Spool { dir, max_bytes })
    }
}

fn join(field: &str, key: &str) -> String {
    if field.is_empty() {
        key.to_string()
    } else {
        format!("{field}.{key}")
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

fn severity(s: &str) -> Option<Severity> {
    Some(match s {
        "info" => Severity::Info,
        "low" => Severity::Low,
        "medium" => Severity::Medium,
        "warning" => Severity::Warning,
        "high" => Severity::High,
        "critical" => Severity::Critical,
        _ => return None,
    })
}

/// `10s`, `500ms`, `1m`, `2h`.
fn duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().ok()?;
    Some(match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.checked_mul(60)?),
        "h" => Duration::from_secs(n.checked_mul(3600)?),
        _ => return None,
    })
}

/// https, or plain http to this host only (test receivers).
fn secure_or_loopback(u: &url::Url) -> bool {
    match u.scheme() {
        "https" => true,
        "http" => {
            matches!(
                u.host(),
                Some(url::Host::Ipv4(a)) if a.is_loopback()
            ) || matches!(u.host(), Some(url::Host::Ipv6(a)) if a.is_loopback())
                || u.host_str() == Some("localhost")
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests;
