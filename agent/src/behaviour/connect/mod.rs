//! connect: outgoing traffic judged by the cgroup socket programs on the kernel's own copy of
//! the destination (`agent-ebpf/src/connect.rs`).
pub mod compile;
mod data;

use std::{
    borrow::Cow,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use agent_common::{ConnectEvent, connect_hook};

pub use data::{ConnectData, ConnectMember};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Tcp,
    Udp,
    Other(u16),
}

impl Protocol {
    /// `tcp`, `udp`, `ip-<n>`: borrowed for the two every flood is made of.
    pub fn name(&self) -> Cow<'static, str> {
        match self {
            Self::Tcp => Cow::Borrowed("tcp"),
            Self::Udp => Cow::Borrowed("udp"),
            Self::Other(n) => Cow::Owned(format!("ip-{n}")),
        }
    }
}

/// Where an egress record was decided (see `agent_common::connect_hook`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum ConnectHook {
    /// connect(2) and every other path to a connect (io_uring, TCP Fast Open, compat).
    Connect,
    /// A datagram sent with an explicit destination (sendto, sendmsg, sendmmsg).
    Sendmsg,
    /// Creation of a socket that no address hook judges (raw, ICMP, SCTP, ...).
    Socket,
}

impl ConnectHook {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Sendmsg => "sendmsg",
            Self::Socket => "socket",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    pub protocol: Protocol,
    pub ipv4: bool,
    /// The destination as the kernel uses it (an unspecified address is loopback); `None`
    /// for [`ConnectHook::Socket`], which has none yet.
    pub daddr: Option<IpAddr>,
    pub dport: Option<u16>,
    pub hook: ConnectHook,
    /// The socket type (`SOCK_STREAM` 1, `SOCK_DGRAM` 2, `SOCK_RAW` 3, ...).
    pub sock_type: u32,
}

/// A socket type's name as `socket(2)` spells it, lower case.
pub fn sock_type_name(t: u32) -> Cow<'static, str> {
    Cow::Borrowed(match t {
        1 => "stream",
        2 => "dgram",
        3 => "raw",
        4 => "rdm",
        5 => "seqpacket",
        n => return Cow::Owned(format!("type-{n}")),
    })
}

fn ip(family: u16, addr: &[u8; 16]) -> IpAddr {
    if family == libc::AF_INET as u16 {
        IpAddr::V4(Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3]))
    } else {
        let v6 = Ipv6Addr::from(*addr);
        // A v4-mapped peer of a dual-stack socket is an IPv4 destination.
        v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
    }
}

impl Connect {
    pub fn decode(c: &ConnectEvent) -> Self {
        let hook = match c.hook {
            connect_hook::SENDMSG => ConnectHook::Sendmsg,
            connect_hook::SOCKET => ConnectHook::Socket,
            _ => ConnectHook::Connect,
        };
        let daddr = (hook != ConnectHook::Socket).then(|| ip(c.family, &c.daddr));
        Self {
            protocol: match c.protocol {
                6 => Protocol::Tcp,
                17 => Protocol::Udp,
                n => Protocol::Other(n),
            },
            ipv4: daddr.map_or(c.family == libc::AF_INET as u16, |a| a.is_ipv4()),
            daddr,
            dport: (hook != ConnectHook::Socket).then_some(c.dport),
            hook,
            sock_type: c.sock_type,
        }
    }
}
