//! Tight loops for `cargo xtask bench`; each prints `ns_per_op=<float>`.
use std::{
    net::{TcpListener, TcpStream, UdpSocket},
    process::Command,
    time::{Duration, Instant},
};

use crate::{
    Failure, Outcome,
    connect::close_with_reset,
    memory::{rw_round_trip, rwx_round_trip},
    parse_count,
};

fn report(n: usize, start: Instant) {
    println!(
        "ns_per_op={:.1}",
        start.elapsed().as_nanos() as f64 / n.max(1) as f64
    );
}

/// fork + exec of /bin/true, waited for.
pub fn exec(n: &str) -> Outcome {
    let n = parse_count(n)?;
    let start = Instant::now();
    for _ in 0..n {
        let status = Command::new("/bin/true").status()?;
        if !status.success() {
            return Err(Failure::Error(format!("/bin/true: {status}")));
        }
    }
    report(n, start);
    Ok(())
}

/// TCP connect to a loopback listener, accepted in the same thread before the next
/// connect, so the accept backlog never overflows into SYN retransmits.
pub fn connect(n: &str) -> Outcome {
    let n = parse_count(n)?;
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let start = Instant::now();
    for _ in 0..n {
        let stream = TcpStream::connect(addr)?;
        let (accepted, _) = listener.accept()?;
        close_with_reset(stream);
        drop(accepted);
    }
    report(n, start);
    Ok(())
}

/// mmap of an RWX page + munmap.
pub fn mmap(n: &str) -> Outcome {
    let n = parse_count(n)?;
    let start = Instant::now();
    for _ in 0..n {
        rwx_round_trip()?;
    }
    report(n, start);
    Ok(())
}

/// Plain RW mmap of a page + munmap: no W^X, what the agent must pass over cheaply.
pub fn mmap_rw(n: &str) -> Outcome {
    let n = parse_count(n)?;
    let start = Instant::now();
    for _ in 0..n {
        rw_round_trip()?;
    }
    report(n, start);
    Ok(())
}

/// A UDP datagram sent with `sendto` to a loopback socket, received before the next, so the
/// receiver's queue never overflows and drops.
pub fn udp(n: &str) -> Outcome {
    let n = parse_count(n)?;
    let receiver = UdpSocket::bind("127.0.0.1:0")?;
    let to = receiver.local_addr()?;
    let sender = UdpSocket::bind("127.0.0.1:0")?;
    // A datagram lost on loopback fails the run instead of hanging it.
    receiver.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut buf = [0u8; 64];
    let start = Instant::now();
    for _ in 0..n {
        sender.send_to(b"vigil-bench", to)?;
        receiver.recv_from(&mut buf)?;
    }
    report(n, start);
    Ok(())
}

/// `getppid`, a system call none of the agent's programs is about: what attaching them
/// costs everything else a node runs.
pub fn syscall(n: &str) -> Outcome {
    let n = parse_count(n)?;
    let start = Instant::now();
    for _ in 0..n {
        // SAFETY: getppid has no arguments and cannot fail.
        std::hint::black_box(unsafe { libc::getppid() });
    }
    report(n, start);
    Ok(())
}

/// One UDP datagram every 1/RATE s for SECONDS s (0: as fast as it goes), each to the next of
/// 64,000 loopback ports from 1024: each destination is a violation of its own, and the kernel
/// holds back a flood only past 8 a second of the same one; prints `sent=<n>`. For the alert
/// latency and sink throughput benchmarks.
pub fn udp_paced(rate: &str, seconds: &str) -> Outcome {
    let rate = parse_count(rate)?;
    let seconds = parse_count(seconds)?;
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    let start = Instant::now();
    let end = start + Duration::from_secs(seconds as u64);
    let period = (rate > 0).then(|| Duration::from_secs(1) / rate as u32);
    let mut next = start;
    let mut sent = 0u64;
    while Instant::now() < end {
        let port = 1024 + (sent % 64_000) as u16;
        // Nothing listens there: the datagram is the violation, its fate does not matter.
        let _ = socket.send_to(b"vigil-bench", ("127.0.0.1", port));
        sent += 1;
        if let Some(period) = period {
            next += period;
            let now = Instant::now();
            if next > now {
                std::thread::sleep(next - now);
            }
        }
    }
    println!("sent={sent}");
    Ok(())
}

/// COUNT UDP datagrams to one loopback port, as fast as they go: COUNT identical violations,
/// for the aggregation benchmark; prints `sent=<n>`.
pub fn udp_same(count: &str) -> Outcome {
    let count = parse_count(count)?;
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    for _ in 0..count {
        // Nothing listens there: the datagram is the violation, its fate does not matter.
        let _ = socket.send_to(b"vigil-bench", ("127.0.0.1", 1023));
    }
    println!("sent={count}");
    Ok(())
}
