//! Property: the record decoder takes any bytes without panicking, refuses what is not a whole
//! record of a known kind, and decodes a record's fields exactly (flags to their booleans, the
//! rule to its set, addresses by family, strings cut at their NUL), and the CloudEvent data
//! built from it serializes.
use agent_common::{
    ARGS_LEN, ConnectEvent, EventHeader, ExecEvent, NAME_LEN, PATH_LEN, WxEvent, exec_flags, kind,
    rule_id, verdict, wx_reason,
};
use proptest::prelude::*;

use super::{Body, DecodeError, Verdict, decode};

fn as_bytes<T>(value: &T) -> Vec<u8> {
    // SAFETY: the records are plain-old-data with explicit padding.
    unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
}

fn header(kind: u32, violation: bool, rule: u32, comm: &[u8]) -> EventHeader {
    let mut h = EventHeader {
        kind,
        verdict: if violation { verdict::VIOLATION } else { 0 },
        rule,
        pid: 7,
        ..Default::default()
    };
    let n = comm.len().min(h.comm.len());
    h.comm[..n].copy_from_slice(&comm[..n]);
    h
}

fn cut(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    shown(&bytes[..end])
}

/// The model of how bytes are shown, from `str::from_utf8`'s error positions: valid UTF-8 as
/// it is, each byte of an invalid sequence as `\xNN`.
fn shown(mut bytes: &[u8]) -> String {
    let mut out = String::new();
    loop {
        match std::str::from_utf8(bytes) {
            Ok(s) => {
                out.push_str(s);
                return out;
            }
            Err(e) => {
                let (valid, rest) = bytes.split_at(e.valid_up_to());
                out.push_str(std::str::from_utf8(valid).expect("valid up to here"));
                let bad = e.error_len().unwrap_or(rest.len());
                for b in &rest[..bad] {
                    out.push_str(&format!("\\x{b:02x}"));
                }
                bytes = &rest[bad..];
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn any_bytes_decode_or_are_refused_without_panicking(
        bytes in prop::collection::vec(any::<u8>(), 0..2000),
        record_kind in prop::sample::select(vec![kind::EXEC, kind::CONNECT, kind::WX, kind::MOVE, 0, 9]),
    ) {
        let mut bytes = bytes;
        if bytes.len() >= 4 {
            bytes[..4].copy_from_slice(&record_kind.to_ne_bytes());
        }
        match decode(&bytes) {
            Ok(event) => {
                // Only a record of exactly its kind's size decodes.
                let size = match event.body {
                    Body::Exec(_) => size_of::<ExecEvent>(),
                    Body::Connect(_) => size_of::<ConnectEvent>(),
                    Body::Wx(_) => size_of::<agent_common::WxRecord>(),
                    Body::Move(_) => size_of::<agent_common::MoveEvent>(),
                };
                prop_assert_eq!(bytes.len(), size);
            }
            Err(DecodeError::Short { len, need }) => prop_assert!(len < need),
            Err(DecodeError::Size { len, need, .. }) => prop_assert_ne!(len, need),
            Err(DecodeError::Kind(k)) => prop_assert_eq!(k, record_kind),
        }
    }

    #[test]
    fn exec_records_decode_field_by_field(
        flags in any::<u32>(),
        violation in any::<bool>(),
        set in 0u32..0xffff,
        index in 0u32..0xffff,
        comm in prop::collection::vec(1u8..=255, 0..20),
        path in prop::collection::vec(1u8..=255, 0..PATH_LEN + 8),
        args in prop::collection::vec(prop::collection::vec(1u8..=255, 0..40), 0..10),
    ) {
        let rule = rule_id::pack(set, index);
        let mut e = ExecEvent {
            header: header(kind::EXEC, violation, rule, &comm),
            flags,
            old_tid: 0,
            argc: args.len() as u32,
            args_len: 0,
            origin: agent_common::FileOrigin::default(),
            path: [0; PATH_LEN],
            exe_path: [0; PATH_LEN],
            exe_name: [0; NAME_LEN],
            args: [0; ARGS_LEN],
        };
        let n = path.len().min(PATH_LEN);
        e.path[..n].copy_from_slice(&path[..n]);
        let joined: Vec<u8> = args.iter().flat_map(|a| a.iter().copied().chain([0])).collect();
        let used = joined.len().min(ARGS_LEN);
        e.args[..used].copy_from_slice(&joined[..used]);
        e.args_len = used as u32;

        let event = decode(&as_bytes(&e)).expect("a whole exec record decodes");
        let Body::Exec(x) = &event.body else { panic!("an exec record decoded as another kind") };
        let flag = |bit: u32| flags & bit != 0;
        prop_assert_eq!(x.memfd, flag(exec_flags::MEMFD));
        prop_assert_eq!(x.script, flag(exec_flags::SCRIPT));
        prop_assert_eq!(x.unverifiable, flag(exec_flags::UNVERIFIABLE));
        prop_assert_eq!(x.mapped, flag(exec_flags::MAPPED));
        prop_assert_eq!(x.opened, flag(exec_flags::OPENED));
        prop_assert_eq!(x.interpreted, flag(exec_flags::LEVEL));
        prop_assert_eq!(x.user_mount, flag(exec_flags::USER_MOUNT));
        prop_assert_eq!(x.unjudged, flag(exec_flags::UNJUDGED));
        prop_assert_eq!(x.args_truncated, flag(exec_flags::ARGS_TRUNCATED));
        prop_assert_eq!(x.undecided_set, flag(exec_flags::UNDECIDED).then_some(set));
        prop_assert_eq!(&x.path, &cut(&e.path));
        let comm = cut(&e.header.comm);
        prop_assert_eq!(event.header.comm.as_str(), comm.as_str());
        if used == joined.len() {
            let want: Vec<String> = args.iter().map(|a| shown(a)).collect();
            prop_assert_eq!(&*x.args, want.as_slice());
        }
        match event.header.verdict {
            Verdict::Violation { set: s, rule: r, .. } => {
                prop_assert!(violation);
                prop_assert_eq!((s, r), (set, index));
            }
            Verdict::Observed => prop_assert!(!violation),
            Verdict::Learned { .. } => prop_assert!(false, "no LEARNED record was generated"),
        }
        let data = crate::cloudevents::data::Member::Exec(x.into());
        prop_assert!(serde_json::to_value(&data).is_ok());
    }

    #[test]
    fn connect_records_keep_the_destination_by_family(
        v4 in any::<bool>(),
        addr in any::<[u8; 16]>(),
        dport in any::<u16>(),
        hook in 0u32..4,
        protocol in any::<u16>(),
    ) {
        let c = ConnectEvent {
            header: header(kind::CONNECT, false, 0, b"x"),
            family: if v4 { libc::AF_INET as u16 } else { libc::AF_INET6 as u16 },
            protocol,
            dport,
            daddr: addr,
            hook,
            ..Default::default()
        };
        let event = decode(&as_bytes(&c)).expect("a whole connect record decodes");
        let Body::Connect(x) = &event.body else { panic!("not a connect") };
        if hook == agent_common::connect_hook::SOCKET {
            prop_assert_eq!((x.daddr, x.dport), (None, None));
        } else {
            let daddr = x.daddr.expect("an address hook has a destination");
            if v4 {
                prop_assert_eq!(daddr, std::net::IpAddr::from([addr[0], addr[1], addr[2], addr[3]]));
            } else {
                let v6 = std::net::Ipv6Addr::from(addr);
                prop_assert_eq!(daddr, v6.to_ipv4_mapped().map_or(std::net::IpAddr::V6(v6), std::net::IpAddr::V4));
            }
            prop_assert_eq!(x.ipv4, daddr.is_ipv4());
            prop_assert_eq!(x.dport, Some(dport));
        }
    }

    #[test]
    fn wx_reasons_map_to_their_booleans(
        reason in any::<u32>(),
        syscall in 0u32..16,
        extra in any::<u32>(),
        exe in prop::collection::vec(1u8..=255, 0..PATH_LEN + 8),
    ) {
        let mut w = agent_common::WxRecord {
            event: WxEvent {
                header: header(kind::WX, true, 0, b"x"),
                syscall,
                reason,
                extra,
                ..Default::default()
            },
            exe_len: exe.len() as u32,
            _pad: 0,
            exe: [0; PATH_LEN],
        };
        let kept = exe.len().min(PATH_LEN);
        w.exe[..kept].copy_from_slice(&exe[..kept]);
        let event = decode(&as_bytes(&w)).expect("a whole wx record decodes");
        let Body::Wx(x) = &event.body else { panic!("not a wx record") };
        prop_assert_eq!(x.write_exec, reason & wx_reason::WRITE_EXEC != 0);
        prop_assert_eq!(x.read_implies_exec, reason & wx_reason::READ_IMPLIES_EXEC != 0);
        prop_assert_eq!(x.shared_exec, reason & wx_reason::SHARED_EXEC != 0);
        prop_assert_eq!(x.foreign_write, reason & wx_reason::FOREIGN_WRITE != 0);
        prop_assert_eq!(x.compat, reason & wx_reason::COMPAT != 0);
        prop_assert_eq!(x.exec_stack, reason & wx_reason::EXEC_STACK != 0);
        prop_assert_eq!(x.unjudged, reason & wx_reason::UNJUDGED != 0);
        prop_assert_eq!(x.extra, extra);
        // The executable recorded at exec: as long as it was, cut at the buffer's end.
        let expected = (!exe.is_empty()).then(|| crate::event::text(&exe[..kept]));
        prop_assert_eq!(x.exe_path.clone(), expected);
    }
}
