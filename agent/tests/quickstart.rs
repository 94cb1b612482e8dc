//! `docs/quickstart.md`, run as a newcomer would: its `sh` blocks in order, as written, in one
//! shell session on this machine (a real one-node cluster, `helm install`, a policy, a
//! violation), and every `text` block checked against what its block printed.
//!
//! The page's conventions, which its introduction states:
//! - a `sh` block whose first line is `# Terminal N: ... go on when it prints "X".` runs beside
//!   the others, in a process group of its own as a terminal's job is, until the end, when it
//!   gets Ctrl-C (SIGINT to the group) in the reverse of the order they were started in; the
//!   next block starts once its output holds X;
//! - any other `sh` block runs to completion in terminal 2, with what the blocks before it
//!   exported, and must succeed (`set -e`, as a reader would stop at an error);
//! - a `text` block is what the block above it printed, line by line in order; `...` within a
//!   line stands for anything, a line of `...` alone for any lines, and runs of spaces count
//!   as one; ```` ```text terminal-N ```` is what terminal N printed (waited for).
//!
//! Its own runner (`harness = false`), reporting as libtest does so that `cargo xtask test`
//! counts it. Needs root and the Kubernetes binaries; outside CI it skips, saying why, when they
//! are missing; in CI (`CI=true`) that fails.
use std::{
    collections::BTreeMap,
    fs,
    os::unix::process::{CommandExt, ExitStatusExt},
    path::{Path, PathBuf},
    process::{Child, Command, ExitCode, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};

const NAME: &str =
    "the_quickstart_runs_as_written_and_shows_the_kill_in_the_terminal_slack_and_on_the_pod";
const PAGE: &str = "docs/quickstart.md";
/// The page's cluster directory: cleaned up by `k8s-env down` when a run did not get to stop it.
const CLUSTER_DIR: &str = "/tmp/vigil-quickstart";
/// A foreground block's bound (its own waits say 5 minutes at most).
const BLOCK_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// A background block's bound to print what the page says to wait for: the first build of the
/// Kubernetes binaries is in it when they were not built before.
const READY_TIMEOUT: Duration = Duration::from_secs(40 * 60);
/// How long a background terminal may take to print what a `text terminal-N` block shows.
const OUTPUT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a terminal may take to stop after Ctrl-C (the cluster tears down the node).
const STOP_TIMEOUT: Duration = Duration::from_secs(180);

fn main() -> ExitCode {
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    if !filters.is_empty() && !filters.iter().any(|f| NAME.contains(f.as_str())) {
        println!(
            "\nrunning 0 tests\n\ntest result: ok. 0 passed; 0 failed; 0 ignored; 0 measured\n"
        );
        return ExitCode::SUCCESS;
    }
    println!("\nrunning 1 test");
    let outcome = match missing() {
        Some(why) if std::env::var("CI").is_ok_and(|v| v == "true") => Err(anyhow::anyhow!(why)),
        Some(why) => {
            println!("SKIPPED: {why}");
            println!("test {NAME} ... ignored");
            println!("\ntest result: ok. 0 passed; 0 failed; 1 ignored; 0 measured\n");
            return ExitCode::SUCCESS;
        }
        None => run(),
    };
    match outcome {
        Ok(()) => {
            println!("test {NAME} ... ok");
            println!("\ntest result: ok. 1 passed; 0 failed; 0 ignored; 0 measured\n");
            ExitCode::SUCCESS
        }
        Err(err) => {
            println!("test {NAME} ... FAILED\n{err:#}");
            println!("\ntest result: FAILED. 0 passed; 1 failed; 0 ignored; 0 measured\n");
            ExitCode::FAILURE
        }
    }
}

/// Why the page cannot run here, if it cannot.
fn missing() -> Option<String> {
    let mut missing = Vec::new();
    // SAFETY: a plain syscall without arguments.
    if unsafe { libc::geteuid() } != 0 {
        missing.push("root".to_owned());
    }
    let bin = testenv::bin_dir();
    let absent = testenv::missing_binaries(&bin);
    if !absent.is_empty() {
        missing.push(format!("{} in {}", absent.join(", "), bin.display()));
    }
    (!missing.is_empty()).then(|| format!("the quickstart needs {}", missing.join("; ")))
}

/// One fenced block of the page.
#[derive(Debug)]
struct Block {
    /// The info string: `sh`, `text`, `text terminal-3`.
    info: String,
    body: String,
    /// Where it starts, for messages.
    line: usize,
}

fn blocks(page: &str) -> Result<Vec<Block>> {
    let mut blocks = Vec::new();
    let mut open: Option<Block> = None;
    for (i, line) in page.lines().enumerate() {
        match (&mut open, line.strip_prefix("```")) {
            (None, Some(info)) => {
                open = Some(Block {
                    info: info.trim().to_owned(),
                    body: String::new(),
                    line: i + 1,
                });
            }
            (Some(_), Some("")) => blocks.push(open.take().expect("open")),
            (Some(block), _) => {
                block.body.push_str(line);
                block.body.push('\n');
            }
            (None, None) => {}
        }
    }
    ensure!(open.is_none(), "{PAGE}: a block is not closed");
    Ok(blocks)
}

/// A terminal's job: `# Terminal N: ... go on when it prints "X".`.
fn background(block: &Block) -> Result<Option<(u32, String)>> {
    let first = block.body.lines().next().unwrap_or_default();
    let Some(rest) = first.strip_prefix("# Terminal ") else {
        return Ok(None);
    };
    let (number, _) = rest
        .split_once(':')
        .with_context(|| format!("{PAGE}:{}: {first}", block.line))?;
    let marker = rest
        .split_once("prints \"")
        .and_then(|(_, m)| m.split_once('"'))
        .map(|(m, _)| m.to_owned())
        .with_context(|| format!("{PAGE}:{}: what to wait for is not said", block.line))?;
    Ok(Some((number.trim().parse()?, marker)))
}

/// A job running beside the others, its output in a file.
struct Terminal {
    number: u32,
    child: Child,
    log: PathBuf,
}

impl Terminal {
    fn output(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Ctrl-C, as a terminal sends it: SIGINT to the job's process group.
    fn interrupt(&mut self) -> Result<std::process::ExitStatus> {
        let pgid = i32::try_from(self.child.id())?;
        // SAFETY: signals a process group this test created.
        unsafe { libc::kill(-pgid, libc::SIGINT) };
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                // SAFETY: as above.
                unsafe { libc::kill(-pgid, libc::SIGKILL) };
                let _ = self.child.wait();
                bail!(
                    "terminal {} did not stop within {STOP_TIMEOUT:?} of Ctrl-C",
                    self.number
                );
            }
            thread::sleep(Duration::from_millis(200));
        }
    }
}

