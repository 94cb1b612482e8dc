//! End to end on a real node: `helm install` the chart into a one-node cluster (kubelet,
//! containerd, runc, kube-proxy; `testenv::Cluster`) and catch what happens inside real pods.
//!
//! One cluster serves every test, in order (the chart is installed by the first and removed by
//! the last), so this file has its own runner (`harness = false`) that reports the way libtest
//! does (so `cargo xtask test` counts them). The cluster belongs to a child process that starts
//! it, runs the tests and leaves one more pod running; the runner then SIGKILLs the child, as a
//! crash would, runs the teardown every cluster start begins with, and checks that the pod's
//! process is gone and the host is as it was before.
//!
//! Needs root, the Kubernetes binaries (`VIGIL_K8S_BIN`) and the images `cargo xtask test`
//! builds (`VIGIL_NODE_IMAGES`, `VIGIL_SANDBOX_IMAGE`). Outside CI it skips, saying why, when
//! they are missing; in CI (`CI=true`) that fails.
//!
//! Traffic stays on the pod range, the Service range and loopback: pods have no other route,
//! and the node drops anything forwarded off its bridge.
use std::{
    io::Read,
    path::{Path, PathBuf},
    process::{Command, ExitCode, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use testenv::{Cluster, NodeOptions};

/// The chart's capability set: what the agent runs with (`charts/vigil/values.yaml`).
const CHART_CAPABILITIES: [&str; 5] = [
    "CAP_BPF",
    "CAP_PERFMON",
    "CAP_NET_ADMIN",
    "CAP_SYS_PTRACE",
    "CAP_DAC_READ_SEARCH",
];
/// How long a wait for the cluster may take, times [`pace`].
const WAIT: Duration = Duration::from_secs(90);
/// Policy rules: busybox may run, anything else is killed.
const ONLY_BUSYBOX: &str = "  exec:\n    allow: [{path: /bin/busybox}]\n    action: Kill\n";
const AGENT_NS: &str = "vigil";
const WORKLOAD_IMAGE: &str = "docker.io/library/vigil-test-busybox";
/// Where the workload image has `vigil-scenario`, the load generator (`xtask/src/image.rs`).
const SCENARIO: &str = "/usr/bin/vigil-scenario";
/// A script of the workload image, for its own busybox shell (`xtask/src/image.rs`).
const IMAGE_SCRIPT: &str = "/usr/bin/vigil-image-script";
/// One of the workload image's libraries (GNU grep's PCRE2), as its loader finds it.
const IMAGE_LIBRARY: &str = "/lib/x86_64-linux-gnu/libpcre2-8.so.0";

struct Ctx {
    cluster: Cluster,
    tag: String,
    workspace: PathBuf,
}

type TestFn = fn(&Ctx) -> Result<()>;

const TESTS: [(&str, TestFn); 13] = [
    (
        "helm_install_brings_the_agent_to_ready_with_the_charts_capabilities_only",
        helm_install_brings_the_agent_to_ready_with_the_charts_capabilities_only,
    ),
    (
        "helm_test_asks_every_agent_for_readyz",
        helm_test_asks_every_agent_for_readyz,
    ),
    (
        "a_binary_copied_into_a_deployment_pod_is_killed_and_named_as_the_container_sees_it",
        a_binary_copied_into_a_deployment_pod_is_killed_and_named_as_the_container_sees_it,
    ),
    (
        "an_edited_policy_takes_effect_and_its_status_shows_this_nodes_verdict",
        an_edited_policy_takes_effect_and_its_status_shows_this_nodes_verdict,
    ),
    (
        "egress_to_a_service_is_allowed_and_to_an_unselected_pod_or_a_deleted_service_is_not",
        egress_to_a_service_is_allowed_and_to_an_unselected_pod_or_a_deleted_service_is_not,
    ),
    (
        "write_execute_memory_in_a_pod_is_a_violation_except_for_the_listed_jit_runtime",
        write_execute_memory_in_a_pod_is_a_violation_except_for_the_listed_jit_runtime,
    ),
    (
        "drift_in_a_pod_is_killed_wherever_it_sits_and_the_images_own_files_run",
        drift_in_a_pod_is_killed_wherever_it_sits_and_the_images_own_files_run,
    ),
    (
        "a_tool_vouched_for_by_sha256_runs_wherever_it_sits_and_other_content_there_is_drift",
        a_tool_vouched_for_by_sha256_runs_wherever_it_sits_and_other_content_there_is_drift,
    ),
    (
        "deleting_the_agent_pod_during_denied_execs_kills_every_one_and_reports_each_once",
        deleting_the_agent_pod_during_denied_execs_kills_every_one_and_reports_each_once,
    ),
    (
        "helm_upgrade_replaces_the_agent_and_leaves_one_generation_of_programs",
        helm_upgrade_replaces_the_agent_and_leaves_one_generation_of_programs,
    ),
    (
        "each_capability_the_chart_grants_is_needed",
        each_capability_the_chart_grants_is_needed,
    ),
    (
        "the_agents_cpu_and_memory_at_idle_and_under_1000_violations_a_second",
        the_agents_cpu_and_memory_at_idle_and_under_1000_violations_a_second,
    ),
    (
        "helm_uninstall_leaves_no_program_map_or_pin_behind",
        helm_uninstall_leaves_no_program_map_or_pin_behind,
    ),
];

/// Set in the child that owns the cluster: it runs the tests and is then SIGKILLed (see
/// [`owner`]).
const OWNER_CHILD: &str = "VIGIL_NODE_OWNER_CHILD";
/// The checks the runner adds around every selection.
const OWNER_KILLED: &str =
    "a_cluster_whose_owner_was_killed_is_cleaned_up_by_the_next_starts_teardown";
const HOST_AS_FOUND: &str = "the_node_leaves_the_host_as_it_found_it";

fn main() -> ExitCode {
    // libtest's arguments: flags are ignored, anything else filters by name.
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let selected: Vec<&(&str, TestFn)> = TESTS
        .iter()
        .filter(|(name, _)| filters.is_empty() || filters.iter().any(|f| name.contains(f)))
        .collect();
    if std::env::var_os(OWNER_CHILD).is_some() {
        return owner(&selected);
    }
    let total = selected.len() + 2;
    println!("\nrunning {total} tests");
    if selected.is_empty() {
        println!("\ntest result: ok. 0 passed; 0 failed; 0 ignored; 0 measured\n");
        return ExitCode::SUCCESS;
    }
    let failed_all = |why: String| {
        println!("{why}");
        println!("\ntest result: FAILED. 0 passed; {total} failed; 0 ignored; 0 measured\n");
        ExitCode::FAILURE
    };
    let setup = match environment() {
        Ok(Some(setup)) => setup,
        Ok(None) => {
            println!("\ntest result: ok. 0 passed; 0 failed; {total} ignored; 0 measured\n");
            return ExitCode::SUCCESS;
        }
        Err(err) => return failed_all(format!("node setup failed: {err:#}")),
    };
    let before = match HostState::capture() {
        Ok(state) => state,
        Err(err) => return failed_all(format!("cannot read the host's state: {err:#}")),
    };
    // The cluster belongs to a child that runs the tests, leaves a pod running and is then
    // SIGKILLed: what remains is what a crashed `k8s-env up` leaves, and the teardown every
    // start begins with must remove it. One cluster start serves both, which under emulation
    // is worth minutes.
    let owned = run_owner(&filters);
    let mut outcomes: Vec<(String, Result<()>)> = Vec::new();
    let cleaned = testenv::teardown(&cluster_dir(), &setup.bin);
    outcomes.push((
        OWNER_KILLED.into(),
        owned.result.and_then(|pid| {
            cleaned.context("the teardown failed")?;
            // The teardown saw the pod's cgroups empty: the process has exited, but its parent
            // (the killed shim) is gone and whoever inherits it reaps it in its own time. A
            // zombie has ended; anything else after 10 s has not.
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let state = process_state(pid);
                if matches!(state, None | Some('Z' | 'X')) {
                    return Ok(());
                }
                ensure!(
                    Instant::now() < deadline,
                    "the crashed cluster's container process {pid} still runs (state {state:?}) 10 s after the teardown"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }),
    ));
    report(&outcomes[0]);
    outcomes.push((
        HOST_AS_FOUND.into(),
        HostState::capture().and_then(|after| before.same_as(&after)),
    ));
    report(outcomes.last().expect("pushed"));
    let failed = outcomes.iter().filter(|(_, o)| o.is_err()).count();
    // A selected test the owner never reported on counts as failed.
    let passed = owned.passed.min(selected.len()) + outcomes.len() - failed;
    let failed = total - passed;
    println!(
        "\ntest result: {}. {passed} passed; {failed} failed; 0 ignored; 0 measured\n",
        if failed == 0 { "ok" } else { "FAILED" },
    );
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Where the one cluster lives.
fn cluster_dir() -> PathBuf {
    std::env::temp_dir().join("vigil-node-tests")
}

fn report((name, outcome): &(String, Result<()>)) {
    match outcome {
        Ok(()) => println!("test {name} ... ok"),
        Err(err) => println!("test {name} ... FAILED\n{err:#}"),
    }
}

/// What a cluster may touch on the host and must leave as it was.
#[derive(Debug, PartialEq, Eq)]
struct HostState {
    sysctls: Vec<(String, String)>,
    /// `iptables-save` and `ip6tables-save` without counters and comments.
    rules: Vec<String>,
    links: Vec<String>,
    mounts: Vec<String>,
    kubepods: Vec<String>,
    /// Whether the chart's pin directory exists.
    agent_pins: bool,
}

impl HostState {
    fn capture() -> Result<Self> {
        let sysctls = [
            "vm/overcommit_memory",
            "vm/panic_on_oom",
            "kernel/panic",
            "kernel/panic_on_oops",
            "kernel/keys/root_maxkeys",
            "kernel/keys/root_maxbytes",
            "net/ipv4/ip_forward",
            "net/ipv4/conf/all/forwarding",
            "net/ipv4/conf/all/route_localnet",
            "net/ipv4/conf/all/accept_redirects",
            "net/bridge/bridge-nf-call-iptables",
            "net/netfilter/nf_conntrack_max",
            "net/netfilter/nf_conntrack_tcp_timeout_established",
            "net/netfilter/nf_conntrack_tcp_timeout_close_wait",
        ]
        .iter()
        .map(|name| {
            let value = std::fs::read_to_string(format!("/proc/sys/{name}"))
                .map(|v| v.trim().to_owned())
                .unwrap_or_else(|e| format!("unreadable: {e}"));
            ((*name).to_owned(), value)
        })
        .collect();
        let mut rules = Vec::new();
        for tool in ["iptables-save", "ip6tables-save"] {
            let out = Command::new(tool)
                .output()
                .with_context(|| format!("running {tool}"))?;
            rules.extend(
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .filter(|l| !l.starts_with('#'))
                    // Chain lines carry packet counters: `:INPUT ACCEPT [12:345]`.
                    .map(|l| l.split(" [").next().unwrap_or(l).to_owned()),
            );
        }
        let links = std::fs::read_dir("/sys/class/net")?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        let mut mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")?
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(str::to_owned))
            .collect();
        mounts.sort();
        let mut kubepods = Vec::new();
        if Path::new("/sys/fs/cgroup/kubepods").exists() {
            kubepods.push("/sys/fs/cgroup/kubepods".to_owned());
        }
        for entry in std::fs::read_dir("/sys/fs/cgroup")?.flatten() {
            if entry.path().join("kubepods").exists() {
                kubepods.push(entry.path().join("kubepods").display().to_string());
            }
        }
        let mut state = Self {
            sysctls,
            rules,
            links,
            mounts,
            kubepods,
            agent_pins: Path::new(testenv::AGENT_PINS).exists(),
        };
        state.links.sort();
        state.kubepods.sort();
        Ok(state)
    }

    fn same_as(&self, after: &Self) -> Result<()> {
        let mut differences = Vec::new();
        if self.sysctls != after.sysctls {
            differences.push(format!("sysctls {:?} -> {:?}", self.sysctls, after.sysctls));
        }
        let added: Vec<&String> = after
            .rules
            .iter()
            .filter(|r| !self.rules.contains(r))
            .collect();
        let removed: Vec<&String> = self
            .rules
            .iter()
            .filter(|r| !after.rules.contains(r))
            .collect();
        if !added.is_empty() || !removed.is_empty() {
            differences.push(format!("iptables: added {added:?}, removed {removed:?}"));
        }
        if self.links != after.links {
            differences.push(format!("links {:?} -> {:?}", self.links, after.links));
        }
        if self.mounts != after.mounts {
            differences.push(format!("mounts {:?} -> {:?}", self.mounts, after.mounts));
        }
        if self.kubepods != after.kubepods {
            differences.push(format!(
                "kubepods cgroups {:?} -> {:?}",
                self.kubepods, after.kubepods
            ));
        }
        if self.agent_pins != after.agent_pins {
            differences.push(format!(
                "{} existed: {} -> {}",
                testenv::AGENT_PINS,
                self.agent_pins,
                after.agent_pins
            ));
        }
        ensure!(
            differences.is_empty(),
            "the host changed: {}",
            differences.join("; ")
        );
        Ok(())
    }
}

/// What the owner child did: how many tests it reported passed, and the container process of
/// the pod it left running when it was killed.
struct Owned {
    passed: usize,
    result: Result<u32>,
}

/// Runs [`owner`] in a child, passing its output through, and SIGKILLs it once it has left
/// a pod running.
fn run_owner(filters: &[String]) -> Owned {
    let mut passed = 0;
    let result = (|| -> Result<u32> {
        let mut child = Command::new(std::env::current_exe()?)
            .args(filters)
            .env(OWNER_CHILD, "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("cannot start the cluster's owner")?;
        let stdout = child.stdout.take().context("piped")?;
        let mut last_words = std::collections::VecDeque::new();
        for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
            let line = line.context("the owner's output")?;
            if let Some(pid) = line.strip_prefix("ready ") {
                let pid = pid.trim().parse::<u32>().context("the owner's pid line")?;
                child.kill().context("SIGKILL the cluster's owner")?;
                child.wait()?;
                let state = process_state(pid);
                ensure!(
                    state.is_some_and(|s| s != 'Z' && s != 'X'),
                    "the pod's process {pid} should outlive the crashed cluster's owner (state {state:?})"
                );
                return Ok(pid);
            }
            println!("{line}");
            if line.starts_with("test ") && line.ends_with(" ... ok") {
                passed += 1;
            }
            if last_words.len() == 5 {
                last_words.pop_front();
            }
            last_words.push_back(line);
        }
        let status = child.wait()?;
        bail!(
            "the cluster's owner ended ({status}) before it left a pod running; it last said:\n{}",
            Vec::from(last_words).join("\n")
        )
    })();
    Owned { passed, result }
}

/// The owner child: starts the cluster, runs the selected tests reporting each, then runs
/// one more pod, prints `ready <pid>` and waits to be killed.
fn owner(selected: &[&(&str, TestFn)]) -> ExitCode {
    let run = || -> Result<()> {
        let setup = environment()?.context("the parent checked the environment")?;
        let started = Instant::now();
        let ctx = start(setup).context("the cluster did not start")?;
        println!(
            "node {} Ready in {:.1} s",
            ctx.cluster.node_name(),
            started.elapsed().as_secs_f64()
        );
        let mut any_failed = false;
        for (name, test) in selected {
            let start = Instant::now();
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| test(&ctx)))
                .unwrap_or_else(|_| Err(anyhow::anyhow!("panicked")));
            println!("  ({:.1} s)", start.elapsed().as_secs_f64());
            any_failed |= outcome.is_err();
            report(&((*name).to_owned(), outcome));
        }
        if any_failed {
            println!(
                "--- agent log tail:\n{}",
                ctx.kubectl(&[
                    "logs",
                    "-n",
                    AGENT_NS,
                    "-l",
                    "app.kubernetes.io/name=vigil",
                    "--tail=40"
                ])
                .unwrap_or_else(|e| format!("{e:#}"))
            );
        }
        let pod = ctx.deployment(
            "default",
            "left-behind",
            &["/bin/busybox", "sleep", "100000"],
        )?;
        let pid = container_process(&ctx, "default", &pod, "busybox")?;
        println!("ready {pid}");
        // Keep `ctx` (and the cluster) alive until the parent kills this process.
        loop {
            thread::sleep(Duration::from_secs(3600));
            let _ = &ctx;
        }
    };
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            println!("the cluster's owner: {err:#}");
            ExitCode::FAILURE
        }
    }
}

