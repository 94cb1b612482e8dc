//! `cargo xtask fake-slack --listen ADDR --dir DIR`: a stand-in for a Slack incoming webhook,
//! for trying the Slack sink where Slack cannot be reached (the quickstart's cluster has no
//! route off the node).
//!
//! It speaks the webhook's documented wire format: a `POST` of a JSON message to
//! `/services/T…/B…/<token>` over HTTPS, answered `200 ok` (`text/html`), and Slack's errors
//! otherwise: `404 no_service` (an unknown path), `403 invalid_token` (the right team and
//! webhook, a wrong token), `400 invalid_payload` (not a JSON object), `400 no_text` (neither
//! `text` nor `blocks`). It makes its own CA and a certificate for the listening address, so the
//! sink's `caFile` is exercised as it is against a Slack-compatible server behind a private CA.
//!
//! DIR receives `ca.pem` (the CA to trust), `webhook-url` (the URL, mode 0600: it is the
//! secret) and `messages.jsonl` (every message accepted since it started, as received). Each accepted message's
//! `text` is printed as `fake-slack: #N <text>`.
use std::{
    fs,
    io::{BufRead, BufReader, Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    thread,
    time::Duration,
};

use anyhow::{Context, Result, bail};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use serde_json::Value;

#[derive(clap::Args)]
pub struct Options {
    /// Where to listen, an IP address and port (e.g. the node's bridge address, 10.244.0.1:8443,
    /// which the cluster's pods reach).
    #[arg(long)]
    listen: SocketAddr,
    /// Where to write ca.pem, webhook-url and messages.jsonl (created when missing).
    #[arg(long)]
    dir: PathBuf,
}

/// The team and webhook ids of the fake's one webhook, in Slack's shape.
const TEAM: &str = "T0VIGIL00";
const WEBHOOK: &str = "B0VIGIL00";
/// Slack takes messages up to this size; a larger request is refused before it is read.
const MAX_BODY: usize = 1024 * 1024;

pub fn run(options: &Options) -> Result<()> {
    let fake = FakeSlack::create(&options.dir, options.listen)?;
    let listener = TcpListener::bind(options.listen)
        .with_context(|| format!("cannot listen on {}", options.listen))?;
    println!(
        "fake-slack: listening on https://{}; webhook URL in {}, CA in {}",
        options.listen,
        fake.url_file.display(),
        fake.ca_file.display()
    );
    fake.serve(listener, |line| println!("{line}"))
}

/// One fake webhook: its TLS configuration, its secret path and where messages go.
struct FakeSlack {
    tls: Arc<rustls::ServerConfig>,
    /// `/services/TEAM/WEBHOOK/<token>`.
    path: String,
    ca_file: PathBuf,
    url_file: PathBuf,
    messages: Mutex<fs::File>,
    received: AtomicU64,
}

/// What the fake answers one request with.
#[derive(Debug, PartialEq, Eq)]
struct Answer {
    status: u16,
    body: &'static str,
}

impl FakeSlack {
    /// Makes the CA, the certificate for `listen`'s address and the webhook's URL in `dir`.
    fn create(dir: &Path, listen: SocketAddr) -> Result<Self> {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let (ca_pem, tls) = certificates(listen.ip())?;
        let ca_file = dir.join("ca.pem");
        fs::write(&ca_file, ca_pem)
            .with_context(|| format!("cannot write {}", ca_file.display()))?;
        let path = format!("/services/{TEAM}/{WEBHOOK}/{}", token()?);
        let url_file = dir.join("webhook-url");
        let _ = fs::remove_file(&url_file);
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&url_file)
            .and_then(|mut f| writeln!(f, "https://{listen}{path}"))
            .with_context(|| format!("cannot write {}", url_file.display()))?;
        let log = dir.join("messages.jsonl");
        // This run's messages only.
        let messages = fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&log)
            .with_context(|| format!("cannot open {}", log.display()))?;
        fs::set_permissions(&log, fs::Permissions::from_mode(0o600))?;
        Ok(Self {
            tls,
            path,
            ca_file,
            url_file,
            messages: Mutex::new(messages),
            received: AtomicU64::new(0),
        })
    }

    /// Serves connections until the process ends, a thread each (the sink keeps its
    /// connection alive between messages).
    fn serve(self, listener: TcpListener, say: fn(&str)) -> Result<()> {
        let fake = Arc::new(self);
        for stream in listener.incoming() {
            let stream = stream.context("accepting a connection")?;
            let fake = Arc::clone(&fake);
            thread::spawn(move || {
                if let Err(err) = fake.connection(stream, say) {
                    say(&format!("fake-slack: a connection ended: {err:#}"));
                }
            });
        }
        Ok(())
    }

    fn connection(&self, stream: TcpStream, say: fn(&str)) -> Result<()> {
        stream.set_read_timeout(Some(Duration::from_secs(120)))?;
        let tls = rustls::ServerConnection::new(Arc::clone(&self.tls))?;
        let mut reader = BufReader::new(rustls::StreamOwned::new(tls, stream));
        while let Some(request) = read_request(&mut reader)? {
            let (answer, text) = self.answer(&request);
            if let Some(text) = text {
                let n = self.received.fetch_add(1, Ordering::Relaxed) + 1;
                say(&format!("fake-slack: #{n} {text}"));
            }
            let stream = reader.get_mut();
            write!(
                stream,
                "HTTP/1.1 {} {}\r\nContent-Type: text/html\r\nContent-Length: {}\r\n\r\n{}",
                answer.status,
                reason(answer.status),
                answer.body.len(),
                answer.body
            )?;
            stream.flush()?;
        }
        Ok(())
    }

    /// Slack's answer to `request`, and the text of an accepted message (recorded).
    fn answer(&self, request: &Request) -> (Answer, Option<String>) {
        let refuse = |status, body| (Answer { status, body }, None);
        if request.target != self.path {
            let ours = format!("/services/{TEAM}/{WEBHOOK}/");
            return if request.target.starts_with(&ours) {
                refuse(403, "invalid_token")
            } else {
                refuse(404, "no_service")
            };
        }
        let json = request
            .content_type
            .as_deref()
            .is_some_and(|t| t.starts_with("application/json"));
        let message = match serde_json::from_slice::<Value>(&request.body) {
            Ok(Value::Object(m)) if request.method == "POST" && json => m,
            _ => return refuse(400, "invalid_payload"),
        };
        let text = match (message.get("text"), message.get("blocks")) {
            (Some(Value::String(t)), _) if !t.is_empty() => t.clone(),
            (_, Some(Value::Array(b))) if !b.is_empty() => "(blocks only)".to_owned(),
            _ => return refuse(400, "no_text"),
        };
        if let Ok(mut log) = self.messages.lock() {
            let _ = log
                .write_all(&request.body)
                .and_then(|()| log.write_all(b"\n"));
        }
        (
            Answer {
                status: 200,
                body: "ok",
            },
            Some(text),
        )
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        _ => "Error",
    }
}