/// The shell every block runs in: a reader's environment (no cargo test variables), with
/// what the blocks before exported.
struct Session {
    root: PathBuf,
    dir: tempfile::TempDir,
    env: PathBuf,
}

impl Session {
    fn new() -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let env = dir.path().join("exported");
        fs::write(&env, "")?;
        Ok(Self {
            root: testenv::workspace_root(),
            dir,
            env,
        })
    }

    fn bash(&self, script: &str) -> Command {
        let mut cmd = Command::new("bash");
        cmd.arg("-c")
            .arg(script)
            .current_dir(&self.root)
            .env_clear();
        let mut path = std::env::var("PATH").unwrap_or_default();
        // Where the cargo that runs the tests is: a reader's PATH has it.
        if let Some(dir) = std::env::var_os("CARGO")
            .map(PathBuf::from)
            .and_then(|c| c.parent().map(Path::to_path_buf))
        {
            path = format!("{}:{path}", dir.display());
        }
        cmd.env("PATH", path);
        for keep in [
            "HOME",
            "USER",
            "LOGNAME",
            "LANG",
            "TMPDIR",
            "CARGO_HOME",
            "RUSTUP_HOME",
            "RUSTUP_TOOLCHAIN",
            "GOPATH",
            "GOCACHE",
            "GOMODCACHE",
            "GOFLAGS",
            "GOPROXY",
            "KUBEBUILDER_ASSETS",
        ] {
            if let Some(value) = std::env::var_os(keep) {
                cmd.env(keep, value);
            }
        }
        cmd
    }

    /// Runs a terminal-2 block to its end: its output, or why it failed.
    fn foreground(&self, block: &Block) -> Result<String> {
        let env = self.env.display();
        let script = format!(
            "set -e\nexec 2>&1\nsource {env}\n{}\nexport -p > {env}\n",
            block.body
        );
        let log = self.dir.path().join(format!("block-{}.log", block.line));
        let mut child = self
            .bash(&script)
            .stdin(Stdio::null())
            .stdout(fs::File::create(&log)?)
            .spawn()?;
        let deadline = Instant::now() + BLOCK_TIMEOUT;
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "{PAGE}:{}: still running after {BLOCK_TIMEOUT:?}:\n{}",
                    block.line,
                    fs::read_to_string(&log).unwrap_or_default()
                );
            }
            thread::sleep(Duration::from_millis(100));
        };
        let output = fs::read_to_string(&log)?;
        print!("{output}");
        ensure!(
            status.success(),
            "{PAGE}:{}: the block failed ({status}):\n{}\n--- it printed:\n{output}",
            block.line,
            block.body
        );
        Ok(output)
    }

    fn start(&self, block: &Block, number: u32, marker: &str) -> Result<Terminal> {
        let log = self.dir.path().join(format!("terminal-{number}.log"));
        let child = self
            .bash(&format!("exec 2>&1\n{}", block.body))
            .stdin(Stdio::null())
            .stdout(fs::File::create(&log)?)
            .process_group(0)
            .spawn()?;
        let mut terminal = Terminal { number, child, log };
        let started = Instant::now();
        loop {
            let output = terminal.output();
            if output.lines().any(|l| l.contains(marker)) {
                println!(
                    "[terminal {number} printed {marker:?} after {:.1} s]",
                    started.elapsed().as_secs_f64()
                );
                return Ok(terminal);
            }
            if let Some(status) = terminal.child.try_wait()? {
                bail!(
                    "{PAGE}:{}: terminal {number} ended ({status}) before it printed {marker:?}:\n{}",
                    block.line,
                    tail(&output)
                );
            }
            if started.elapsed() > READY_TIMEOUT {
                let _ = terminal.interrupt();
                bail!(
                    "{PAGE}:{}: terminal {number} did not print {marker:?} within {READY_TIMEOUT:?}:\n{}",
                    block.line,
                    tail(&output)
                );
            }
            thread::sleep(Duration::from_millis(200));
        }
    }
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Whether `output` holds `expected` as the page's `text` blocks mean it (see the file's doc).
fn shows(output: &str, expected: &str) -> Result<(), String> {
    let squeeze = |l: &str| l.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut lines = output.lines().map(squeeze);
    for want in expected.lines().map(squeeze).filter(|l| !l.is_empty()) {
        if want == "..." {
            continue;
        }
        let pattern = want
            .split("...")
            .map(regex::escape)
            .collect::<Vec<_>>()
            .join(".*");
        let pattern = regex::Regex::new(&format!("^{pattern}$")).map_err(|e| e.to_string())?;
        if !lines.by_ref().any(|l| pattern.is_match(&l)) {
            return Err(format!("no line (after the ones before) is like: {want}"));
        }
    }
    Ok(())
}