struct Setup {
    bin: PathBuf,
    images: Vec<PathBuf>,
    sandbox: String,
}

/// What the tests need, or `None` (after saying why) when they cannot run here outside CI.
fn environment() -> Result<Option<Setup>> {
    let in_ci = std::env::var("CI").is_ok_and(|v| v == "true");
    let mut missing = Vec::new();
    // SAFETY: a plain syscall without arguments.
    if unsafe { libc::geteuid() } != 0 {
        missing.push("root".to_owned());
    }
    let images = std::env::var("VIGIL_NODE_IMAGES").unwrap_or_default();
    let sandbox = std::env::var("VIGIL_SANDBOX_IMAGE").unwrap_or_default();
    if images.is_empty() || sandbox.is_empty() {
        missing
            .push("VIGIL_NODE_IMAGES and VIGIL_SANDBOX_IMAGE (cargo xtask test sets them)".into());
    }
    let bin = testenv::bin_dir();
    let absent = testenv::missing_binaries(&bin);
    if !absent.is_empty() {
        missing.push(format!("{} in {}", absent.join(", "), bin.display()));
    }
    if !missing.is_empty() {
        let why = format!("the node tests need {}", missing.join("; "));
        if in_ci {
            bail!("{why}");
        }
        println!("SKIPPED: {why}");
        return Ok(None);
    }
    Ok(Some(Setup {
        bin,
        images: std::env::split_paths(&images).collect(),
        sandbox,
    }))
}

fn start(setup: Setup) -> Result<Ctx> {
    let workspace = testenv::workspace_root();
    let dir = std::env::temp_dir().join("vigil-node-tests");
    let cluster = Cluster::start(
        &dir,
        &setup.bin,
        &NodeOptions {
            node_name: "vigil-e2e-node".into(),
            images: setup.images,
            sandbox_image: setup.sandbox,
            ready_timeout: Duration::from_secs(300) * pace(),
        },
    )?;
    let tag = chart_app_version(&workspace)?;
    Ok(Ctx {
        cluster,
        tag,
        workspace,
    })
}

fn chart_app_version(workspace: &Path) -> Result<String> {
    let chart = std::fs::read_to_string(workspace.join("charts/vigil/Chart.yaml"))?;
    chart
        .lines()
        .find_map(|l| l.strip_prefix("appVersion:"))
        .map(|v| v.trim().trim_matches('"').to_owned())
        .context("Chart.yaml has no appVersion")
}

