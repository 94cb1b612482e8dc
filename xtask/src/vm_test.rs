//! `cargo xtask vm-test [--kernel SERIES]... [--all] [-- FILTER...]`: the kernel and
//! enforcement tests on Debian's kernels, each booted under QEMU (TCG) with this host's root
//! shared over 9p (`guest.rs`), and one table of what each kernel made of them.
//!
//! The kernels come from Debian's archive through an apt configuration of its own under
//! `target/vm/apt` (the host's sources and package lists are left alone): the suites from
//! bullseye (5.10) to sid, from the mirror the host's own sources name. A series (`6.1`) is its
//! newest package; `--all` is every series they hold. Each kernel's packages and guest files
//! are kept under `target/vm/<series>/`.
//!
//! In each guest: `vigil doctor` (which kernel features the agent found, and each program's
//! verification: time and instructions), then the kernel test binaries of this build.
use std::{
    collections::BTreeMap,
    fs,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{
    guest,
    test::{Counts, test_executables},
    util::{self, run_checked, workspace_root},
};

#[derive(clap::Args)]
pub struct Options {
    /// A kernel series to boot (5.10, 6.1, 6.12, 7.3, ...; `newest`: the newest Debian
    /// offers); repeatable. Without it and without --all: 6.1, Debian 12's own.
    #[arg(long = "kernel", value_name = "SERIES")]
    pub kernels: Vec<String>,
    /// Every series Debian's suites hold.
    #[arg(long)]
    pub all: bool,
    /// Boot with the binaries an earlier `stage` left in `target/vm/bin`, building nothing
    /// (`cargo xtask test` stages them, then boots beside the host's tests).
    #[arg(long, hide = true)]
    pub staged: bool,
    /// How many kernels boot at once (each keeps one host core busy).
    #[arg(long, default_value_t = 1)]
    pub jobs: usize,
    /// Boot without BPF LSM (Debian's default LSMs without `bpf`, as most distributions
    /// boot): exec and W^X are then enforced by the tracepoints after the act, under each
    /// kernel's own preemption model. The prevention tests skip, naming the reason.
    #[arg(long)]
    pub without_bpf_lsm: bool,
    /// Only tests whose names contain one of these (passed to each test binary).
    #[arg(last = true)]
    pub filters: Vec<String>,
}

/// The prevention tests (BPF LSM), which the host's kernel cannot run: `cargo xtask test`
/// runs them on these kernels.
pub const PREVENTION_KERNELS: [&str; 3] = ["5.10", "6.12", "newest"];
/// The oldest kernel: `cargo xtask test` also runs there the tests that go through its
/// fallbacks (a task's cgroup ancestors read from its cgroup, the memory areas' tree walked).
pub const OLDEST: &str = "5.10";
pub const FALLBACK_TESTS: [&str; 3] = [
    "memory_the_kernel_maps_at_exec_and_files_made_executable_later_are_judged",
    "deep_bindings_are_enforced_or_refused_by_name",
    "descendants_of_the_filtered_cgroup_are_traced",
];
/// What only a kernel that preempts kernel code can show (lazy preemption, Debian's default
/// from 6.16; the host's kernel is `PREEMPT_NONE`): `cargo xtask test` runs it on the newest.
pub const PREEMPTION_TESTS: [&str; 1] = ["allowed_and_denied_execs_sharing_one_cpu"];
/// What only a kernel whose BPF LSM programs read registers shows: raw `sys_enter` attached
/// by the first set that denies 32-bit calls (5.15 and newer) and raw `sys_exit` by the first
/// set that kills (where `bprm_execve`'s fexit program checks the exec's return, 5.17 and
/// newer), each added by a reload and holding at the next call (`agent/src/ebpf/late.rs`).
/// `cargo xtask test` runs them on the newest.
pub const REGISTER_TESTS: [&str; 2] = [
    "every_32_bit_call_is_a_violation_where_compat_syscalls_are_denied",
    "kill_refuses_and_kills_on_every_path",
];
pub const PREVENTION_TESTS: [&str; 7] = [
    "refuses_an_exec",
    "allowlist_under_deny",
    "refuses_the_exec_first",
    "refuses_a_writable",
    "doctor_reports_this_kernel",
    // Scripts decided at every level by `bprm_check_security` under Alert, and foreign writes
    // by system call refused on the LSM hooks (5.15 and newer; skipped with its reason on 5.10).
    "a_denied_script_under_alert",
    "foreign_writes_by_system_call_are_refused_before_the_act",
];

/// The suites searched for kernels, oldest first.
const SUITES: [&str; 7] = [
    "bullseye",
    "bookworm",
    "bookworm-backports",
    "trixie",
    "trixie-backports",
    "forky",
    "sid",
];
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";
/// The test binaries that load the agent's programs and enforce with them.
const KERNEL_TESTS: [&str; 7] = [
    "kernel",
    "prevent",
    "exec_decision",
    "exec_identity",
    "enforce",
    "egress",
    "flood",
];
/// How long a guest running the whole suite may take (a filtered run has the guest's default).
const WHOLE_SUITE_TIMEOUT: Duration = Duration::from_secs(3 * 3600);
/// BPF LSM on, for the programs that need it, with the LSMs Debian enables by default.
const LSM: &str = "lsm=lockdown,capability,landlock,yama,apparmor,bpf";
/// The same without BPF LSM: the tracepoint path only.
const LSM_WITHOUT_BPF: &str = "lsm=lockdown,capability,landlock,yama,apparmor";

/// What one kernel made of the run.
struct Outcome {
    series: String,
    package: String,
    release: Option<String>,
    booted: bool,
    programs_refused: Vec<String>,
    largest: Vec<(String, u32)>,
    counts: Counts,
    /// Tests that passed by skipping (`skipped TEST: REASON` on their standard error): a
    /// feature this kernel lacks.
    skips: Vec<String>,
    exit: Option<i32>,
    took: Duration,
    /// Whether the guest was booted with BPF LSM.
    bpf_lsm: bool,
}

pub fn run(options: &Options) -> Result<()> {
    util::require_root("vm-test")?;
    // QEMU, cpio and the eBPF toolchain come from setup: on a fresh machine `vm-test` is
    // often the first command run.
    crate::setup::run()?;
    let apt = Apt::new(&workspace_root().join("target/vm/apt"))?;
    let available = apt.kernels()?;
    let wanted: Vec<String> = if options.all {
        available.iter().map(|k| k.series.clone()).collect()
    } else if options.kernels.is_empty() {
        vec!["6.1".to_owned()]
    } else {
        options
            .kernels
            .iter()
            .map(|k| match (k.as_str(), available.last()) {
                ("newest", Some(newest)) => newest.series.clone(),
                _ => k.clone(),
            })
            .collect()
    };
    let binaries = if options.staged { staged()? } else { stage()? };
    // Fetched and prepared one by one (one apt cache), then booted `--jobs` at a time.
    let mut prepared = Vec::new();
    for series in &wanted {
        let Some(kernel) = available.iter().find(|k| k.series == *series) else {
            bail!(
                "Debian's suites hold no kernel {series}; they hold {}",
                available
                    .iter()
                    .map(|k| k.series.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        };
        prepared.push(prepare(
            &apt,
            kernel,
            &binaries,
            &options.filters,
            !options.without_bpf_lsm,
        )?);
    }
    let jobs = options.jobs.max(1);
    let outcomes = boot_all(prepared, jobs)?;
    println!("\n{}", table(&outcomes));
    let failed: Vec<&str> = outcomes
        .iter()
        .filter(|o| !o.passed())
        .map(|o| o.series.as_str())
        .collect();
    if !failed.is_empty() {
        bail!("the kernel tests failed on {}", failed.join(", "));
    }
    Ok(())
}

/// Boots every prepared kernel, `jobs` at a time (each QEMU keeps one host core busy); the
/// outcomes in the order given. With more than one at a time, each console line is prefixed
/// with its series.
fn boot_all(prepared: Vec<Prepared>, jobs: usize) -> Result<Vec<Outcome>> {
    let total = prepared.len();
    let queue = std::sync::Mutex::new(
        prepared
            .into_iter()
            .enumerate()
            .collect::<std::collections::VecDeque<_>>(),
    );
    let results = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..jobs.min(total) {
            scope.spawn(|| {
                loop {
                    // The lock is released at the end of this statement, before the guest
                    // boots.
                    let next = queue.lock().expect("queue").pop_front();
                    let Some((index, kernel)) = next else { break };
                    let outcome = one_kernel(&kernel, jobs > 1);
                    results.lock().expect("results").push((index, outcome));
                }
            });
        }
    });
    let mut results = results.into_inner().expect("results");
    results.sort_by_key(|(index, _)| *index);
    results.into_iter().map(|(_, outcome)| outcome).collect()
}

/// Where the guests' binaries are copied: what the guest runs is never rewritten by a build
/// on the host while it runs.
fn bin_dir() -> PathBuf {
    workspace_root().join("target/vm/bin")
}

/// Builds the agent, the scenarios and the kernel test binaries, and copies them into
/// [`bin_dir`]; gives the test binaries' paths there.
pub fn stage() -> Result<Vec<PathBuf>> {
    crate::util::step("cargo build -p agent -p scenarios", || {
        crate::build::build(false).map(drop)
    })?;
    let dir = bin_dir();
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let debug = workspace_root().join("target/debug");
    let copy = |from: &Path, name: &str| -> Result<PathBuf> {
        let to = dir.join(name);
        // A new file, not the old one rewritten: a guest still running the old keeps it.
        let _ = fs::remove_file(&to);
        fs::copy(from, &to)
            .with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
        Ok(to)
    };
    copy(&debug.join("vigil"), "vigil")?;
    copy(&debug.join("vigil-scenario"), "vigil-scenario")?;
    KERNEL_TESTS
        .iter()
        .zip(test_executables(&KERNEL_TESTS)?)
        .map(|(name, executable)| copy(&executable, name))
        .collect()
}

/// The test binaries an earlier [`stage`] left.
fn staged() -> Result<Vec<PathBuf>> {
    let dir = bin_dir();
    ["vigil", "vigil-scenario"]
        .iter()
        .chain(KERNEL_TESTS.iter())
        .map(|name| dir.join(name))
        .map(|path| {
            if path.is_file() {
                Ok(path)
            } else {
                bail!("{} is missing: nothing was staged", path.display())
            }
        })
        .collect::<Result<Vec<_>>>()
        .map(|paths| paths[2..].to_vec())
}

impl Outcome {
    /// Gathers what the table shows from one line of the guest's console.
    fn read_line(&mut self, line: &str) {
        self.counts.add_line(line);
        if let Some(skip) = line.strip_prefix("skipped ") {
            self.skips.push(skip.to_owned());
        }
        // The console may put terminal escapes before the guest's first line.
        if let Some((_, rest)) = line.split_once("guest: Linux ") {
            self.release = rest
                .split_whitespace()
                .next()
                .map(|r| r.trim_end_matches(','))
                .map(str::to_owned);
        }
        if let Some(rest) = line.strip_prefix("FAIL program ") {
            self.programs_refused
                .push(rest.split_whitespace().next().unwrap_or(rest).to_owned());
        }
        // A guest booted with BPF LSM must attach prevention; one booted without must not
        // find it (else the run tests the wrong path).
        let prevention_said = if self.bpf_lsm { "no   " } else { "ok   " };
        if line
            .strip_prefix(prevention_said)
            .is_some_and(|rest| rest.starts_with("prevention (BPF LSM)"))
        {
            self.programs_refused.push(line.to_owned());
        }
        if let Some(rest) = line.strip_prefix("ok   program ") {
            let name = rest
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_owned();
            if let Some(count) = rest
                .split(", ")
                .find_map(|part| part.strip_suffix(" instructions verified"))
                .and_then(|n| n.trim().parse().ok())
            {
                self.largest.push((name, count));
            }
        }
    }

    fn passed(&self) -> bool {
        self.booted
            && self.exit == Some(0)
            && self.counts.failed == 0
            && self.programs_refused.is_empty()
    }
}

/// A kernel ready to boot: its guest files and the script the guest runs.
struct Prepared {
    series: String,
    package: String,
    guest: guest::Guest,
    script: PathBuf,
    bpf_lsm: bool,
}

/// Where a run of `series` keeps its kernel, script and output. A run without BPF LSM has a
/// directory of its own: `cargo xtask test` boots the newest kernel both ways at once, in two
/// lanes, and one run's output directory must not be the other's (CI run of 2026-12-04:
/// `cannot create /.out/rc: Directory nonexistent` after every test had passed).
fn run_dir(series: &str, bpf_lsm: bool) -> PathBuf {
    let name = if bpf_lsm {
        series.to_owned()
    } else {
        format!("{series}-without-bpf-lsm")
    };
    workspace_root().join("target/vm").join(name)
}

fn prepare(
    apt: &Apt,
    kernel: &Kernel,
    binaries: &[PathBuf],
    filters: &[String],
    bpf_lsm: bool,
) -> Result<Prepared> {
    let Kernel {
        series,
        package,
        root,
    } = kernel;
    let dir = run_dir(series, bpf_lsm);
    println!("==> vm-test: preparing Linux {series} ({package})");
    let mut guest = guest::prepare_kernel(&dir, package, &|| apt.command("apt-get"), *root)?;
    // The whole suite runs about 55 tests, some minutes each on the slowest kernels under
    // emulation; a filtered run keeps the guest's usual bound.
    if filters.is_empty() {
        guest.set_timeout(WHOLE_SUITE_TIMEOUT);
    }
    let script = script(&dir, binaries, filters, bpf_lsm)?;
    Ok(Prepared {
        series: series.to_owned(),
        package: package.to_owned(),
        guest,
        script,
        bpf_lsm,
    })
}

fn one_kernel(kernel: &Prepared, prefixed: bool) -> Result<Outcome> {
    let started = Instant::now();
    let series = &kernel.series;
    println!("==> vm-test: Linux {series} ({})", kernel.package);
    let mut outcome = Outcome {
        series: series.to_owned(),
        package: kernel.package.clone(),
        release: None,
        booted: false,
        programs_refused: Vec::new(),
        largest: Vec::new(),
        counts: Counts::default(),
        skips: Vec::new(),
        exit: None,
        took: Duration::ZERO,
        bpf_lsm: kernel.bpf_lsm,
    };
    let prefix = if prefixed {
        format!("[{series}] ")
    } else {
        String::new()
    };
    // Emulation oopses early in about one boot in ten here: a guest that did not come up is
    // booted again, twice at most.
    for attempt in 1..=3 {
        let lsm = if kernel.bpf_lsm { LSM } else { LSM_WITHOUT_BPF };
        let mut qemu = kernel.guest.command_with(&kernel.script, lsm)?;
        read_console(&mut qemu, &mut outcome, &prefix)?;
        if kernel.guest.booted() {
            outcome.booted = true;
            break;
        }
        println!("vm-test: Linux {series} did not reach its second stage (boot {attempt} of 3)");
        outcome = Outcome {
            counts: Counts::default(),
            skips: Vec::new(),
            ..outcome
        };
    }
    outcome.exit = kernel.guest.exit_code().ok();
    outcome.took = started.elapsed();
    outcome
        .largest
        .sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    outcome.largest.truncate(3);
    Ok(outcome)
}

/// Echoes the guest's console and gathers what the table shows.
fn read_console(qemu: &mut Command, outcome: &mut Outcome, prefix: &str) -> Result<()> {
    let mut child = qemu
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot start qemu-system-x86_64 (cargo xtask setup installs it)")?;
    let stdout = child.stdout.take().context("piped stdout")?;
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        let line = line.trim_end_matches('\r');
        println!("{prefix}{line}");
        outcome.read_line(line);
    }
    child.wait()?;
    Ok(())
}