fn run() -> Result<()> {
    let session = Session::new()?;
    let page = fs::read_to_string(session.root.join(PAGE))?;
    let blocks = blocks(&page)?;
    ensure!(
        blocks.iter().filter(|b| b.info == "sh").count() >= 5,
        "{PAGE}: fewer blocks than a quickstart has"
    );
    let mut terminals: BTreeMap<u32, Terminal> = BTreeMap::new();
    let mut order = Vec::new();
    let result = follow(&session, &blocks, &mut terminals, &mut order);
    // Ctrl-C in each terminal, the last started first, whatever happened: the cluster's
    // terminal stops it and cleans up.
    let mut stopped = Vec::new();
    for number in order.iter().rev() {
        let terminal = terminals.get_mut(number).expect("started");
        stopped.push((*number, terminal.interrupt(), terminal.output()));
    }
    if result.is_err() {
        for (number, _, output) in &stopped {
            println!("--- terminal {number}, last lines:\n{}", tail(output));
        }
    }
    let cluster_stopped = stopped
        .iter()
        .find(|(_, _, output)| output.contains("k8s-env: node"))
        .map(|(number, status, output)| -> Result<()> {
            let status = status.as_ref().map_err(|e| anyhow::anyhow!("{e:#}"))?;
            ensure!(
                status.success() && output.contains("k8s-env: stopped"),
                "terminal {number} (the cluster) did not stop cleanly after Ctrl-C ({status}):\n{}",
                tail(output)
            );
            Ok(())
        });
    if !matches!(cluster_stopped, Some(Ok(()))) {
        // What a reader would run after a cluster that did not stop.
        let down = Command::new("cargo")
            .args(["xtask", "k8s-env", "down", "--dir", CLUSTER_DIR])
            .current_dir(&session.root)
            .status();
        println!("[cleanup: cargo xtask k8s-env down: {down:?}]");
    }
    for (number, status, _) in &stopped {
        if let Ok(status) = status {
            // Ctrl-C ends a job that does not catch it by the signal itself.
            let by_ctrl_c = status.signal() == Some(libc::SIGINT);
            ensure!(
                result.is_err() || status.success() || by_ctrl_c,
                "terminal {number} failed on Ctrl-C: {status}"
            );
        }
    }
    result?;
    match cluster_stopped {
        Some(outcome) => outcome,
        None => bail!("{PAGE}: no terminal ran the cluster"),
    }
}