impl Ctx {
    fn kubectl(&self, args: &[&str]) -> Result<String> {
        self.cluster.control_plane().kubectl_ok(args)
    }

    fn apply(&self, yaml: &str) -> Result<()> {
        self.cluster.control_plane().apply(yaml).map(drop)
    }

    fn helm(&self, args: &[&str]) -> Result<String> {
        let plane = self.cluster.control_plane();
        let out = Command::new(plane.bin_dir().join("helm"))
            .args(args)
            .env("KUBECONFIG", plane.kubeconfig())
            .env("HELM_CONFIG_HOME", self.cluster.dir().join("helm/config"))
            .env("HELM_CACHE_HOME", self.cluster.dir().join("helm/cache"))
            .env("HELM_DATA_HOME", self.cluster.dir().join("helm/data"))
            .current_dir(&self.workspace)
            .output()
            .context("cannot run helm")?;
        ensure!(
            out.status.success(),
            "helm {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `kubectl exec POD -- /bin/busybox sh -c SCRIPT`: its exit code and output, killed
    /// after 60 s.
    fn exec(&self, ns: &str, pod: &str, script: &str) -> Result<(i32, String)> {
        let mut cmd = self.cluster.control_plane().kubectl_command();
        cmd.args([
            "exec",
            "-n",
            ns,
            pod,
            "--",
            "/bin/busybox",
            "sh",
            "-c",
            script,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = cmd.spawn().context("cannot run kubectl exec")?;
        let bound = Duration::from_secs(60) * pace();
        let deadline = Instant::now() + bound;
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("kubectl exec {pod} -- {script}: no answer within {bound:?}");
            }
            thread::sleep(Duration::from_millis(50));
        };
        let mut output = String::new();
        if let Some(mut out) = child.stdout.take() {
            out.read_to_string(&mut output)?;
        }
        if let Some(mut err) = child.stderr.take() {
            err.read_to_string(&mut output)?;
        }
        Ok((status.code().unwrap_or(-1), output))
    }

    /// Runs `script` in the pod, which must exit 0 and print `expected`.
    fn exec_ok(&self, ns: &str, pod: &str, script: &str, expected: &str) -> Result<()> {
        let (code, out) = self.exec(ns, pod, script)?;
        ensure!(
            code == 0 && out.contains(expected),
            "{script}: exit {code}, expected {expected:?} in: {out}"
        );
        Ok(())
    }

    /// The name of the one Running pod with `selector` in `ns`.
    fn pod(&self, ns: &str, selector: &str) -> Result<String> {
        self.ready_pod(ns, selector)
            .with_context(|| self.describe_pods(ns, selector))
    }

    /// What the cluster says of the pods with `selector`: their events and their last log
    /// lines, for a test that waited for them in vain.
    fn describe_pods(&self, ns: &str, selector: &str) -> String {
        let said = |args: &[&str]| {
            self.kubectl(args)
                .unwrap_or_else(|err| format!("kubectl {}: {err:#}", args.join(" ")))
        };
        let describe = said(&["describe", "pods", "-n", ns, "-l", selector]);
        let logs = said(&["logs", "-n", ns, "-l", selector, "--tail=20"]);
        // A container that keeps restarting says why in its last run, not in the new one.
        let previous = said(&["logs", "-n", ns, "-l", selector, "--previous", "--tail=40"]);
        format!(
            "pods {selector} in {ns}:\n{describe}\nlast log lines:\n{logs}\n\
             last log lines of the previous run:\n{previous}"
        )
    }

    fn ready_pod(&self, ns: &str, selector: &str) -> Result<String> {
        wait(&format!("a ready pod {selector} in {ns}"), || {
            let out = self.kubectl(&["get", "pods", "-n", ns, "-l", selector, "-o", "json"])?;
            let list: Value = serde_json::from_str(&out)?;
            Ok(list["items"].as_array().and_then(|items| {
                items.iter().find_map(|pod| {
                    let ready = pod["status"]["conditions"]
                        .as_array()?
                        .iter()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True");
                    let deleting = !pod["metadata"]["deletionTimestamp"].is_null();
                    (ready && !deleting)
                        .then(|| pod["metadata"]["name"].as_str().map(str::to_owned))
                        .flatten()
                })
            }))
        })
    }

    /// Every CloudEvent the agent printed so far (its container's stdout).
    fn events(&self) -> Result<Vec<Value>> {
        let pod = self.pod(AGENT_NS, "app.kubernetes.io/name=vigil")?;
        let out = self.kubectl(&["logs", "-n", AGENT_NS, &pod])?;
        Ok(out
            .lines()
            .filter(|l| l.starts_with('{'))
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect())
    }

    /// Waits for the first event that `matches`.
    fn event(&self, what: &str, matches: impl Fn(&Value) -> bool) -> Result<Value> {
        wait(what, || Ok(self.events()?.into_iter().find(|e| matches(e))))
    }

    /// Creates namespace `ns` and a RuntimePolicy `name` in it selecting pods labelled
    /// `app: APP`, with `rules` (YAML at the level of `podSelector`), and waits until this
    /// node's agent reports it enforced.
    fn policy(&self, ns: &str, name: &str, app: &str, rules: &str) -> Result<()> {
        self.namespace(ns)?;
        self.apply(&format!(
            "apiVersion: vigil.dev/v1alpha1\nkind: RuntimePolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  podSelector: {{matchLabels: {{app: {app}}}}}\n{rules}"
        ))?;
        wait(
            &format!("policy {ns}/{name} to be enforced on this node"),
            || {
                let status = self.kubectl(&[
                    "get",
                    "runtimepolicy",
                    "-n",
                    ns,
                    name,
                    "-o",
                    "jsonpath={.status.nodes[0].conditions[0].reason}",
                ])?;
                Ok((status == "Valid").then_some(()))
            },
        )
    }

    /// [`Ctx::policy`], then a Deployment `app` of one pod sleeping under it, bound by the
    /// agent; returns the pod's name.
    fn policed_pod(&self, ns: &str, policy: &str, app: &str, rules: &str) -> Result<String> {
        self.policy(ns, policy, app, rules)?;
        let pod = self.deployment(ns, app, &["/bin/busybox", "sleep", "100000"])?;
        self.wait_bound(ns, &pod)?;
        Ok(pod)
    }

    /// Waits until the agent has bound `pod`'s cgroup to its policies (it logs every pod
    /// cgroup it binds, `pod<uid>`): from then on the kernel decides for it.
    fn wait_bound(&self, ns: &str, pod: &str) -> Result<()> {
        let uid = self.kubectl(&[
            "get",
            "pod",
            "-n",
            ns,
            pod,
            "-o",
            "jsonpath={.metadata.uid}",
        ])?;
        let agent = self.pod(AGENT_NS, "app.kubernetes.io/name=vigil")?;
        wait(&format!("pod {ns}/{pod} to be bound"), || {
            let log = self.kubectl(&["logs", "-n", AGENT_NS, &agent])?;
            Ok(log
                .lines()
                .any(|l| l.contains("policies in force") && l.contains(&format!("pod{uid}")))
                .then_some(()))
        })
    }

    fn namespace(&self, ns: &str) -> Result<()> {
        self.apply(&format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n"
        ))
    }

    /// A one-replica Deployment of the workload image running `command`.
    fn deployment(&self, ns: &str, app: &str, command: &[&str]) -> Result<String> {
        self.deployment_with(ns, app, command, "")
    }

    /// [`Ctx::deployment`] with an emptyDir volume mounted at `/scratch`.
    fn deployment_with_scratch(&self, ns: &str, app: &str, command: &[&str]) -> Result<String> {
        self.deployment_with(
            ns,
            app,
            command,
            "          volumeMounts: [{name: scratch, mountPath: /scratch}]\n      volumes: [{name: scratch, emptyDir: {}}]\n",
        )
    }

    /// [`Ctx::deployment`] with `more` (YAML) after the container's command.
    fn deployment_with(&self, ns: &str, app: &str, command: &[&str], more: &str) -> Result<String> {
        let command = serde_json::to_string(command)?;
        self.apply(&format!(
            r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: {app}, namespace: {ns}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: {app}}}}}
  template:
    metadata: {{labels: {{app: {app}}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
        - name: main
          image: {WORKLOAD_IMAGE}:{tag}
          imagePullPolicy: Never
          command: {command}
{more}"#,
            tag = self.tag
        ))?;
        self.pod(ns, &format!("app={app}"))
    }
}

/// How many times slower than this machine the node runs: `VIGIL_NODE_PACE` (a whole number,
/// default 1), which the pure cgroup v2 guest sets because it runs under emulation. The
/// waits are liveness bounds, so they stretch with it.
fn pace() -> u32 {
    std::env::var("VIGIL_NODE_PACE")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n >= 1)
        .unwrap_or(1)
}

/// Polls `check` every 500 ms until it yields a value, for at most [`WAIT`].
fn wait<T>(what: &str, mut check: impl FnMut() -> Result<Option<T>>) -> Result<T> {
    let bound = WAIT * pace();
    let deadline = Instant::now() + bound;
    let mut last_error = None;
    loop {
        match check() {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(err) => last_error = Some(err),
        }
        if Instant::now() > deadline {
            bail!(
                "timed out after {bound:?} waiting for {what}{}",
                last_error
                    .map(|e| format!(" (last error: {e:#})"))
                    .unwrap_or_default()
            );
        }
        thread::sleep(Duration::from_millis(500));
    }
}

