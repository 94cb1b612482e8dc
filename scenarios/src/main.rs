//! `vigil-scenario`: the behaviours Vigil's kernel tests and benchmarks trigger, each in a
//! process of its own so that a test can place it in a staged cgroup.
//!
//! Exit code 77 means the kernel lacks a feature the scenario needs (the test then says
//! which and skips).
mod bench;
mod connect;
mod egress;
mod exec;
mod held;
mod memory;
mod runtime;
mod userns;

use std::process::ExitCode;

pub const UNSUPPORTED: u8 = 77;

fn usage() -> ExitCode {
    eprintln!(
        "usage: vigil-scenario <scenario> [args]\n\
         exec:    memfd-exec | deleted-exec PATH | exec-at DIR NAME ARGS... | exec-each DIR |\n\
         \x20        write-marker PATH |\n\
         \x20        memfd-exec-marker PATH | race-exec-args COUNT | print-args ARG |\n\
         \x20        userns-exec plain PROGRAM ARGS... | userns-exec bind SOURCE TARGET ARGS... |\n\
         \x20        userns-exec tmpfs DIR SOURCE NAME ARGS... | userns-exec detached DIR NAME ARGS... |\n\
         \x20        userns-exec pivot DIR PROGRAM ARGS... |\n\
         \x20        memfd-script-marker PATH | move-to CGROUP_DIR [PROGRAM ARGS...] |\n\
         \x20        wait-then-move-to GO_FILE CGROUP_DIR [PROGRAM ARGS...] |\n\
         \x20        runtime-handover MODE CGROUP_DIR PROGRAM ARGS... (move move-unshare\n\
         \x20        move-fork move-fork-unshare clone-into clone-into-unshare policed-mover\n\
         \x20        self-move) |\n\
         \x20        runtime-handover-early MODE CGROUP_DIR PROGRAM ARGS... (move move-unshare\n\
         \x20        move-forked) | exec-held PROGRAM ARGS...\n\
         connect: tcp-connect ADDR | tcp-listen ADDR | udp-connect ADDR | io-uring-connect ADDR |\n\
         \x20        race-connect ADDR_A ADDR_B COUNT\n\
         egress:  send METHOD ADDR (tcp-connect udp-connect tcp-fastopen udp-sendto\n\
         \x20        udplite-sendto udp-sendmsg udp-sendmmsg tcp-connect-unfaulted\n\
         \x20        udp-sendto-unfaulted uring-tcp-connect uring-udp-connect\n\
         \x20        uring-udp-sendmsg compat-udp-connect raw-socket)\n\
         memory:  mmap-rwx | mprotect-rwx | mprotect-rwx-outcome | pkey-mprotect-rwx | rie-mmap-rw |\n\
         \x20        mmap-file-rx PATH | mprotect-file-exec PATH | flood-mmap COUNT | flood-mmap-for SECONDS |\n\
         \x20        wait-then-mmap-rwx GO_FILE | mmap-rwx-per-line |\n\
         \x20        rwx-after-leader-exit | exec-into PATH ARGS... | memfd-dual-map |\n\
         \x20        shm-dual-map | shmat-exec | shmat-rw | ptrace-poke | traceme-poke [CGROUP] | vm-writev | vm-readv |\n\
         \x20        proc-mem-write | proc-mem-read | refused-rwx | compat-mmap-rwx |\n\
         \x20        compat-mmap-rw | compat-mprotect-rwx | userfaultfd syscall|device |\n\
         \x20        compat-mmap-file-exec|compat-old-mmap-file-exec|\n\
         \x20        compat-old-mmap-unfaulted-file-exec|compat-mprotect-file-exec PATH\n\
         bench:   bench-exec N | bench-connect N | bench-udp N | bench-mmap N | bench-mmap-rw N |\n\
         \x20        bench-syscall N | bench-udp-paced RATE SECONDS | bench-udp-same COUNT"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((name, rest)) = args.split_first() else {
        return usage();
    };
    let rest: Vec<&str> = rest.iter().map(String::as_str).collect();
    let result = match (name.as_str(), rest.as_slice()) {
        ("memfd-exec", []) => exec::memfd_exec(),
        ("write-marker", [path]) => exec::write_marker(path),
        ("memfd-exec-marker", [path]) => exec::memfd_exec_marker(path),
        ("memfd-script-marker", [path]) => exec::memfd_script_marker(path),
        ("move-to", [dir, then @ ..]) => exec::move_to(dir, then),
        ("wait-then-move-to", [go, dir, then @ ..]) => exec::wait_then_move_to(go, dir, then),
        ("runtime-handover", [mode, dir, program, args @ ..]) => {
            runtime::handover(mode, dir, program, args)
        }
        ("runtime-handover-early", [mode, dir, program, args @ ..]) => {
            runtime::handover_early(mode, dir, program, args)
        }
        ("exec-held", [program, args @ ..]) => held::exec_held(program, args),
        ("deleted-exec", [path]) => exec::deleted_exec(path),
        ("exec-at", [dir, name, args @ ..]) => exec::exec_at(dir, name, args),
        ("exec-each", [dir]) => exec::exec_each(dir),
        ("userns-exec", [mode, rest @ ..]) => userns::run(mode, rest),
        ("tcp-connect", [addr]) => connect::tcp(addr),
        ("tcp-listen", [addr]) => connect::listen(addr),
        ("udp-connect", [addr]) => connect::udp(addr),
        ("io-uring-connect", [addr]) => connect::io_uring(addr),
        ("race-connect", [a, b, count]) => connect::race(a, b, count),
        ("send", [method, addr]) => egress::send(method, addr),
        ("mmap-rwx", []) => memory::mmap_rwx(),
        ("mprotect-rwx", []) => memory::mprotect_rwx(),
        ("mprotect-rwx-outcome", []) => memory::mprotect_rwx_outcome(),
        ("pkey-mprotect-rwx", []) => memory::pkey_mprotect_rwx(),
        ("rie-mmap-rw", []) => memory::read_implies_exec_rw(),
        ("mmap-file-rx", [path]) => memory::mmap_file_rx(path),
        ("mprotect-file-exec", [path]) => memory::mprotect_file_exec(path),
        ("userfaultfd", [how]) => memory::userfaultfd(how),
        ("flood-mmap", [count]) => memory::flood(count),
        ("flood-mmap-for", [seconds]) => memory::flood_for(seconds),
        ("race-exec-args", [count]) => exec::race_exec_args(count),
        ("print-args", [arg]) => exec::print_args(arg),
        ("wait-then-mmap-rwx", [path]) => memory::wait_then_rwx(path),
        ("mmap-rwx-per-line", []) => memory::rwx_per_line(),
        ("rwx-after-leader-exit", []) => memory::rwx_after_leader_exit(),
        ("memfd-dual-map", []) => memory::memfd_dual_map(),
        ("shm-dual-map", []) => memory::shm_dual_map(),
        ("shmat-exec", []) => memory::shmat(true),
        ("shmat-rw", []) => memory::shmat(false),
        ("ptrace-poke", []) => memory::ptrace_poke(),
        ("traceme-poke", []) => memory::traceme_poke(None),
        ("traceme-poke", [cgroup]) => memory::traceme_poke(Some(cgroup)),
        ("vm-writev", []) => memory::vm_copy(true),
        ("vm-readv", []) => memory::vm_copy(false),
        ("proc-mem-write", []) => memory::proc_mem(true),
        ("compat-proc-mem-write", []) => memory::compat_proc_mem_write(),
        ("uring-proc-mem-write", []) => memory::uring_proc_mem_write(),
        ("proc-mem-read", []) => memory::proc_mem(false),
        ("refused-rwx", []) => memory::refused_rwx(),
        ("compat-mmap-rwx", []) => memory::compat_wx(memory::CompatCall::Mmap2, 7),
        ("compat-mmap-rw", []) => memory::compat_wx(memory::CompatCall::Mmap2, 3),
        ("compat-old-mmap-rwx", []) => memory::compat_wx(memory::CompatCall::OldMmap, 7),
        ("compat-old-mmap-rw", []) => memory::compat_wx(memory::CompatCall::OldMmap, 3),
        ("compat-mprotect-rwx", []) => memory::compat_wx(memory::CompatCall::Mprotect, 7),
        ("compat-mmap-file-exec", [path]) => {
            memory::compat_file_exec(memory::CompatCall::Mmap2, path)
        }
        ("compat-old-mmap-file-exec", [path]) => {
            memory::compat_file_exec(memory::CompatCall::OldMmap, path)
        }
        ("compat-old-mmap-unfaulted-file-exec", [path]) => {
            memory::compat_file_exec(memory::CompatCall::OldMmapUnfaulted, path)
        }
        ("compat-mprotect-file-exec", [path]) => {
            memory::compat_file_exec(memory::CompatCall::Mprotect, path)
        }
        ("exec-into", [path, args @ ..]) => memory::exec_into(path, args),
        ("bench-exec", [n]) => bench::exec(n),
        ("bench-connect", [n]) => bench::connect(n),
        ("bench-mmap", [n]) => bench::mmap(n),
        ("bench-mmap-rw", [n]) => bench::mmap_rw(n),
        ("bench-udp", [n]) => bench::udp(n),
        ("bench-syscall", [n]) => bench::syscall(n),
        ("bench-udp-paced", [rate, seconds]) => bench::udp_paced(rate, seconds),
        ("bench-udp-same", [count]) => bench::udp_same(count),
        _ => return usage(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Unsupported(why)) => {
            eprintln!("unsupported: {why}");
            ExitCode::from(UNSUPPORTED)
        }
        Err(Failure::Error(why)) => {
            eprintln!("{name}: {why}");
            ExitCode::FAILURE
        }
        Err(Failure::Refused(errno)) => {
            eprintln!("{name}: {}", std::io::Error::from_raw_os_error(errno));
            ExitCode::FAILURE
        }
    }
}

#[derive(Debug)]
pub enum Failure {
    /// The kernel lacks something this scenario needs.
    Unsupported(String),
    Error(String),
    /// A call failed with this errno (what an egress test may expect).
    Refused(i32),
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        Self::Error(e.to_string())
    }
}

pub type Outcome = Result<(), Failure>;

/// The last OS error, with what was being done.
pub fn os_error(what: &str) -> Failure {
    Failure::Error(format!("{what}: {}", std::io::Error::last_os_error()))
}

pub fn parse_count(s: &str) -> Result<usize, Failure> {
    s.parse()
        .map_err(|_| Failure::Error(format!("not a count: {s}")))
}