#[derive(Debug)]
struct Request {
    method: String,
    target: String,
    content_type: Option<String>,
    body: Vec<u8>,
}

/// One HTTP/1.1 request, or `None` when the client closed the connection between requests.
fn read_request(reader: &mut impl BufRead) -> Result<Option<Request>> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        bail!("not an HTTP request line: {line:?}");
    };
    let (method, target) = (method.to_owned(), target.to_owned());
    let mut length = 0;
    let mut content_type = None;
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            bail!("the connection closed inside the headers");
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        let Some((name, value)) = header.split_once(':') else {
            bail!("not a header: {header:?}");
        };
        let value = value.trim();
        match name.to_ascii_lowercase().as_str() {
            "content-length" => length = value.parse().context("Content-Length")?,
            "content-type" => content_type = Some(value.to_owned()),
            "transfer-encoding" => bail!("Transfer-Encoding {value} (the sink sends a length)"),
            _ => {}
        }
    }
    if length > MAX_BODY {
        bail!("a body of {length} bytes, over {MAX_BODY}");
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    Ok(Some(Request {
        method,
        target,
        content_type,
        body,
    }))
}

/// A webhook token in Slack's shape: 24 letters and digits, from the kernel's random source.
fn token() -> Result<String> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut bytes = [0_u8; 24];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("reading /dev/urandom")?;
    Ok(bytes
        .iter()
        .map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]))
        .collect())
}