fn data<'a>(event: &'a Value, pointer: &str) -> &'a Value {
    event["data"].pointer(pointer).unwrap_or(&Value::Null)
}

/// The capability names in a `/proc/PID/status` mask.
fn capability_names(mask: u64) -> Vec<&'static str> {
    const NAMES: [(u32, &str); 6] = [
        (2, "CAP_DAC_READ_SEARCH"),
        (12, "CAP_NET_ADMIN"),
        (19, "CAP_SYS_PTRACE"),
        (21, "CAP_SYS_ADMIN"),
        (38, "CAP_PERFMON"),
        (39, "CAP_BPF"),
    ];
    let mut names = Vec::new();
    for bit in 0..64 {
        if mask & (1 << bit) != 0 {
            names.push(
                NAMES
                    .iter()
                    .find(|(b, _)| *b == bit)
                    .map_or("(another capability)", |(_, n)| *n),
            );
        }
    }
    names
}

/// The host pid of the agent's process, found by its container's cgroup.
fn agent_pid(ctx: &Ctx) -> Result<u32> {
    let pod = ctx.pod(AGENT_NS, "app.kubernetes.io/name=vigil")?;
    container_process(ctx, AGENT_NS, &pod, "vigil")
}

/// The host pid of the process named `comm` in `pod`'s (first) container, found by the
/// container's cgroup.
fn container_process(ctx: &Ctx, ns: &str, pod: &str, comm: &str) -> Result<u32> {
    let status = ctx.kubectl(&[
        "get",
        "pod",
        "-n",
        ns,
        pod,
        "-o",
        "jsonpath={.status.containerStatuses[0].containerID}",
    ])?;
    let id = status
        .strip_prefix("containerd://")
        .context("a containerd container id")?
        .to_owned();
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(cgroup) = std::fs::read_to_string(entry.path().join("cgroup")) else {
            continue;
        };
        let name = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if cgroup.contains(&id) && name.trim() == comm {
            return Ok(pid);
        }
    }
    bail!("no {comm} process in container {id}")
}