/// What a plain `text` block is checked against: a finished block's output, or a terminal
/// still running (waited for).
enum Printed {
    Output(String),
    Terminal(u32),
}

/// Runs the page's blocks in order.
fn follow(
    session: &Session,
    blocks: &[Block],
    terminals: &mut BTreeMap<u32, Terminal>,
    order: &mut Vec<u32>,
) -> Result<()> {
    let mut last: Option<(usize, Printed)> = None;
    for block in blocks {
        let step_start = Instant::now();
        if block.info == "sh" {
            println!("\n$ ({PAGE}:{})\n{}", block.line, block.body.trim_end());
            if let Some((number, marker)) = background(block)? {
                let terminal = session.start(block, number, &marker)?;
                terminals.insert(number, terminal);
                order.push(number);
                last = Some((block.line, Printed::Terminal(number)));
            } else {
                last = Some((block.line, Printed::Output(session.foreground(block)?)));
            }
            println!("[{:.1} s]", step_start.elapsed().as_secs_f64());
            continue;
        }
        let named = block
            .info
            .strip_prefix("text terminal-")
            .map(|n| n.parse::<u32>().map(Printed::Terminal))
            .transpose()?;
        let printed = match (block.info.as_str(), named, &last) {
            (_, Some(terminal), _) => terminal,
            ("text", None, Some((_, Printed::Output(output)))) => Printed::Output(output.clone()),
            ("text", None, Some((_, Printed::Terminal(n)))) => Printed::Terminal(*n),
            ("text", None, None) => bail!("{PAGE}:{}: no block above", block.line),
            (info, None, _) => bail!("{PAGE}:{}: a block of an unknown kind: {info}", block.line),
        };
        match printed {
            Printed::Output(output) => shows(&output, &block.body).map_err(|why| {
                anyhow::anyhow!(
                    "{PAGE}:{}: the block above printed something else: {why}\n--- it printed:\n{}",
                    block.line,
                    tail(&output)
                )
            })?,
            Printed::Terminal(number) => {
                let terminal = terminals.get(&number).with_context(|| {
                    format!("{PAGE}:{}: terminal {number} was not started", block.line)
                })?;
                let deadline = Instant::now() + OUTPUT_TIMEOUT;
                loop {
                    let output = terminal.output();
                    match shows(&output, &block.body) {
                        Ok(()) => {
                            println!("[terminal {number} shows what {PAGE}:{} says]", block.line);
                            break;
                        }
                        Err(why) if Instant::now() > deadline => bail!(
                            "{PAGE}:{}: terminal {number} does not show it within {OUTPUT_TIMEOUT:?}: {why}\n--- it printed:\n{}",
                            block.line,
                            tail(&output)
                        ),
                        Err(_) => thread::sleep(Duration::from_millis(250)),
                    }
                }
            }
        }
    }
    Ok(())
}