/// The guest's work: the doctor, then each test binary, all of them whatever one did.
fn script(dir: &Path, binaries: &[PathBuf], filters: &[String], bpf_lsm: bool) -> Result<PathBuf> {
    let root = workspace_root();
    let debug = bin_dir();
    let ci = std::env::var("CI").unwrap_or_default();
    let filters = filters
        .iter()
        .map(|f| format!("'{}'", f.replace('\'', "'\\''")))
        .collect::<Vec<_>>()
        .join(" ");
    let mut text = format!(
        r#"cd '{root}'
{expect_lsm}export CI='{ci}' VIGIL_BIN='{debug}/vigil' VIGIL_SCENARIO_BIN='{debug}/vigil-scenario'
# Emulation: the tests' liveness bounds stretch (loading the programs alone takes a minute).
export VIGIL_TEST_PACE=5
export TMPDIR=/run/vigil-tmp
mkdir -p "$TMPDIR"
echo "guest: LSMs $(cat /sys/kernel/security/lsm 2>/dev/null)"
'{debug}/vigil' doctor
echo "vm-test: vigil doctor exited $?"
rc=0
"#,
        root = root.display(),
        debug = debug.display(),
        expect_lsm = if bpf_lsm {
            "export VIGIL_EXPECT_BPF_LSM=1\n"
        } else {
            ""
        },
    );
    for binary in binaries {
        text.push_str(&format!(
            "'{}' --test-threads=1 {filters} || rc=1\n",
            binary.display()
        ));
    }
    text.push_str("exit $rc\n");
    let path = dir.join("kernel-tests.sh");
    fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

/// One line per kernel; then each skip with its reason (a skipped test passed as far as the
/// test binary counts, so it is moved from passed to skipped here).
fn table(outcomes: &[Outcome]) -> String {
    let mut lines = vec![format!(
        "{:<7} {:<34} {:>6} {:>6} {:>7} {:>7}  {}",
        "series",
        "kernel",
        "passed",
        "failed",
        "skipped",
        "time",
        "programs refused / most instructions verified"
    )];
    for o in outcomes {
        let kernel = if !o.booted {
            "did not boot".to_owned()
        } else {
            o.release.clone().unwrap_or_else(|| o.package.clone())
        };
        let programs = if o.programs_refused.is_empty() {
            o.largest
                .iter()
                .map(|(name, n)| format!("{name} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        } else {
            format!("REFUSED: {}", o.programs_refused.join(", "))
        };
        let skipped = o.skips.len() as u64;
        let series = if o.bpf_lsm {
            o.series.clone()
        } else {
            format!("{} -bpf", o.series)
        };
        lines.push(format!(
            "{:<7} {:<34} {:>6} {:>6} {:>7} {:>6}s  {}",
            series,
            kernel,
            o.counts.passed.saturating_sub(skipped),
            o.counts.failed,
            o.counts.ignored + skipped,
            o.took.as_secs(),
            programs
        ));
    }
    for o in outcomes {
        for skip in &o.skips {
            lines.push(format!("{}: skipped {skip}", o.series));
        }
    }
    lines.join("\n")
}

/// apt with a configuration of its own: its sources, lists, cache and an empty status.
struct Apt {
    options: Vec<String>,
}

impl Apt {
    fn new(dir: &Path) -> Result<Self> {
        for sub in ["lists/partial", "cache/archives/partial"] {
            fs::create_dir_all(dir.join(sub))?;
        }
        let mirror = host_mirror()?;
        let sources: String = SUITES
            .iter()
            .map(|suite| format!("deb [signed-by={KEYRING}] {mirror} {suite} main\n"))
            .collect();
        let list = dir.join("sources.list");
        fs::write(&list, sources)?;
        let status = dir.join("status");
        if !status.exists() {
            fs::write(&status, "")?;
        }
        let options = [
            format!("Dir::Etc::SourceList={}", list.display()),
            "Dir::Etc::SourceParts=/nonexistent".to_owned(),
            format!("Dir::State::Lists={}", dir.join("lists").display()),
            format!("Dir::State::Status={}", status.display()),
            format!("Dir::Cache={}", dir.join("cache").display()),
            "APT::Architectures=amd64".to_owned(),
        ]
        .iter()
        .flat_map(|o| ["-o".to_owned(), o.clone()])
        .collect();
        let apt = Self { options };
        // Once a day is enough: kernels are published a few times a month.
        let stamp = dir.join("updated");
        let fresh = fs::metadata(&stamp)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age < Duration::from_secs(24 * 3600));
        if !fresh {
            run_checked(apt.command("apt-get").args(["-q", "update"]))?;
            fs::write(&stamp, "")?;
        }
        Ok(apt)
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.args(&self.options);
        cmd
    }

    /// The newest image package of each series: the generic flavour (the cloud one
    /// has no 9p), unsigned where Debian builds one. A series whose every image the archive
    /// holds without its modules boots from the image alone, over virtiofs.
    fn kernels(&self) -> Result<Vec<Kernel>> {
        let images = self.package_names("linux-image-")?;
        let binaries = self.package_names("linux-binary-")?;
        let modules = self.package_names("linux-modules-")?;
        Ok(choose_kernels(&images, &binaries, &modules, |line| {
            println!("{line}");
        }))
    }

    /// The names of the packages whose names start with `prefix`.
    fn package_names(&self, prefix: &str) -> Result<Vec<String>> {
        let out = self
            .command("apt-cache")
            .args(["pkgnames", prefix])
            .output()
            .context("cannot run apt-cache")?;
        if !out.status.success() {
            bail!(
                "apt-cache pkgnames failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect())
    }
}

/// A kernel package to boot, and how the guest reaches the host's root.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Kernel {
    series: String,
    package: String,
    root: guest::Root,
}

/// For an image split into `linux-binary-V` and `linux-modules-V` (7.x and some backports),
/// the part the archive does not hold (a suite caught half-published, or never whole).
fn split_parts_missing(image: &str, binaries: &[String], modules: &[String]) -> Option<String> {
    let version = image
        .strip_prefix("linux-image-")?
        .trim_end_matches("-unsigned");
    let binary = format!("linux-binary-{version}");
    let module = format!("linux-modules-{version}");
    let has = |names: &[String], name: &str| names.iter().any(|n| n == name);
    match (has(binaries, &binary), has(modules, &module)) {
        // Not split (the image holds the kernel and its modules), or split and whole.
        (false, false) | (true, true) => None,
        (true, false) => Some(module),
        (false, true) => Some(binary),
    }
}

/// Each series' kernel: its newest whole image; else its newest image whose kernel the
/// archive holds without the modules (booted over virtiofs, which Debian builds in); a
/// series with neither is left out. What was not the newest image is said through `say`.
fn choose_kernels(
    images: &[String],
    binaries: &[String],
    modules: &[String],
    mut say: impl FnMut(String),
) -> Vec<Kernel> {
    let all = || images.iter().map(String::as_str);
    let missing = |image: &str| split_parts_missing(image, binaries, modules);
    let whole = newest_per_series(all().filter(|i| missing(i).is_none()));
    // Debian builds virtiofs and the virtio PCI transport in from 6.12.
    let virtiofs_built_in = |image: &str| {
        image_version(image)
            .is_some_and(|(series, _, _)| series_key(&series).as_slice() >= [6, 12].as_slice())
    };
    let bootable = newest_per_series(all().filter(|i| {
        missing(i).is_none_or(|m| m.starts_with("linux-modules-") && virtiofs_built_in(i))
    }));
    let found = |list: &[(String, String)], series: &str| {
        list.iter()
            .find(|(s, _)| s == series)
            .map(|(_, p)| p.clone())
    };
    let mut out = Vec::new();
    for (series, newest) in newest_per_series(all()) {
        let lacking = missing(&newest);
        let (package, root) = match (found(&whole, &series), found(&bootable, &series)) {
            (Some(chosen), _) => {
                if let Some(lacking) = &lacking {
                    say(format!(
                        "vm-test: {series}: the archive holds {newest} but not {lacking}; \
                         {chosen} instead"
                    ));
                }
                (chosen, guest::Root::NinePOverlay)
            }
            (None, Some(chosen)) => {
                say(format!(
                    "vm-test: {series}: the archive holds no linux-modules of any {series}: \
                     {chosen} boots from its kernel alone, the host's root over virtiofs"
                ));
                (chosen, guest::Root::Virtiofs)
            }
            (None, None) => {
                say(format!(
                    "vm-test: {series} left out: the archive holds {newest} but not {} (nor \
                     the kernel of an older {series})",
                    lacking.unwrap_or_default()
                ));
                continue;
            }
        };
        out.push(Kernel {
            series,
            package,
            root,
        });
    }
    out
}

/// The newest image of each series among package names, by [`image_version`].
fn newest_per_series<'a>(names: impl Iterator<Item = &'a str>) -> Vec<(String, String)> {
    let mut best: BTreeMap<String, (Vec<u64>, bool, String)> = BTreeMap::new();
    for name in names {
        let Some((series, version, unsigned)) = image_version(name) else {
            continue;
        };
        let candidate = (version, unsigned, name.to_owned());
        match best.get(&series) {
            Some(current) if (&current.0, current.1) >= (&candidate.0, candidate.1) => {}
            _ => {
                best.insert(series, candidate);
            }
        }
    }
    let mut by_series: Vec<(String, String)> = best
        .into_iter()
        .map(|(s, (_, _, name))| (s, name))
        .collect();
    by_series.sort_by_key(|(s, _)| series_key(s));
    by_series
}

fn series_key(series: &str) -> Vec<u64> {
    series.split('.').filter_map(|n| n.parse().ok()).collect()
}

/// `linux-image-6.1.0-50-amd64-unsigned` -> (`6.1`, [6, 1, 0, 50], true);
/// `linux-image-7.3.4+deb13-amd64` -> (`7.3`, [7, 3, 4, 13], false). Other flavours (cloud,
/// rt), debug symbols and meta packages are none.
fn image_version(name: &str) -> Option<(String, Vec<u64>, bool)> {
    let rest = name.strip_prefix("linux-image-")?;
    let (rest, unsigned) = match rest.strip_suffix("-amd64-unsigned") {
        Some(r) => (r, true),
        None => (rest.strip_suffix("-amd64")?, false),
    };
    if !rest.starts_with(|c: char| c.is_ascii_digit())
        || rest.contains("cloud")
        || rest.contains("rt")
    {
        return None;
    }
    let numbers: Vec<u64> = rest
        .split(|c: char| !c.is_ascii_digit())
        .filter(|p| !p.is_empty())
        .filter_map(|p| p.parse().ok())
        .collect();
    let series = format!("{}.{}", numbers.first()?, numbers.get(1)?);
    Some((series, numbers, unsigned))
}

/// The Debian mirror the host's apt sources name (deb822 `URIs:` or a `deb` line), so that
/// this reaches the archive the way the host does.
fn host_mirror() -> Result<String> {
    let mut texts = Vec::new();
    if let Ok(text) = fs::read_to_string("/etc/apt/sources.list") {
        texts.push(text);
    }
    if let Ok(entries) = fs::read_dir("/etc/apt/sources.list.d") {
        for entry in entries.flatten() {
            let path = entry.path();
            if path
                .extension()
                .is_some_and(|e| e == "sources" || e == "list")
            {
                texts.push(fs::read_to_string(&path).unwrap_or_default());
            }
        }
    }
    for text in &texts {
        // deb822: the URIs of a stanza whose suites are Debian releases, security aside.
        for stanza in text.split("\n\n") {
            let field = |name: &str| {
                stanza
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .map(str::trim)
            };
            if let (Some(uris), Some(suites)) = (field("URIs:"), field("Suites:"))
                && SUITES
                    .iter()
                    .any(|s| suites.split_whitespace().any(|x| x == *s))
                && !uris.contains("security")
                && let Some(uri) = uris.split_whitespace().next()
            {
                return Ok(uri.to_owned());
            }
        }
        for line in text.lines() {
            let words: Vec<&str> = line
                .split_whitespace()
                .filter(|w| !w.starts_with('['))
                .collect();
            if words.len() >= 3
                && words[0] == "deb"
                && SUITES.contains(&words[2])
                && !words[1].contains("security")
            {
                return Ok(words[1].to_owned());
            }
        }
    }
    bail!(
        "the host's apt sources name no Debian mirror for {}",
        SUITES.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The two runs `cargo xtask test` makes of the newest kernel at once never share a
    /// directory.
    #[test]
    fn a_run_without_bpf_lsm_has_a_directory_of_its_own() {
        assert_ne!(run_dir("7.3", true), run_dir("7.3", false));
        assert!(run_dir("7.3", true).ends_with("target/vm/7.3"));
    }
    use crate::guest::Root;

    /// A guest of `series` that booted `release` and exited 0, nothing read from it yet.
    fn booted(series: &str, release: &str, bpf_lsm: bool) -> Outcome {
        Outcome {
            series: series.to_owned(),
            package: format!("linux-image-{release}"),
            release: Some(release.to_owned()),
            booted: true,
            programs_refused: Vec::new(),
            largest: Vec::new(),
            counts: Counts::default(),
            skips: Vec::new(),
            exit: Some(0),
            took: Duration::from_secs(90),
            bpf_lsm,
        }
    }

    /// A guest booted with BPF LSM fails when prevention does not attach; one booted without
    /// fails when it does (it would not be testing the tracepoint path), and is marked so.
    #[test]
    fn prevention_must_match_how_the_guest_was_booted() {
        let outcome = |bpf_lsm: bool, line: &str| {
            let mut o = booted("7.3", "7.3.4+deb13-amd64", bpf_lsm);
            o.read_line(line);
            o
        };
        let attached = "ok   prevention (BPF LSM)               BPF LSM refuses denied execs";
        let absent = "no   prevention (BPF LSM)               BPF LSM is not active";
        assert!(outcome(true, attached).passed());
        assert!(!outcome(true, absent).passed());
        assert!(outcome(false, absent).passed());
        let wrong = outcome(false, attached);
        assert!(!wrong.passed());
        let table = table(&[wrong]);
        assert!(table.contains("7.3 -bpf"), "{table}");
        assert!(
            table.contains("REFUSED: ok   prevention (BPF LSM)"),
            "{table}"
        );
    }

    #[test]
    fn a_skip_is_counted_as_skipped_with_its_reason() {
        let mut outcome = booted("5.10", "5.10.0-32-amd64", true);
        for line in [
            "skipped io_uring_connect_is_seen: this kernel lacks IORING_OP_CONNECT",
            "test io_uring_connect_is_seen ... ok",
            "test result: ok. 3 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out",
        ] {
            outcome.read_line(line);
        }
        let table = table(&[outcome]);
        let row = table.lines().nth(1).expect("a row");
        let columns: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(
            &columns[..5],
            ["5.10", "5.10.0-32-amd64", "2", "0", "2"],
            "{table}"
        );
        assert!(
            table.ends_with(
                "5.10: skipped io_uring_connect_is_seen: this kernel lacks IORING_OP_CONNECT"
            ),
            "{table}"
        );
    }

    #[test]
    fn a_split_image_whose_modules_the_archive_lacks_boots_over_virtiofs_unless_an_older_is_whole()
    {
        let names = |list: &[&str]| list.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let images = names(&[
            "linux-image-6.1.0-50-amd64-unsigned",
            "linux-image-6.10.1+deb13-amd64",
            "linux-image-6.19.13+deb13-amd64",
            "linux-image-6.19.14+deb13-amd64",
            "linux-image-7.0.13+deb13-amd64",
            "linux-image-7.2.12+deb13-amd64",
            "linux-image-7.2.13+deb13-amd64",
            "linux-image-7.3.4+deb13-amd64",
        ]);
        let binaries = names(&[
            "linux-binary-6.10.1+deb13-amd64",
            "linux-binary-6.19.13+deb13-amd64",
            "linux-binary-6.19.14+deb13-amd64",
            "linux-binary-7.2.12+deb13-amd64",
            "linux-binary-7.2.13+deb13-amd64",
            "linux-binary-7.3.4+deb13-amd64",
        ]);
        let modules = names(&[
            "linux-modules-7.0.13+deb13-amd64",
            "linux-modules-7.2.12+deb13-amd64",
            "linux-modules-7.3.4+deb13-amd64",
        ]);
        let mut said = Vec::new();
        let chosen = choose_kernels(&images, &binaries, &modules, |line| said.push(line));
        let kernel = |series: &str, package: &str, root| Kernel {
            series: series.into(),
            package: package.into(),
            root,
        };
        assert_eq!(
            chosen,
            [
                // Not split: the image is the whole kernel.
                kernel(
                    "6.1",
                    "linux-image-6.1.0-50-amd64-unsigned",
                    Root::NinePOverlay
                ),
                // No modules of any 6.19: the newest kernel, over virtiofs.
                kernel("6.19", "linux-image-6.19.14+deb13-amd64", Root::Virtiofs),
                // 7.0's kernel itself is missing: left out (below).
                // The newest 7.2 lacks its modules; an older one is whole.
                kernel("7.2", "linux-image-7.2.12+deb13-amd64", Root::NinePOverlay),
                kernel("7.3", "linux-image-7.3.4+deb13-amd64", Root::NinePOverlay),
            ]
        );
        assert_eq!(said.len(), 4, "{said:?}");
        // Before 6.12 virtiofs is a module too.
        assert!(said[0].starts_with("vm-test: 6.10 left out"), "{said:?}");
        assert!(
            said[1].contains("6.19") && said[1].contains("virtiofs"),
            "{said:?}"
        );
        assert!(
            said[2].starts_with("vm-test: 7.0 left out")
                && said[2].contains("linux-binary-7.0.13+deb13-amd64"),
            "{said:?}"
        );
        assert!(
            said[3].contains("linux-image-7.2.12+deb13-amd64 instead"),
            "{said:?}"
        );
    }

    #[test]
    fn each_series_gets_its_newest_generic_image_unsigned_first() {
        let names = [
            "linux-image-5.10.0-30-amd64-unsigned",
            "linux-image-5.10.0-32-amd64-unsigned",
            "linux-image-5.10.0-32-cloud-amd64-unsigned",
            "linux-image-6.1.0-9-amd64-unsigned",
            "linux-image-6.1.0-50-amd64-unsigned",
            "linux-image-6.1.0-50-rt-amd64-unsigned",
            "linux-image-6.12.107+deb13-amd64",
            "linux-image-6.12.107+deb13-amd64-unsigned",
            "linux-image-6.12.95+deb12-amd64-unsigned",
            "linux-image-7.3.4+deb13-amd64",
            "linux-image-7.3.4+deb13-amd64-dbg",
            "linux-image-amd64",
            "linux-image-7.10.1+deb14-amd64",
        ];
        let got = newest_per_series(names.into_iter());
        let got: Vec<(&str, &str)> = got.iter().map(|(s, n)| (s.as_str(), n.as_str())).collect();
        assert_eq!(
            got,
            [
                ("5.10", "linux-image-5.10.0-32-amd64-unsigned"),
                ("6.1", "linux-image-6.1.0-50-amd64-unsigned"),
                ("6.12", "linux-image-6.12.107+deb13-amd64-unsigned"),
                ("7.3", "linux-image-7.3.4+deb13-amd64"),
                ("7.10", "linux-image-7.10.1+deb14-amd64"),
            ]
        );
    }
}