fn helm_install_brings_the_agent_to_ready_with_the_charts_capabilities_only(
    ctx: &Ctx,
) -> Result<()> {
    let start = Instant::now();
    let installed = ctx.helm(&[
        "install",
        "vigil",
        "charts/vigil",
        "-n",
        AGENT_NS,
        "--create-namespace",
        "--set",
        "image.repository=docker.io/library/vigil",
    ])?;
    // The chart's NOTES tell the operator how to see the agent ready and an event.
    ensure!(
        installed.contains(&format!(
            "kubectl -n {AGENT_NS} rollout status daemonset/vigil"
        )) && installed.contains("grep dev.vigil.exec.v1"),
        "helm install did not print the chart's notes: {installed}"
    );
    let pod = ctx.pod(AGENT_NS, "app.kubernetes.io/name=vigil")?;
    println!(
        "  helm install -> agent pod {pod} Ready in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    let spec: Value =
        serde_json::from_str(&ctx.kubectl(&["get", "pod", "-n", AGENT_NS, &pod, "-o", "json"])?)?;
    let security = &spec["spec"]["containers"][0]["securityContext"];
    ensure!(
        security["privileged"] == false,
        "not privileged: {security}"
    );
    ensure!(
        spec["spec"]["serviceAccountName"] == "vigil",
        "the chart's ServiceAccount: {}",
        spec["spec"]["serviceAccountName"]
    );
    let pid = agent_pid(ctx)?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let mask = |field: &str| -> Result<u64> {
        let hex = status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .context(field.to_owned())?;
        Ok(u64::from_str_radix(hex.trim(), 16)?)
    };
    let mut effective = capability_names(mask("CapEff:")?);
    let mut bounding = capability_names(mask("CapBnd:")?);
    let mut expected = CHART_CAPABILITIES.to_vec();
    effective.sort_unstable();
    bounding.sort_unstable();
    expected.sort_unstable();
    println!("  the agent runs with {effective:?}");
    ensure!(
        effective == expected,
        "effective {effective:?}, chart {expected:?}"
    );
    ensure!(
        bounding == expected,
        "bounding {bounding:?}, chart {expected:?}"
    );
    // Whether BPF LSM can refuse before the act is the node's word (its securityfs, which
    // the chart mounts), not a guess: Debian 12's 6.12 kernel runs it by default.
    let log = ctx.kubectl(&["logs", "-n", AGENT_NS, &pod])?;
    let prevention = log
        .lines()
        .find(|l| l.contains("BPF LSM"))
        .context("the agent's log says nothing of BPF LSM")?;
    println!("  {}", prevention.trim());
    ensure!(
        !prevention.contains("cannot read the active LSMs"),
        "the agent could not read the node's LSMs: {prevention}"
    );
    if let Ok(node_lsms) = std::fs::read_to_string("/sys/kernel/security/lsm") {
        let bpf = node_lsms.trim().split(',').any(|l| l == "bpf");
        ensure!(
            bpf || prevention.contains("bpf is not among the active LSMs"),
            "the node's LSMs are {node_lsms:?}, the agent says: {prevention}"
        );
    }
    // Everything it knows of the cluster came through that ServiceAccount's token: it has
    // seen this node's pods (the DaemonSet's own among them) and serves ready.
    let ready = ctx.exec(
        "default",
        &ctx.deployment("default", "probe", &["/bin/busybox", "sleep", "100000"])?,
        &format!(
            "/bin/busybox wget -q -O- http://{}:9464/readyz",
            ctx.kubectl(&[
                "get",
                "pod",
                "-n",
                AGENT_NS,
                &pod,
                "-o",
                "jsonpath={.status.podIP}"
            ])?
        ),
    )?;
    ensure!(ready.0 == 0, "readyz from a pod: {ready:?}");
    Ok(())
}

fn a_binary_copied_into_a_deployment_pod_is_killed_and_named_as_the_container_sees_it(
    ctx: &Ctx,
) -> Result<()> {
    let ns = "e2e-exec";
    let rules =
        "  exec:\n    allow: [{path: /bin/busybox}, {path: /usr/bin/grep}]\n    action: Kill\n";
    let pod = ctx.policed_pod(ns, "only-busybox", "shop", rules)?;
    // The allowed binary runs in the same pod.
    ctx.exec_ok(ns, &pod, "/bin/busybox echo allowed", "allowed")?;
    let (code, out) = ctx.exec(
        ns,
        &pod,
        // The shell stays a moment after the kill: the report names it as the parent.
        "/bin/busybox mkdir -p /tmp && /bin/busybox cp /bin/busybox /tmp/shell && /tmp/shell echo escaped; echo rc=$?; /bin/busybox sleep 2",
    )?;
    ensure!(
        out.contains("rc=137") && !out.contains("escaped\n"),
        "/tmp/shell must die by SIGKILL (rc 137): {code} {out}"
    );
    let event = ctx.event("the exec violation", |e| {
        e["type"] == "dev.vigil.exec.v1" && data(e, "/exec/path") == "/tmp/shell"
    })?;
    let pod_uid = ctx.kubectl(&[
        "get",
        "pod",
        "-n",
        ns,
        &pod,
        "-o",
        "jsonpath={.metadata.uid}",
    ])?;
    // Where BPF LSM runs, Kill refuses the exec before it happens and then kills: the
    // process reported is still the shell's child that tried it. Elsewhere it is the new image.
    let prevents = ctx
        .kubectl(&[
            "logs",
            "-n",
            AGENT_NS,
            &ctx.pod(AGENT_NS, "app.kubernetes.io/name=vigil")?,
        ])?
        .contains("BPF LSM refuses denied execs");
    ensure!(
        (event["data"]["exec"]["prevented"] == true) == prevents,
        "exec.prevented should be {prevents} (BPF LSM refusing here: {prevents}): {event}"
    );
    let process_exe = if prevents {
        "/bin/busybox"
    } else {
        "/tmp/shell"
    };
    for (pointer, want) in [
        ("/pod/name", pod.as_str()),
        ("/pod/namespace", ns),
        ("/pod/uid", pod_uid.as_str()),
        ("/pod/owner/kind", "Deployment"),
        ("/pod/owner/name", "shop"),
        ("/container/name", "main"),
        ("/process/exe", process_exe),
        ("/policy/name", "only-busybox"),
        ("/parent/exe", "/bin/busybox"),
    ] {
        ensure!(
            data(&event, pointer) == want,
            "{pointer} should be {want}: {event}"
        );
    }
    ensure!(
        data(&event, "/container/image") == format!("{WORKLOAD_IMAGE}:{}", ctx.tag).as_str(),
        "image: {event}"
    );
    ensure!(
        event["vigilaction"] == "kill" && event["vigilverdict"] == "violation",
        "{event}"
    );
    ensure!(
        event["subject"] == format!("namespaces/{ns}/pods/{pod}").as_str(),
        "subject: {event}"
    );
    // The allowed run made no event.
    let allowed = ctx
        .events()?
        .into_iter()
        .filter(|e| {
            e["type"] == "dev.vigil.exec.v1"
                && data(e, "/pod/namespace") == ns
                && data(e, "/exec/path") != "/tmp/shell"
        })
        .count();
    ensure!(allowed == 0, "{allowed} events for allowed binaries");
    Ok(())
}

/// `exec.drift: Deny` under Kill: whatever did not come with the image is killed before it
/// runs, however it got there (written to the writable layer, copied onto an emptyDir,
/// an image file overwritten in place, a library preloaded from a writable place, a script
/// written at run time, a read-only bind of a written file made in a user namespace of its
/// own), and reported as drift with where it sits; the image's own binaries,
/// libraries and scripts run untouched.
fn drift_in_a_pod_is_killed_wherever_it_sits_and_the_images_own_files_run(ctx: &Ctx) -> Result<()> {
    let ns = "e2e-drift";
    let app = "drifty";
    let rules = "  exec:\n    drift: Deny\n    action: Kill\n";
    ctx.policy(ns, "no-drift", app, rules)?;
    let pod = ctx.deployment_with_scratch(ns, app, &["/bin/busybox", "sleep", "100000"])?;
    ctx.wait_bound(ns, &pod)?;
    // The benign twins: the image's own binary, a dynamic one with the image's loader and
    // libraries, and the image's script run by the image's shell.
    ctx.exec_ok(ns, &pod, "/bin/busybox echo image-binary", "image-binary")?;
    ctx.exec_ok(ns, &pod, "echo abc | /usr/bin/grep b", "abc")?;
    ctx.exec_ok(ns, &pod, IMAGE_SCRIPT, "from-the-image")?;
    let bb = "/bin/busybox";
    // (what, script, the reported path, the layer, whether it is a mapping)
    // Each payload prints "escaped" if it runs: busybox copies are named after its `echo`
    // and `grep` applets, which it runs by the name it was started as.
    let attacks = [
        (
            "a binary copied into the writable layer",
            format!("{bb} mkdir -p /tmp && {bb} cp {bb} /tmp/echo && /tmp/echo escaped"),
            "/tmp/echo",
            "upperLayer",
            false,
        ),
        (
            "a binary copied onto an emptyDir",
            format!("{bb} cp {bb} /scratch/echo && /scratch/echo escaped"),
            "/scratch/echo",
            "writableMount",
            false,
        ),
        (
            "a script written at run time, for the image's shell",
            format!(
                "{bb} printf '#!{bb} sh\\necho escaped\\n' > /tmp/run.sh && {bb} chmod +x /tmp/run.sh && /tmp/run.sh"
            ),
            "/tmp/run.sh",
            "upperLayer",
            false,
        ),
        (
            "a library written at run time, preloaded into an image binary",
            format!(
                "{bb} cp {IMAGE_LIBRARY} /tmp/libdrift.so && echo abc | LD_PRELOAD=/tmp/libdrift.so /usr/bin/grep b && echo escaped"
            ),
            "/tmp/libdrift.so",
            "upperLayer",
            true,
        ),
        (
            "a file behind a read-only bind made in a user namespace of its own",
            format!(
                "{bb} mkdir -p /scratch/rw /tmp/ro && {bb} cp {bb} /scratch/rw/echo && {bb} unshare -Urm {bb} sh -c '{bb} mount --bind /scratch/rw /tmp/ro && {bb} mount -o remount,ro,bind /tmp/ro && /tmp/ro/echo escaped'"
            ),
            "/tmp/ro/echo",
            "writableMount",
            false,
        ),
        (
            "a file on an overlay mounted in a user namespace of its own, from its lower layer",
            format!(
                "{bb} mkdir -p /scratch/l /scratch/l2 /tmp/m && {bb} cp {bb} /scratch/l/echo && {bb} unshare -Urm {bb} sh -c '{bb} mount -t overlay -o lowerdir=/scratch/l:/scratch/l2 overlay /tmp/m 2>&1 && /tmp/m/echo escaped'"
            ),
            "/tmp/m/echo",
            "writableMount",
            false,
        ),
        (
            "a file written at run time, made executable by a loader of its own",
            format!(
                "{bb} cp /usr/bin/grep /tmp/loaded && {SCENARIO} mprotect-file-exec /tmp/loaded && echo escaped"
            ),
            SCENARIO,
            "writableMount",
            true,
        ),
        // The loader, rewritten with its own bytes (a copy-up): every dynamic program of the
        // image would run the writable layer's copy. The record has no path (the kernel
        // mapped it; the area's file is the layer's underlying one).
        (
            "the image's dynamic loader rewritten in place",
            format!(
                "{bb} cat /lib64/ld-linux-x86-64.so.2 > /tmp/ld && {bb} cat /tmp/ld > /lib64/ld-linux-x86-64.so.2 && echo escaped | /usr/bin/grep escaped"
            ),
            "",
            "writableMount",
            true,
        ),
        // Last: it replaces the image's grep in this container.
        (
            "an image binary overwritten in place",
            format!("{bb} cat {bb} > /usr/bin/grep && echo escaped | /usr/bin/grep escaped"),
            "/usr/bin/grep",
            "upperLayer",
            false,
        ),
    ];
    for (what, script, path, layer, mapped) in attacks {
        let (code, out) = ctx.exec(ns, &pod, &format!("{script}; echo rc=$?"))?;
        ensure!(
            out.contains("rc=137") && !out.contains("escaped\n"),
            "{what}: must die by SIGKILL (rc 137): exit {code}: {out}"
        );
        let event = ctx.event(&format!("the drift violation of {what}"), |e| {
            e["type"] == "dev.vigil.exec.v1"
                && data(e, "/pod/namespace") == ns
                && (data(e, "/exec/path") == path || data(e, "/process/exe") == path)
                && data(e, "/exec/mapped").as_bool().unwrap_or(false) == mapped
        })?;
        let exec = data(&event, "/exec");
        ensure!(
            exec["drift"] == true
                && exec["origin"]["layer"] == layer
                && exec["mapped"].as_bool().unwrap_or(false) == mapped
                && event["vigilaction"] == "kill"
                && data(&event, "/policy/rule") == "spec.exec.drift"
                && data(&event, "/pod/name") == pod.as_str(),
            "{what}: a kill for drift in the {layer} of pod {pod}: {event}"
        );
        ensure!(
            exec["origin"]["inode"].as_u64().is_some_and(|i| i > 0)
                && exec["origin"]["device"]
                    .as_str()
                    .is_some_and(|d| d.contains(':')),
            "{what}: where the file lives: {event}"
        );
    }
    // The image's own files made no event: every one in the namespace is an attack's.
    let benign = ctx
        .events()?
        .into_iter()
        .filter(|e| e["type"] == "dev.vigil.exec.v1" && data(e, "/pod/namespace") == ns)
        .filter(|e| data(e, "/exec/drift") != true)
        .collect::<Vec<_>>();
    let benign = benign.len();
    ensure!(benign == 0, "{benign} events for the image's own files");
    Ok(())
}

/// `exec.allow` `sha256` entries under `drift: Deny` + Kill: a tool copied onto an emptyDir at
/// start-up whose content matches runs, first decided by a fresh hash and then again, and a
/// copy in the writable layer too; the same path with other content is drift, killed with
/// its digest in the event, and so is such a file continued by someone else while held.
fn a_tool_vouched_for_by_sha256_runs_wherever_it_sits_and_other_content_there_is_drift(
    ctx: &Ctx,
) -> Result<()> {
    let ns = "e2e-digest";
    let app = "vendored";
    let bb = "/bin/busybox";
    ctx.namespace(ns)?;
    let pod = ctx.deployment_with_scratch(
        ns,
        app,
        &[
            bb,
            "sh",
            "-c",
            "/bin/busybox cp /bin/busybox /scratch/echo && exec /bin/busybox sleep 100000",
        ],
    )?;
    let (_, sums) = ctx.exec(ns, &pod, &format!("{bb} sha256sum {bb}"))?;
    let digest = sums
        .split_whitespace()
        .next()
        .filter(|d| d.len() == 64)
        .with_context(|| format!("busybox's digest: {sums}"))?
        .to_owned();
    let rules = format!(
        "  exec:\n    drift: Deny\n    allow:\n      - sha256: {digest}\n    action: Kill\n"
    );
    ctx.policy(ns, "vouched-tool", app, &rules)?;
    ctx.wait_bound(ns, &pod)?;
    // The benign twins: the copy made at start-up, twice (the second from the kernel's
    // cache), the same content copied into the writable layer, and the image's own binary.
    ctx.exec_ok(ns, &pod, "/scratch/echo vouched-once", "vouched-once")?;
    ctx.exec_ok(ns, &pod, "/scratch/echo vouched-twice", "vouched-twice")?;
    ctx.exec_ok(
        ns,
        &pod,
        &format!("{bb} mkdir -p /tmp && {bb} cp {bb} /tmp/echo && /tmp/echo in-the-layer"),
        "in-the-layer",
    )?;
    ctx.exec_ok(ns, &pod, &format!("{bb} echo image-binary"), "image-binary")?;
    // Other content at the vouched path: busybox with a byte more still runs as busybox.
    let (code, out) = ctx.exec(
        ns,
        &pod,
        &format!(
            "{bb} cp {bb} /tmp/other && echo >> /tmp/other && {bb} cat /tmp/other > /scratch/echo && /scratch/echo escaped; echo rc=$?"
        ),
    )?;
    ensure!(
        out.contains("rc=137") && !out.contains("escaped\n"),
        "other content at the vouched path must die by SIGKILL: exit {code}: {out}"
    );
    let (_, other) = ctx.exec(ns, &pod, &format!("{bb} sha256sum /tmp/other"))?;
    let other = other
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned();
    let event = ctx.event("the drift violation of other content", |e| {
        e["type"] == "dev.vigil.exec.v1"
            && data(e, "/pod/namespace") == ns
            && data(e, "/exec/sha256") == other.as_str()
    })?;
    let exec = data(&event, "/exec");
    ensure!(
        exec["drift"] == true
            && exec["origin"]["layer"] == "writableMount"
            && event["vigilaction"] == "kill"
            && data(&event, "/policy/rule") == "spec.exec.drift"
            && data(&event, "/process/exe") == "/scratch/echo",
        "a kill for drift, identified by content: {event}"
    );
    // Held, then continued by another process of the pod before the agent decides: it dies
    // at its first system call if the agent has not killed it first.
    let (code, out) = ctx.exec(
        ns,
        &pod,
        &format!(
            "{bb} cp /tmp/other /scratch/again; /scratch/again sleep 30 & p=$!; {bb} kill -CONT $p; wait $p; echo rc=$?"
        ),
    )?;
    ensure!(
        out.contains("rc=137"),
        "a held process continued by another must die: exit {code}: {out}"
    );
    // The vouched runs made no event. The continued copy's kill may be reported without a
    // digest: when its first system call killed it before the agent read its executable, it
    // could not be hashed (drift, `unverifiable`).
    let vouched: Vec<String> = ctx
        .events()?
        .into_iter()
        .filter(|e| e["type"] == "dev.vigil.exec.v1" && data(e, "/pod/namespace") == ns)
        .filter(|e| data(e, "/exec/sha256") != other.as_str())
        .filter(|e| data(e, "/process/exe") != "/scratch/again")
        .map(|e| format!("{} {}", data(&e, "/process"), data(&e, "/exec")))
        .collect();
    ensure!(
        vouched.is_empty(),
        "{} events for content vouched for: {vouched:#?}",
        vouched.len()
    );
    Ok(())
}

fn an_edited_policy_takes_effect_and_its_status_shows_this_nodes_verdict(ctx: &Ctx) -> Result<()> {
    let ns = "e2e-exec";
    let pod = ctx.pod(ns, "app=shop")?;
    ctx.kubectl(&[
        "patch",
        "runtimepolicy",
        "-n",
        ns,
        "only-busybox",
        "--type=json",
        "-p",
        r#"[{"op":"add","path":"/spec/exec/allow/-","value":{"path":"/tmp/shell"}}]"#,
    ])?;
    let node = ctx.cluster.node_name().to_owned();
    wait("status for generation 2", || {
        let status: Value = serde_json::from_str(&ctx.kubectl(&[
            "get",
            "runtimepolicy",
            "-n",
            ns,
            "only-busybox",
            "-o",
            "jsonpath={.status}",
        ])?)?;
        let this = status["nodes"]
            .as_array()
            .and_then(|nodes| nodes.iter().find(|n| n["node"] == node.as_str()).cloned());
        Ok(this.filter(|n| n["observedGeneration"] == 2 && n["conditions"][0]["status"] == "True"))
    })?;
    // Busybox run as `shell` looks for an applet of that name: that message proves it ran.
    let (code, out) = ctx.exec(ns, &pod, "/tmp/shell; echo rc=$?")?;
    ensure!(
        out.contains("applet not found") && out.contains("rc=127"),
        "/tmp/shell must run now: {code} {out}"
    );
    Ok(())
}

fn egress_to_a_service_is_allowed_and_to_an_unselected_pod_or_a_deleted_service_is_not(
    ctx: &Ctx,
) -> Result<()> {
    let ns = "e2e-egress";
    ctx.namespace(ns)?;
    let server = "while true; do /bin/busybox echo hi | /bin/busybox nc -l -p 8080; done";
    ctx.deployment(ns, "backend", &["/bin/busybox", "sh", "-c", server])?;
    let lonely = ctx.deployment(ns, "lonely", &["/bin/busybox", "sh", "-c", server])?;
    ctx.apply(&format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: backend, namespace: {ns}}}
spec:
  selector: {{app: backend}}
  ports: [{{port: 80, targetPort: 8080}}]
"#
    ))?;
    ctx.policy(
        ns,
        "services-only",
        "client",
        "  connect:\n    allowServices: true\n    action: Alert\n",
    )?;
    let client = ctx.deployment(ns, "client", &["/bin/busybox", "sleep", "100000"])?;
    ctx.wait_bound(ns, &client)?;
    let cluster_ip = ctx.kubectl(&[
        "get",
        "svc",
        "-n",
        ns,
        "backend",
        "-o",
        "jsonpath={.spec.clusterIP}",
    ])?;
    let lonely_ip = ctx.kubectl(&[
        "get",
        "pod",
        "-n",
        ns,
        &lonely,
        "-o",
        "jsonpath={.status.podIP}",
    ])?;
    let connect = |ip: &str, port: u16| {
        ctx.exec(
            ns,
            &client,
            &format!("echo | /bin/busybox nc -w 3 {ip} {port}"),
        )
    };
    let violation = |ip: String, port: u16| {
        move |e: &Value| {
            e["type"] == "dev.vigil.connect.v1"
                && data(e, "/pod/namespace") == ns
                && data(e, "/connect/daddr") == ip.as_str()
                && data(e, "/connect/dport") == port
        }
    };
    // The Service: allowed once the agent knows it, and the connection really goes through.
    wait("the Service to answer through its ClusterIP", || {
        let (_, out) = connect(&cluster_ip, 80)?;
        Ok(out.contains("hi").then_some(()))
    })?;
    // A pod no Service selects: a violation.
    connect(&lonely_ip, 8080)?;
    let event = ctx.event(
        "the connect violation to the lonely pod",
        violation(lonely_ip.clone(), 8080),
    )?;
    ensure!(
        event["vigilverdict"] == "violation" && data(&event, "/pod/name") == client.as_str(),
        "{event}"
    );
    // The allowed Service connect made none (checked after the violation, so it had time).
    let to_service = ctx
        .events()?
        .iter()
        .filter(|e| violation(cluster_ip.clone(), 80)(e))
        .count();
    ensure!(
        to_service == 0,
        "{to_service} violations for the Service's ClusterIP"
    );
    // Delete the Service: the same ClusterIP is a violation now.
    ctx.kubectl(&["delete", "svc", "-n", ns, "backend"])?;
    wait("a violation for the deleted Service's ClusterIP", || {
        connect(&cluster_ip, 80)?;
        Ok(ctx
            .events()?
            .into_iter()
            .find(|e| violation(cluster_ip.clone(), 80)(e)))
    })?;
    Ok(())
}

