//! `data.connect` of a `dev.vigil.connect.v1` CloudEvent, and its readable line.
use std::{borrow::Cow, net::IpAddr};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Connect, ConnectHook, sock_type_name};

/// The address family of a destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Ipv4,
    Ipv6,
}

/// dev.vigil.connect.v1: outgoing traffic, judged by cgroup socket programs on the kernel's
/// own copy of the destination: a connect (by any path: connect(2), io_uring, TCP Fast Open,
/// 32-bit compat calls), a datagram sent to an explicit destination (sendto, sendmsg,
/// sendmmsg), or the creation of a socket no address hook can judge (raw, ICMP, SCTP, ...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields, rename = "connect")]
#[schemars(extend("allOf" = [
    {
        "if": {"properties": {"hook": {"const": "socket"}}, "required": ["hook"]},
        "then": {"properties": {"daddr": {"type": "null"}, "dport": {"type": "null"}}},
        "else": {"properties": {"daddr": {"type": "string"}, "dport": {"type": "integer"}}}
    },
    {
        "if": {"properties": {"family": {"const": "ipv4"}, "daddr": {"type": "string"}}, "required": ["family", "daddr"]},
        "then": {"properties": {"daddr": {"format": "ipv4"}}}
    },
    {
        "if": {"properties": {"family": {"const": "ipv6"}, "daddr": {"type": "string"}}, "required": ["family", "daddr"]},
        "then": {"properties": {"daddr": {"format": "ipv6"}}}
    }
]))]
pub struct ConnectData {
    /// IP protocol: `tcp`, `udp`, or `ip-<n>` for another IP protocol number (UDP-Lite is
    /// `ip-136`, ICMP `ip-1`).
    #[schemars(regex(pattern = r"^(tcp|udp|ip-[0-9]+)$"))]
    pub protocol: Cow<'static, str>,
    /// Address family. An IPv4-mapped IPv6 destination (dual-stack socket) is reported as
    /// IPv4.
    pub family: Family,
    /// Destination address (dotted quad, or RFC 5952 IPv6 text) as the kernel uses it: an
    /// unspecified address (0.0.0.0, ::) is reported as the loopback address it reaches. Null
    /// only for `hook: socket`.
    // Kept as the address and written as its text (serde's human-readable form, the same
    // `Display` text) while the event is serialized: no string made per event.
    #[schemars(with = "Option<String>")]
    pub daddr: Option<IpAddr>,
    /// Destination port; null only for `hook: socket`.
    pub dport: Option<u16>,
    /// `connect` (a connect by any path), `sendmsg` (a datagram with an explicit destination)
    /// or `socket` (a socket of a protocol the address hooks cannot judge).
    pub hook: ConnectHook,
    /// The socket's type as socket(2) names it: stream, dgram, raw, rdm, seqpacket, or
    /// type-<n>.
    #[schemars(regex(pattern = r"^(stream|dgram|raw|rdm|seqpacket|type-[0-9]+)$"))]
    pub socket_type: Cow<'static, str>,
}

/// The member a connect event adds to the shared data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct ConnectMember {
    pub connect: ConnectData,
}

impl From<&Connect> for ConnectData {
    fn from(c: &Connect) -> Self {
        Self {
            protocol: c.protocol.name(),
            family: if c.ipv4 { Family::Ipv4 } else { Family::Ipv6 },
            daddr: c.daddr,
            dport: c.dport,
            hook: c.hook,
            socket_type: sock_type_name(c.sock_type),
        }
    }
}

impl ConnectData {
    /// `tcp connect 127.0.0.1:443`, `ip-1 ipv4 socket raw`
    pub fn line(&self) -> String {
        let family = match self.family {
            Family::Ipv4 => "ipv4",
            Family::Ipv6 => "ipv6",
        };
        let hook = self.hook.name();
        match &self.daddr {
            None => format!("{} {family} socket {}", self.protocol, self.socket_type),
            Some(addr) => {
                let port = self.dport.map_or("-".to_string(), |p| p.to_string());
                if addr.is_ipv6() {
                    format!("{} {hook} [{addr}]:{port}", self.protocol)
                } else {
                    format!("{} {hook} {addr}:{port}", self.protocol)
                }
            }
        }
    }
}
