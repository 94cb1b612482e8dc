//! Vigil: an eBPF runtime security agent for Kubernetes pods.
pub mod behaviour;
pub mod cloudevents;
pub mod config;
pub mod doctor;
pub mod ebpf;
pub mod enforce;
pub mod event;
pub mod learn;
pub mod memory;
pub mod metadata;
pub mod mountinfo;
pub mod pipeline;
pub mod policy;
pub mod readiness;
pub mod secret;
pub mod sink;
pub mod telemetry;

/// This node's name: `NODE_NAME` (set by the chart from the downward API), else the host name.
pub fn node_name() -> String {
    if let Ok(name) = std::env::var("NODE_NAME")
        && !name.is_empty()
    {
        return name;
    }
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates on success.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}