fn write_execute_memory_in_a_pod_is_a_violation_except_for_the_listed_jit_runtime(
    ctx: &Ctx,
) -> Result<()> {
    let ns = "e2e-wx";
    let rules = "  memory:\n    writeExecute: Deny\n    allowExecutables: [/usr/bin/grep]\n    action: Alert\n";
    let pod = ctx.policed_pod(ns, "no-wx", "jit", rules)?;
    // The listed JIT runtime compiles its pattern into W+X memory: allowed.
    ctx.exec_ok(ns, &pod, "echo abc | /usr/bin/grep -P 'a.c'", "abc")?;
    // The same program under another name is not the listed executable; Alert lets it run.
    ctx.exec_ok(
        ns,
        &pod,
        "/bin/busybox mkdir -p /tmp && /bin/busybox cp /usr/bin/grep /tmp/pcre && echo abc | /tmp/pcre -P 'a.c'",
        "abc",
    )?;
    let event = ctx.event("the W^X violation", |e| {
        e["type"] == "dev.vigil.wx.v1" && data(e, "/pod/namespace") == ns
    })?;
    // Named although it has exited by now: the record carries the executable the kernel
    // recorded at its exec.
    ensure!(data(&event, "/process/exe") == "/tmp/pcre", "{event}");
    ensure!(data(&event, "/pod/name") == pod.as_str(), "{event}");
    let from_grep = ctx
        .events()?
        .into_iter()
        .filter(|e| e["type"] == "dev.vigil.wx.v1" && data(e, "/process/exe") == "/usr/bin/grep")
        .count();
    ensure!(
        from_grep == 0,
        "{from_grep} W^X events for the listed runtime"
    );
    Ok(())
}

/// The kernel's names for the agent's programs (truncated to 15 bytes).
fn agent_program_names() -> Vec<String> {
    vigil::ebpf::PROGRAMS
        .iter()
        .map(|(name, _)| name.chars().take(15).collect())
        .collect()
}

/// How many loaded programs carry one of the agent's names.
fn agent_programs_loaded() -> Result<usize> {
    let names = agent_program_names();
    let mut count = 0;
    for info in aya::programs::loaded_programs() {
        let info = info.context("listing loaded programs")?;
        if info
            .name_as_str()
            .is_some_and(|name| names.iter().any(|n| n == name))
        {
            count += 1;
        }
    }
    Ok(count)
}

fn helm_uninstall_leaves_no_program_map_or_pin_behind(ctx: &Ctx) -> Result<()> {
    let before = agent_programs_loaded()?;
    ensure!(before > 0, "the agent's programs are loaded while it runs");
    ctx.helm(&[
        "uninstall",
        "vigil",
        "-n",
        AGENT_NS,
        "--wait",
        "--timeout",
        &format!("{}s", 90 * pace()),
    ])?;
    wait("the agent's programs to be unloaded", || {
        Ok((agent_programs_loaded()? == 0).then_some(()))
    })?;
    let pins = Path::new("/sys/fs/bpf/vigil");
    ensure!(!pins.exists(), "{} is left behind", pins.display());
    // Maps go with the last program and pin that holds them, but not at once: the kernel
    // drops an unloaded program's maps after an RCU grace period and frees them from a work
    // queue, which under emulation can trail the program's own removal by seconds.
    let left = || -> Vec<String> {
        let ours = [
            "EMITTER",
            "CGROUP_SETS",
            "POLICY_SETS",
            "EXEC_PATHS",
            "TASK_EXE",
            "EVENTS",
        ];
        aya::maps::loaded_maps()
            .filter_map(Result::ok)
            .filter_map(|m| m.name_as_str().map(str::to_owned))
            .filter(|name| ours.contains(&name.as_str()))
            .collect()
    };
    if wait("the agent's maps to be freed", || {
        Ok(left().is_empty().then_some(()))
    })
    .is_err()
    {
        bail!("maps left behind: {:?}", left());
    }
    Ok(())
}