/// A CA (its PEM returned) and a server configuration with a certificate it signed for `ip`.
fn certificates(ip: IpAddr) -> Result<(String, Arc<rustls::ServerConfig>)> {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, "vigil fake-slack CA");
    let mut ca = CertificateParams::default();
    ca.distinguished_name = name;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate().context("generating the CA key")?;
    let ca_pem = ca
        .self_signed(&ca_key)
        .context("signing the CA certificate")?
        .pem();
    let issuer = Issuer::new(ca, ca_key);
    let mut server = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, "vigil fake-slack");
    server.distinguished_name = name;
    server.is_ca = IsCa::ExplicitNoCa;
    server.subject_alt_names = vec![SanType::IpAddress(ip)];
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate().context("generating the server key")?;
    let cert = server
        .signed_by(&key, &issuer)
        .context("signing the server certificate")?;
    let private = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der())
        .map_err(|e| anyhow::anyhow!("the server key: {e}"))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(vec![cert.der().clone()], private)?;
    Ok((ca_pem, Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use rustls::pki_types::pem::PemObject;

    use super::*;

    /// A fake on a loopback port, and its directory.
    fn started() -> (tempfile::TempDir, SocketAddr) {
        let dir = tempfile::tempdir().expect("tempdir");
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let addr = listener.local_addr().expect("address");
        let fake = FakeSlack::create(dir.path(), addr).expect("fake");
        thread::spawn(move || fake.serve(listener, |_| {}));
        (dir, addr)
    }

    /// Posts `body` to `path` over one TLS connection trusting only the fake's CA: the
    /// status and the body of the answer.
    fn post(dir: &Path, addr: SocketAddr, path: &str, body: &str) -> (u16, String) {
        let mut roots = rustls::RootCertStore::empty();
        let pem = fs::read(dir.join("ca.pem")).expect("ca.pem");
        for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
            roots.add(cert.expect("a certificate")).expect("a root");
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("protocols")
        .with_root_certificates(roots)
        .with_no_client_auth();
        let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
        let tls = rustls::ClientConnection::new(Arc::new(config), name).expect("client");
        let mut stream = rustls::StreamOwned::new(tls, TcpStream::connect(addr).expect("connect"));
        write!(
            stream,
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .expect("send");
        let mut reader = BufReader::new(stream);
        let mut status = String::new();
        reader.read_line(&mut status).expect("status line");
        let mut length = 0;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).expect("header");
            if line.trim_end().is_empty() {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().expect("length");
            }
        }
        let mut answer = vec![0; length];
        reader.read_exact(&mut answer).expect("body");
        let code = status
            .split_whitespace()
            .nth(1)
            .expect("code")
            .parse()
            .expect("a number");
        (code, String::from_utf8(answer).expect("text"))
    }

    #[test]
    fn a_message_to_the_webhook_is_ok_and_recorded_and_anything_else_gets_slacks_error() {
        let (dir, addr) = started();
        let url = fs::read_to_string(dir.path().join("webhook-url")).expect("url");
        let path = url
            .trim()
            .strip_prefix(&format!("https://{addr}"))
            .expect("the URL names the listening address");
        let mode = fs::metadata(dir.path().join("webhook-url"))
            .expect("metadata")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the URL is a secret");
        let message = r#"{"text":"Vigil: killed exec `/tmp/tool` in pod `shop/web`"}"#;
        assert_eq!(post(dir.path(), addr, path, message), (200, "ok".into()));
        let wrong_token = format!("/services/{TEAM}/{WEBHOOK}/not-the-token");
        for (target, body, want) in [
            (wrong_token.as_str(), message, (403, "invalid_token")),
            ("/services/T1/B1/x", message, (404, "no_service")),
            (path, "not json", (400, "invalid_payload")),
            (path, r#"["text"]"#, (400, "invalid_payload")),
            (path, r#"{"username":"vigil"}"#, (400, "no_text")),
        ] {
            let (status, answer) = post(dir.path(), addr, target, body);
            assert_eq!((status, answer.as_str()), want, "{target} {body}");
        }
        let recorded = fs::read_to_string(dir.path().join("messages.jsonl")).expect("messages");
        assert_eq!(recorded, format!("{message}\n"), "only the accepted one");
    }
}
