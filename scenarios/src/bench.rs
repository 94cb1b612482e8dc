//! Tight loops for `cargo xtask bench`; each prints `ns_per_op=<float>`.
use std::{
    net::{TcpListener, TcpStream},
    process::Command,
    time::Instant,
};

use crate::{Failure, Outcome, connect::close_with_reset, memory::rwx_round_trip, parse_count};

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