/// The pinned generations (`gen-<N>` directories) under the chart's pin directory.
fn pinned_generations() -> Vec<String> {
    std::fs::read_dir("/sys/fs/bpf/vigil")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str().map(str::to_owned))
                .filter(|n| n.starts_with("gen-"))
                .collect()
        })
        .unwrap_or_default()
}

/// Follows one pod's log until the pod ends, collecting its lines.
fn follow_log(ctx: &Ctx, pod: &str) -> Result<thread::JoinHandle<String>> {
    kubectl_in_background(ctx, &["logs", "-f", "-n", AGENT_NS, pod])
}

/// Runs kubectl with `args` on a thread of its own; the thread returns its stdout once it
/// ends.
fn kubectl_in_background(ctx: &Ctx, args: &[&str]) -> Result<thread::JoinHandle<String>> {
    let mut cmd = ctx.cluster.control_plane().kubectl_command();
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::null());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("kubectl {}", args.join(" ")))?;
    let mut out = child.stdout.take().context("piped")?;
    Ok(thread::spawn(move || {
        let mut text = String::new();
        let _ = out.read_to_string(&mut text);
        let _ = child.wait();
        text
    }))
}

/// The names of the agent's pods now.
fn agent_pods(ctx: &Ctx) -> Result<Vec<String>> {
    Ok(ctx
        .kubectl(&[
            "get",
            "pods",
            "-n",
            AGENT_NS,
            "-l",
            "app.kubernetes.io/name=vigil",
            "-o",
            "jsonpath={.items[*].metadata.name}",
        ])?
        .split_whitespace()
        .map(str::to_owned)
        .collect())
}

/// Waits until an agent pod not among `old` is Ready and has taken over from the pinned
/// generation before it; returns its name and how long that took.
fn wait_for_takeover(ctx: &Ctx, old: &[String], since: Instant) -> Result<(String, Duration)> {
    let new = wait("a new agent pod to be Ready", || {
        let pod = ctx.pod(AGENT_NS, "app.kubernetes.io/name=vigil")?;
        Ok((!old.contains(&pod)).then_some(pod))
    })?;
    let ready = since.elapsed();
    wait("the new agent to take over the pinned enforcement", || {
        let log = ctx.kubectl(&["logs", "-n", AGENT_NS, &new])?;
        Ok(log
            .contains("took over the enforcement pinned by the previous agent")
            .then_some(()))
    })?;
    Ok((new, ready))
}

fn deleting_the_agent_pod_during_denied_execs_kills_every_one_and_reports_each_once(
    ctx: &Ctx,
) -> Result<()> {
    let ns = "e2e-restart";
    ctx.policy(ns, "only-busybox", "victim", ONLY_BUSYBOX)?;
    let victim = ctx.deployment(ns, "victim", &["/bin/busybox", "sleep", "100000"])?;
    // Each killed try is reported too: counted, to add up the reports below.
    let killed_before = std::cell::Cell::new(0usize);
    wait("the policy to be enforced on this node", || {
        let (_, out) = ctx.exec(ns, &victim, "/bin/busybox mkdir -p /tmp && /bin/busybox cp /bin/busybox /tmp/shell && /tmp/shell true; echo rc=$?")?;
        let killed = out.contains("rc=137");
        killed_before.set(killed_before.get() + usize::from(killed));
        Ok(killed.then_some(()))
    })?;
    let old = ctx.pod(AGENT_NS, "app.kubernetes.io/name=vigil")?;
    let old_log = follow_log(ctx, &old)?;
    // A denied exec every ~50 ms until /tmp/stop appears: "<pid> <exit code>" per attempt.
    let stream = kubectl_in_background(
        ctx,
        &[
            "exec",
            "-n",
            ns,
            &victim,
            "--",
            "/bin/busybox",
            "sh",
            "-c",
            "/bin/busybox rm -f /tmp/stop; while [ ! -e /tmp/stop ]; do /tmp/shell true & p=$!; wait $p; echo \"$p $?\"; /bin/busybox usleep 50000; done",
        ],
    )?;
    thread::sleep(Duration::from_secs(2));
    let deleted = Instant::now();
    ctx.kubectl(&["delete", "pod", "-n", AGENT_NS, &old, "--wait=false"])?;
    let (new, ready_after) = wait_for_takeover(ctx, std::slice::from_ref(&old), deleted)?;
    let took_over_after = deleted.elapsed();
    thread::sleep(Duration::from_secs(2));
    ctx.exec(ns, &victim, "/bin/busybox touch /tmp/stop")?;
    let attempts: Vec<(u32, i32)> = stream
        .join()
        .map_err(|_| anyhow::anyhow!("the stream's reader panicked"))?
        .lines()
        .filter_map(|l| {
            let (pid, rc) = l.split_once(' ')?;
            Some((pid.parse().ok()?, rc.trim().parse().ok()?))
        })
        .collect();
    let survived: Vec<&(u32, i32)> = attempts.iter().filter(|(_, rc)| *rc != 137).collect();
    println!(
        "  {} denied execs; agent replaced: Ready {:.1} s and in charge {:.1} s after the delete; {} not killed",
        attempts.len(),
        ready_after.as_secs_f64(),
        took_over_after.as_secs_f64(),
        survived.len()
    );
    ensure!(attempts.len() >= 20, "the stream ran: {attempts:?}");
    ensure!(
        survived.is_empty(),
        "every denied exec dies by SIGKILL: {survived:?}"
    );
    // Every kill reported exactly once, by the old agent or the new one. The stream's pids
    // are the container's; the reports carry the node's: they are counted, and each
    // report's pid must be unique.
    let old_text = old_log
        .join()
        .map_err(|_| anyhow::anyhow!("the log follower panicked"))?;
    let new_text = ctx.kubectl(&["logs", "-n", AGENT_NS, &new])?;
    let mut reported: std::collections::HashMap<u64, usize> = std::collections::HashMap::new();
    let mut by_new = 0;
    for (text, is_new) in [(&old_text, false), (&new_text, true)] {
        for event in text
            .lines()
            .filter(|l| l.starts_with('{'))
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        {
            if event["type"] == "dev.vigil.exec.v1"
                && data(&event, "/pod/namespace") == ns
                && let Some(pid) = data(&event, "/process/pid").as_u64()
            {
                *reported.entry(pid).or_default() += 1;
                by_new += usize::from(is_new);
            }
        }
    }
    let twice: Vec<(&u64, &usize)> = reported.iter().filter(|(_, n)| **n > 1).collect();
    ensure!(twice.is_empty(), "reported more than once: {twice:?}");
    let kills = attempts.len() + killed_before.get();
    println!(
        "  {kills} kills: {} reported by the old agent, {by_new} by the new one",
        reported.len() - by_new,
    );
    ensure!(
        reported.len() == kills,
        "every kill reported once: {} reports for {kills} kills",
        reported.len()
    );
    ensure!(by_new > 0, "the new agent reports after taking over");
    ensure!(
        pinned_generations().len() == 1,
        "one generation pinned: {:?}",
        pinned_generations()
    );
    Ok(())
}

fn helm_upgrade_replaces_the_agent_and_leaves_one_generation_of_programs(ctx: &Ctx) -> Result<()> {
    let before = agent_programs_loaded()?;
    let generations = pinned_generations();
    ensure!(
        generations.len() == 1,
        "one generation before: {generations:?}"
    );
    let old = ctx.pod(AGENT_NS, "app.kubernetes.io/name=vigil")?;
    let start = Instant::now();
    ctx.helm(&[
        "upgrade",
        "vigil",
        "charts/vigil",
        "-n",
        AGENT_NS,
        "--reuse-values",
        "--set",
        "logLevel=debug",
    ])?;
    let (new, _) = wait_for_takeover(ctx, std::slice::from_ref(&old), start)?;
    let args = ctx.kubectl(&[
        "get",
        "pod",
        "-n",
        AGENT_NS,
        &new,
        "-o",
        "jsonpath={.spec.containers[0].env}",
    ])?;
    ensure!(
        args.contains("debug"),
        "the changed value is in the new pod: {args}"
    );
    let after_generations = pinned_generations();
    ensure!(
        after_generations.len() == 1 && after_generations != generations,
        "one new generation: before {generations:?}, after {after_generations:?}"
    );
    let after = agent_programs_loaded()?;
    ensure!(
        after == before,
        "{after} of the agent's programs loaded after the upgrade, {before} before"
    );
    Ok(())
}

/// The chart's capabilities by the names `values.yaml` uses.
const VALUES_CAPABILITIES: [&str; 5] = [
    "BPF",
    "PERFMON",
    "NET_ADMIN",
    "SYS_PTRACE",
    "DAC_READ_SEARCH",
];

/// The state letter of process `pid` (`/proc/PID/stat`, after the command's closing
/// parenthesis), `None` when there is no such process.
fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// `helm upgrade` with exactly `capabilities`; returns the agent pods it replaces.
fn upgrade_capabilities(ctx: &Ctx, capabilities: &[&str]) -> Result<Vec<String>> {
    let old = agent_pods(ctx)?;
    ctx.helm(&[
        "upgrade",
        "vigil",
        "charts/vigil",
        "-n",
        AGENT_NS,
        "--reuse-values",
        "--set",
        &format!("capabilities={{{}}}", capabilities.join(",")),
    ])?;
    Ok(old)
}

