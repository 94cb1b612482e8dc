//! The CAs a sink's `caFile` adds to the built-in roots: for receivers behind a private CA
//! (an in-house collector, a Slack-compatible chat server, a TLS-inspecting egress proxy).
use std::path::Path;

use reqwest::ClientBuilder;

use super::SinkError;

/// Adds every certificate of the PEM bundle at `path` to `builder`'s roots. A file that cannot
/// be read, is not PEM, or holds no certificate is refused: a sink that would silently trust
/// only the built-in roots would fail later, and less clearly.
pub(crate) fn add_ca_file(
    mut builder: ClientBuilder,
    sink: &str,
    path: Option<&Path>,
) -> Result<ClientBuilder, SinkError> {
    let Some(path) = path else {
        return Ok(builder);
    };
    let ca_error = |reason: String| SinkError::CaFile {
        sink: sink.to_owned(),
        path: path.to_owned(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|e| ca_error(e.to_string()))?;
    let certificates = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|e| ca_error(format!("not a PEM bundle: {}", e.without_url())))?;
    if certificates.is_empty() {
        return Err(ca_error("no PEM certificate in it".into()));
    }
    for certificate in certificates {
        builder = builder.add_root_certificate(certificate);
    }
    Ok(builder)
}