/// An agent pod not among `old` (Ready or not) and its log (the previous run's when it has
/// restarted).
fn new_agent_log(ctx: &Ctx, old: &[String]) -> Result<Option<(String, String)>> {
    let Some(pod) = agent_pods(ctx)?.into_iter().find(|p| !old.contains(p)) else {
        return Ok(None);
    };
    let log = ctx
        .kubectl(&["logs", "-n", AGENT_NS, &pod, "--previous"])
        .or_else(|_| ctx.kubectl(&["logs", "-n", AGENT_NS, &pod]))
        .unwrap_or_default();
    Ok(Some((pod, log)))
}

/// A kill in `ns` (pod `victim`, where /tmp/shell is denied) reported by the agent now
/// running, while the killed process's shell (its parent) still runs.
fn fresh_kill_report(ctx: &Ctx, ns: &str, victim: &str) -> Result<Value> {
    let agent = ctx.pod(AGENT_NS, "app.kubernetes.io/name=vigil")?;
    let seen = ctx
        .kubectl(&["logs", "-n", AGENT_NS, &agent])?
        .lines()
        .count();
    wait("a kill reported by the new agent", || {
        ctx.exec(ns, victim, "/tmp/shell true; /bin/busybox sleep 1")?;
        let log = ctx.kubectl(&["logs", "-n", AGENT_NS, &agent])?;
        Ok(log
            .lines()
            .skip(seen)
            .filter(|l| l.starts_with('{'))
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|e| e["type"] == "dev.vigil.exec.v1" && data(e, "/exec/path") == "/tmp/shell"))
    })
}

fn each_capability_the_chart_grants_is_needed(ctx: &Ctx) -> Result<()> {
    let ns = "e2e-caps";
    let victim = ctx.policed_pod(ns, "only-busybox", "victim", ONLY_BUSYBOX)?;
    ctx.exec(
        ns,
        &victim,
        "/bin/busybox mkdir -p /tmp && /bin/busybox cp /bin/busybox /tmp/shell",
    )?;
    for missing in VALUES_CAPABILITIES {
        let rest: Vec<&str> = VALUES_CAPABILITIES
            .iter()
            .copied()
            .filter(|c| *c != missing)
            .collect();
        let old = upgrade_capabilities(ctx, &rest)?;
        let finding = match missing {
            // Without these the agent cannot load or attach its programs: it stops, saying
            // which, and never turns ready (the previous generation's pins keep enforcing).
            "BPF" | "PERFMON" | "NET_ADMIN" => {
                let (pod, error) = wait(&format!("the agent without {missing} to fail"), || {
                    Ok(new_agent_log(ctx, &old)?.and_then(|(pod, log)| {
                        log.lines()
                            .find(|l| l.starts_with("Error:"))
                            .map(|l| (pod, l.to_owned()))
                    }))
                })?;
                let ready = ctx.kubectl(&[
                    "get",
                    "pod",
                    "-n",
                    AGENT_NS,
                    &pod,
                    "-o",
                    "jsonpath={.status.containerStatuses[0].ready}",
                ])?;
                ensure!(
                    ready == "false",
                    "without {missing} the agent must not be ready"
                );
                let (code, out) = ctx.exec(ns, &victim, "/tmp/shell true; echo rc=$?")?;
                ensure!(
                    out.contains("rc=137"),
                    "the pinned generation keeps killing meanwhile: {code} {out}"
                );
                error
            }
            // Without this the parent's executable cannot be read.
            "SYS_PTRACE" => {
                wait_for_takeover(ctx, &old, Instant::now())?;
                let event = fresh_kill_report(ctx, ns, &victim)?;
                ensure!(
                    data(&event, "/parent/exe").is_null(),
                    "without SYS_PTRACE the parent's exe is unreadable: {event}"
                );
                format!("parent {}", event["data"]["parent"])
            }
            // Without this a cgroup id cannot be turned into its path: no pod.
            _ => {
                wait_for_takeover(ctx, &old, Instant::now())?;
                let event = fresh_kill_report(ctx, ns, &victim)?;
                ensure!(
                    data(&event, "/pod").is_null(),
                    "without DAC_READ_SEARCH the pod is unknown: {event}"
                );
                format!("subject {}", event["subject"])
            }
        };
        println!(
            "  without {missing}: {}",
            finding.chars().take(160).collect::<String>()
        );
        // Back to the chart's set before the next one.
        let replaced = upgrade_capabilities(ctx, &VALUES_CAPABILITIES)?;
        wait_for_takeover(ctx, &replaced, Instant::now())?;
    }
    // The full set again names both.
    let event = fresh_kill_report(ctx, ns, &victim)?;
    ensure!(
        data(&event, "/parent/exe") == "/bin/busybox"
            && data(&event, "/pod/name") == victim.as_str(),
        "with the chart's set: {event}"
    );
    Ok(())
}

/// `helm test`: its pod asks the agent on every node for `/readyz`, as the agent's own
/// ServiceAccount, and passes only when each answered ready.
fn helm_test_asks_every_agent_for_readyz(ctx: &Ctx) -> Result<()> {
    let out = ctx.helm(&["test", "vigil", "-n", AGENT_NS, "--logs", "--timeout", "5m"])?;
    ensure!(
        out.lines().any(|l| l
            .strip_prefix("Phase:")
            .is_some_and(|p| p.trim() == "Succeeded")),
        "helm test did not succeed: {out}"
    );
    ensure!(
        out.contains("1 of 1 agents ready") && out.contains(" ready\n"),
        "the test pod's report: {out}"
    );
    Ok(())
}

/// The agent's CPU time (user + system, in clock ticks) and its resident and peak memory (KiB).
fn agent_usage(pid: u32) -> Result<(u64, u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The fields after the command name, which may hold spaces: utime and stime are the 12th
    // and 13th of them.
    let rest = &stat[stat.rfind(')').context("a /proc stat line")? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = |key: &str| -> Result<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .context(key.to_owned())?
            .parse::<u64>()
            .map_err(Into::into)
    };
    Ok((ticks, kib("VmRSS:")?, kib("VmHWM:")?))
}

/// The agent's share of one core between two samples `secs` apart.
fn cpu_percent(before: u64, after: u64, secs: f64) -> f64 {
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (after - before) as f64 / hz / secs * 100.0
}

/// What the chart's resource requests and limits are sized from: the agent's CPU and memory
/// on this node at rest, then while a pod makes 1,000 distinct connect violations a second
/// for 30 s (each one an event through the pipeline to the stdout sink). Printed, not
/// asserted against a bound: every violation must be reported.
fn the_agents_cpu_and_memory_at_idle_and_under_1000_violations_a_second(ctx: &Ctx) -> Result<()> {
    let ns = "e2e-load";
    let rules = "  connect:\n    deny: [{cidr: 127.0.0.0/8}]\n    action: Alert\n";
    let pod = ctx.policed_pod(ns, "loopback-alert", "load", rules)?;
    let pid = agent_pid(ctx)?;
    let idle_secs = 20.0;
    let (t0, _, _) = agent_usage(pid)?;
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(idle_secs));
    let (t1, idle_rss, _) = agent_usage(pid)?;
    let idle_cpu = cpu_percent(t0, t1, start.elapsed().as_secs_f64());

    let alerts_before = connect_alerts(ctx)?;
    let start = Instant::now();
    let (code, out) = ctx.exec(ns, &pod, &format!("{SCENARIO} bench-udp-paced 1000 30"))?;
    let took = start.elapsed().as_secs_f64();
    let (t2, load_rss, peak) = agent_usage(pid)?;
    ensure!(code == 0, "the load generator failed: {out}");
    let sent: u64 = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("sent="))
        .context("sent=")?
        .parse()?;
    let load_cpu = cpu_percent(t1, t2, took);
    // Counted by the agent's own metrics: 30,000 events are more than the kubelet keeps of a
    // container's log.
    let all = wait("every violation of the load reported", || {
        let n = connect_alerts(ctx)? - alerts_before;
        Ok((n >= sent).then_some(n))
    })?;
    println!(
        "  agent at rest: {idle_cpu:.1}% of a core, RSS {:.1} MiB",
        idle_rss as f64 / 1024.0
    );
    println!(
        "  agent under {:.0} violations/s for {took:.0} s ({sent} sent, {all} reported): {load_cpu:.1}% of a core, RSS {:.1} MiB, peak {:.1} MiB",
        sent as f64 / took,
        load_rss as f64 / 1024.0,
        peak as f64 / 1024.0
    );
    ensure!(all == sent, "{all} violations reported of {sent}");
    Ok(())
}

/// `vigil_events_total` for connect alerts, from the agent's `/metrics` (through the API
/// server's proxy to its pod).
fn connect_alerts(ctx: &Ctx) -> Result<u64> {
    let pod = ctx.pod(AGENT_NS, "app.kubernetes.io/name=vigil")?;
    let text = ctx.kubectl(&[
        "get",
        "--raw",
        &format!("/api/v1/namespaces/{AGENT_NS}/pods/{pod}:9464/proxy/metrics"),
    ])?;
    let series =
        "vigil_events_total{behaviour=\"connect\",verdict=\"violation\",action=\"alert\"} ";
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix(series))
        .map_or(Ok(0), str::parse)?)
}
