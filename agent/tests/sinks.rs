//! The configuration file and the sinks it names, through the `vigil` binary: `vigil config
//! check`, and `vigil run --config` delivering a violation to a file sink while a filtered
//! sink stays quiet.
#[expect(
    dead_code,
    reason = "the helpers are shared by several test binaries; each uses a part"
)]
mod common;
#[path = "support/python.rs"]
mod python;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
};

use common::{TestCgroup, Tracer, is, root_or_skip, schema_errors, vigil_bin};

fn check(file: &std::path::Path) -> std::process::Output {
    Command::new(vigil_bin())
        .args(["config", "check"])
        .arg(file)
        .output()
        .expect("running vigil config check")
}

#[test]
fn config_check_names_the_sinks_or_every_error_and_never_a_secret() {
    let dir = tempfile::tempdir().unwrap();
    let hook = dir.path().join("slack-url");
    std::fs::write(
        &hook,
        "https://hooks.chat.example/services/T0/B0/sekrit-part\n",
    )
    .unwrap();
    let good = dir.path().join("good.yaml");
    std::fs::write(
        &good,
        format!(
            "sinks:\n  - {{name: archive, type: file, path: {}/events.jsonl}}\n  - {{name: chat, type: slack, webhookUrlFile: {}}}\n",
            dir.path().display(),
            hook.display()
        ),
    )
    .unwrap();
    let out = check(&good);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("sink archive (file)") && stdout.contains("sink chat (slack)"),
        "{stdout}"
    );

    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        format!(
            "sinks:\n  - {{name: archive, type: file, path: relative.jsonl}}\n  - {{name: chat, type: slack, webhookUrlFile: {}, colour: red}}\n  - {{name: hec, type: splunk-hec, url: 'https://s.example:8088', tokenEnv: VIGIL_TEST_UNSET_TOKEN}}\n",
            hook.display()
        ),
    )
    .unwrap();
    let out = check(&bad);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let prefix = format!("{}: ", bad.display());
    for field in ["sinks[0].path", "sinks[1].colour", "sinks[2].tokenEnv"] {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(&format!("{prefix}{field}: "))),
            "no error for {field}:\n{stdout}"
        );
    }
    let all = format!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(!all.contains("sekrit"), "a secret was printed:\n{all}");
}

#[test]
fn run_refuses_a_bad_config_before_loading_anything() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "sinks:\n  - {name: x, type: carrier-pigeon}\n").unwrap();
    let out = Command::new(vigil_bin())
        .args(["run", "--config"])
        .arg(&bad)
        .output()
        .expect("running vigil run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{}: sinks[0].type: unknown sink type `carrier-pigeon`",
            bad.display()
        )),
        "{stderr}"
    );
    assert!(stderr.contains("the configuration is refused"), "{stderr}");
}

/// A kernel test's own cgroup and scratch directory, with a file sink's path in it.
struct Scene {
    cg: TestCgroup,
    tmp: tempfile::TempDir,
    /// Where a `file` sink named in the test's configuration writes.
    archive: PathBuf,
}

impl Scene {
    /// `None` (with the reason printed) where the test cannot run.
    fn new(name: &str) -> Option<Self> {
        if !root_or_skip(name) {
            return None;
        }
        let tmp = tempfile::tempdir().unwrap();
        Some(Self {
            cg: TestCgroup::new(name),
            archive: tmp.path().join("events.jsonl"),
            tmp,
        })
    }

    fn dir(&self) -> &Path {
        self.tmp.path()
    }

    /// `vigil run` enforcing an Alert policy `name` on execs under `denied`, in this scene's
    /// cgroup only, with the sinks of `config` (the configuration file's text).
    fn alerting(
        &self,
        name: &str,
        denied: &str,
        config: &str,
        envs: &[(&str, &std::ffi::OsStr)],
    ) -> Tracer {
        self.enforcing(
            name,
            &format!("exec:\n    deny: [{{prefix: \"{denied}/\"}}]\n    action: Alert\n"),
            config,
            envs,
        )
    }

    /// [`Self::alerting`] with more arguments for `vigil run`.
    fn alerting_with(&self, name: &str, denied: &str, config: &str, args: &[&str]) -> Tracer {
        self.run(
            name,
            &format!("exec:\n    deny: [{{prefix: \"{denied}/\"}}]\n    action: Alert\n"),
            config,
            &[],
            args,
        )
    }

    /// `vigil run` enforcing policy `name` with `rules` (the spec's sections, indented as
    /// under `spec:`), in this scene's cgroup only, with the sinks of `config`.
    fn enforcing(
        &self,
        name: &str,
        rules: &str,
        config: &str,
        envs: &[(&str, &std::ffi::OsStr)],
    ) -> Tracer {
        self.run(name, rules, config, envs, &[])
    }

    fn run(
        &self,
        name: &str,
        rules: &str,
        config: &str,
        envs: &[(&str, &std::ffi::OsStr)],
        args: &[&str],
    ) -> Tracer {
        let policy = self.dir().join("policy.yaml");
        std::fs::write(
            &policy,
            format!(
                "apiVersion: vigil.dev/v1alpha1\nkind: ClusterRuntimePolicy\nmetadata: {{name: {name}}}\nspec:\n  hostProcesses: {{cgroupPrefixes: [\"{}\"]}}\n  {rules}",
                self.cg.rel
            ),
        )
        .unwrap();
        let file = self.dir().join("config.yaml");
        std::fs::write(&file, config).unwrap();
        let mut all = vec![
            "--watch-interval-ms",
            "100",
            "--policy",
            policy.to_str().unwrap(),
            "--config",
            file.to_str().unwrap(),
        ];
        all.extend_from_slice(args);
        Tracer::run(&all, envs)
    }

    /// Runs `program` (a scenario binary) in the scene's cgroup to write a marker file.
    fn write_marker(&self, program: &Path) -> (u32, std::process::ExitStatus) {
        let marker = self.dir().join("marker");
        common::run_in_cgroup(
            &self.cg.dir,
            program,
            &["write-marker", marker.to_str().unwrap()],
        )
    }

    /// The first event in the file sink that `wanted` picks, waiting for it.
    fn archived(
        &self,
        what: &str,
        wanted: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        common::wait_until(
            what,
            common::liveness(),
            || lines_of(&self.archive).into_iter().find(|e| wanted(e)),
            || format!("file: {:?}", std::fs::read(&self.archive)),
        )
    }
}

/// The JSON lines of the file sink at `path` so far.
fn lines_of(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("every line is JSON"))
        .collect()
}

/// A copy of `/bin/true` named `name` in a `bin` folder of the scene: the folder and the copy.
fn hostile_binary(scene: &Scene, name: &[u8]) -> (PathBuf, PathBuf) {
    use std::os::unix::ffi::OsStrExt;
    let dir = std::fs::canonicalize(scene.dir()).unwrap().join("bin");
    std::fs::create_dir(&dir).unwrap();
    let binary = dir.join(std::ffi::OsStr::from_bytes(name));
    std::fs::copy("/bin/true", &binary).unwrap();
    (dir, binary)
}

#[test]
fn a_violation_reaches_the_file_sink_and_a_filtered_sink_stays_quiet() {
    let Some(scene) = Scene::new("file-sink") else {
        return;
    };
    let (writer, denied) = common::denied_binary(scene.dir());
    // stdout takes only connect events: the exec violation must not reach it.
    let tracer = scene.alerting(
        "file-sink",
        &denied,
        &format!(
            "sinks:\n  - {{name: archive, type: file, path: {}, maxBytes: 1048576, keep: 2}}\n  - {{name: console, type: stdout, format: json, types: [dev.vigil.connect.v1]}}\n",
            scene.archive.display()
        ),
        &[],
    );
    let (pid, status) = scene.write_marker(&writer);
    assert!(status.success(), "Alert never kills");
    let line = scene.archived("the violation in the file sink", |e| {
        is(e, "dev.vigil.exec.v1", pid)
    });
    assert_eq!(line["vigilaction"], "alert");
    assert_eq!(line["data"]["policy"]["rule"], "spec.exec.deny[0]");
    let errors = schema_errors(&line);
    assert!(errors.is_empty(), "{errors:?}");
    let events = tracer.stop();
    assert!(
        !events.iter().any(|e| is(e, "dev.vigil.exec.v1", pid)),
        "the stdout sink takes only connect events"
    );
}

#[test]
fn a_binary_with_a_hostile_name_reaches_the_file_sink_as_valid_json_shown_byte_for_byte() {
    let Some(scene) = Scene::new("hostile-name") else {
        return;
    };
    // An escape sequence, a Slack mention, a right-to-left override, a byte that is not UTF-8.
    let (dir, binary) = hostile_binary(&scene, b"x\x1b[2J<!channel>\xe2\x80\xaegpj.\xff");
    let tracer = scene.alerting(
        "hostile",
        &dir.display().to_string(),
        &format!(
            "sinks:\n  - {{name: archive, type: file, path: {}}}\n",
            scene.archive.display()
        ),
        &[],
    );
    let (pid, status) = common::run_in_cgroup(&scene.cg.dir, &binary, &[]);
    assert!(status.success(), "Alert never kills");
    let event = scene.archived("the hostile binary's violation in the file sink", |e| {
        is(e, "dev.vigil.exec.v1", pid)
    });
    let errors = schema_errors(&event);
    assert!(errors.is_empty(), "{errors:?}");
    let want = format!("{}/x\u{1b}[2J<!channel>\u{202e}gpj.\\xff", dir.display());
    assert_eq!(
        event["data"]["exec"]["path"], want,
        "the name as it is, its invalid byte shown by value: {event}"
    );
    tracer.stop();
}

#[test]
fn identical_violations_in_a_window_reach_the_sink_as_a_few_events_whose_counts_add_up() {
    let Some(scene) = Scene::new("aggregation") else {
        return;
    };
    let (writer, denied) = common::denied_binary(scene.dir());
    let archive = &scene.archive;
    let tracer = scene.alerting(
        "aggregation",
        &denied,
        &format!(
            "sinks:\n  - {{name: archive, type: file, path: {}}}\naggregation: {{window: 20s}}\n",
            archive.display()
        ),
        &[],
    );
    const RUNS: u64 = 1000;
    let started = std::time::Instant::now();
    for _ in 0..RUNS {
        let (_, status) = scene.write_marker(&writer);
        assert!(status.success(), "Alert never kills");
    }
    let violations = |text: &str| -> Vec<serde_json::Value> {
        text.lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("a JSON line"))
            .filter(|e| e["type"] == "dev.vigil.exec.v1" && e["vigilpolicy"] == "aggregation")
            .collect()
    };
    let count = |e: &serde_json::Value| e["data"]["count"].as_u64().unwrap_or(1);
    // The summaries come when their windows close; every run is counted once.
    let events = common::wait_until(
        "every run counted in the file sink",
        common::liveness(),
        || {
            let events = violations(&std::fs::read_to_string(archive).unwrap_or_default());
            (events.iter().map(count).sum::<u64>() == RUNS).then_some(events)
        },
        || format!("file: {:?}", std::fs::read_to_string(archive)),
    );
    tracer.stop();
    // The first, then at most one summary per 20 s window the runs spanned (and one for the
    // window open when they ended): 1,000 runs in one window make two events.
    let windows = started.elapsed().as_secs() / 20 + 2;
    assert!(
        events.len() as u64 <= 1 + windows,
        "{} events for {RUNS} identical violations in {windows} windows: not aggregated",
        events.len()
    );
    assert!(
        events[0]["data"].get("count").is_none(),
        "the first goes out alone"
    );
    let summary = events.iter().find(|e| count(e) > 1).expect("a summary");
    assert!(summary["data"]["firstSeen"].is_string(), "{summary}");
    for e in &events {
        let errors = schema_errors(e);
        assert!(errors.is_empty(), "{errors:?}");
    }
}

/// A loopback HTTP/1.1 receiver that answers every request with `reply` (status line and
/// body) and keeps the bodies it got, per path.
/// Each request's path and body, in arrival order.
type Requests = std::sync::Arc<std::sync::Mutex<Vec<(String, Vec<u8>)>>>;

struct Receiver {
    port: u16,
    bodies: Requests,
}

impl Receiver {
    fn start(reply: &'static str) -> Self {
        Self::listen(std::net::TcpListener::bind("127.0.0.1:0").unwrap(), reply)
    }

    /// On a listener the test bound itself (a port it named to the agent before).
    fn listen(listener: std::net::TcpListener, reply: &'static str) -> Self {
        use std::io::{BufRead, Read, Write};
        let port = listener.local_addr().unwrap().port();
        let bodies: Requests = Requests::default();
        let sink = bodies.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let sink = sink.clone();
                std::thread::spawn(move || {
                    let mut writer = stream.try_clone().unwrap();
                    let mut reader = std::io::BufReader::new(stream);
                    loop {
                        let mut request = String::new();
                        if reader.read_line(&mut request).unwrap_or(0) == 0 {
                            return;
                        }
                        let path = request.split(' ').nth(1).unwrap_or("").to_string();
                        let mut length = 0;
                        loop {
                            let mut line = String::new();
                            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                                return;
                            }
                            if line.trim_end().is_empty() {
                                break;
                            }
                            if let Some((k, v)) = line.split_once(':')
                                && k.eq_ignore_ascii_case("content-length")
                            {
                                length = v.trim().parse().unwrap_or(0);
                            }
                        }
                        let mut body = vec![0; length];
                        if reader.read_exact(&mut body).is_err() {
                            return;
                        }
                        sink.lock().unwrap().push((path, body));
                        let (status, text) = reply.split_once('\n').unwrap_or((reply, ""));
                        let response = format!(
                            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{text}",
                            text.len()
                        );
                        if writer.write_all(response.as_bytes()).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Self { port, bodies }
    }

    fn bodies(&self) -> Vec<(String, Vec<u8>)> {
        self.bodies.lock().unwrap().clone()
    }
}

#[test]
fn a_binary_with_a_hostile_name_reaches_http_slack_and_splunk_as_each_receiver_needs() {
    let Some(scene) = Scene::new("hostile-sinks") else {
        return;
    };
    let (dir, binary) = hostile_binary(&scene, b"<!channel> <@U1> *b* \x1b[2J\xff");
    let http = Receiver::start("200 OK\n");
    let slack = Receiver::start("200 OK\nok");
    let splunk = Receiver::start("200 OK\n{\"text\":\"Success\",\"code\":0}");
    let hook = scene.dir().join("slack-url");
    std::fs::write(&hook, format!("http://127.0.0.1:{}/hook", slack.port)).unwrap();
    let token = std::ffi::OsString::from("test-token-1234");
    let dir_s = dir.display().to_string();
    let tracer = scene.alerting(
        "hostile",
        &dir_s,
        &format!(
            "sinks:\n  - {{name: siem, type: http, url: 'http://127.0.0.1:{}/events', mode: structured}}\n  - {{name: chat, type: slack, webhookUrlFile: {}}}\n  - {{name: splunk, type: splunk-hec, url: 'http://127.0.0.1:{}', tokenEnv: VIGIL_TEST_HEC_TOKEN}}\n",
            http.port,
            hook.display(),
            splunk.port
        ),
        &[("VIGIL_TEST_HEC_TOKEN", token.as_os_str())],
    );
    let (pid, status) = common::run_in_cgroup(&scene.cg.dir, &binary, &[]);
    assert!(status.success(), "Alert never kills");
    let want = format!("{dir_s}/<!channel> <@U1> *b* \u{1b}[2J\\xff");
    let got = |r: &Receiver| r.bodies().into_iter().map(|(_, b)| b).collect::<Vec<_>>();
    // HTTP: the CloudEvent as JSON, the name as it is.
    let event = common::wait_until(
        "the violation at the HTTP receiver",
        common::liveness(),
        || {
            got(&http)
                .iter()
                .filter_map(|b| serde_json::from_slice::<serde_json::Value>(b).ok())
                .find(|e| is(e, "dev.vigil.exec.v1", pid))
        },
        || format!("{} requests", http.bodies().len()),
    );
    assert_eq!(event["data"]["exec"]["path"], want.as_str());
    // Splunk: valid JSON events, the CloudEvent as `event`, the name as it is.
    let hec = common::wait_until(
        "the violation at the HEC receiver",
        common::liveness(),
        || {
            splunk.bodies().iter().find_map(|(path, body)| {
                (path == "/services/collector/event").then_some(())?;
                serde_json::Deserializer::from_slice(body)
                    .into_iter::<serde_json::Value>()
                    .map(|e| e.expect("every HEC event is valid JSON"))
                    .find(|e| is(&e["event"], "dev.vigil.exec.v1", pid))
            })
        },
        || format!("{} requests", splunk.bodies().len()),
    );
    assert_eq!(hec["event"]["data"]["exec"]["path"], want.as_str());
    // Slack: no mention, link or formatting survives; the name is still there to read.
    let message = common::wait_until(
        "the violation at the Slack webhook",
        common::liveness(),
        || {
            got(&slack)
                .into_iter()
                .find(|b| String::from_utf8_lossy(b).contains(&pid.to_string()))
        },
        || format!("{} messages", slack.bodies().len()),
    );
    let text = String::from_utf8(message).expect("UTF-8 JSON");
    let json: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    let all = json.to_string();
    for forbidden in ["<!channel>", "<@U1>"] {
        assert!(
            !all.contains(forbidden),
            "{forbidden:?} reached Slack: {all}"
        );
    }
    assert!(
        all.contains("&lt;!channel&gt;"),
        "the name is shown, escaped: {all}"
    );
    tracer.stop();
}

#[test]
fn events_a_sink_gives_up_on_are_reported_as_lost_through_the_other_sinks() {
    let Some(scene) = Scene::new("sink-failed") else {
        return;
    };
    let (writer, denied) = common::denied_binary(scene.dir());
    // A receiver that refuses everything for good: the HTTP sink does not retry a 400.
    let refusing = Receiver::start("400 Bad Request\nno");
    let tracer = scene.alerting(
        "sink-failed",
        &denied,
        &format!(
            "sinks:\n  - {{name: siem, type: http, url: 'http://127.0.0.1:{}/events', types: [dev.vigil.exec.v1]}}\n  - {{name: archive, type: file, path: {}}}\n",
            refusing.port,
            scene.archive.display()
        ),
        &[],
    );
    let (pid, _) = scene.write_marker(&writer);
    let loss = scene.archived("a loss event counting the refused delivery", |e| {
        e["type"] == "dev.vigil.loss.v1"
            && e["data"]["lostSinceStart"]["sinkFailed"].as_u64() >= Some(1)
    });
    assert!(
        loss["data"]["lostSinceStart"]["total"].as_u64() >= Some(1),
        "{loss}"
    );
    assert!(
        refusing.bodies().iter().any(|(_, b)| {
            serde_json::from_slice::<serde_json::Value>(b)
                .is_ok_and(|e| is(&e, "dev.vigil.exec.v1", pid))
        }),
        "the refused event was offered to the receiver"
    );
    let log = tracer.stderr_lines().join("\n");
    tracer.stop();
    assert!(
        log.contains("siem"),
        "the log names the sink that failed:\n{log}"
    );
}

/// A port of 127.0.0.1 nobody listens on until the test binds it again.
fn silent_port() -> u16 {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    probe.local_addr().unwrap().port()
}

/// The exec violations of `pids` the archive holds, by pid: each event's id.
fn archived_ids(archive: &Path, pids: &[u32]) -> Option<BTreeMap<u32, String>> {
    let ids: BTreeMap<u32, String> = lines_of(archive)
        .into_iter()
        .filter(|e| e["type"] == "dev.vigil.exec.v1")
        .filter_map(|e| {
            let pid = pids
                .iter()
                .copied()
                .find(|&p| is(&e, "dev.vigil.exec.v1", p))?;
            Some((pid, e["id"].as_str()?.to_string()))
        })
        .collect();
    (ids.len() == pids.len()).then_some(ids)
}

/// Whether every id in `ids` is in a segment of the spool in `dir` (the records are the
/// events' JSON, so an id's bytes appear as they are).
fn spooled(dir: &Path, ids: &BTreeMap<u32, String>) -> bool {
    let segments: Vec<Vec<u8>> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "seg"))
        .filter_map(|e| std::fs::read(e.path()).ok())
        .collect();
    ids.values().all(|id| {
        segments
            .iter()
            .any(|s| s.windows(id.len()).any(|w| w == id.as_bytes()))
    })
}

/// Waits until every id in `ids` has reached `receiver` (at least once), and returns how
/// many requests carried each.
fn assert_every_id_arrives(
    receiver: &Receiver,
    ids: &BTreeMap<u32, String>,
) -> BTreeMap<String, usize> {
    let received = || -> BTreeMap<String, usize> {
        let mut seen = BTreeMap::new();
        for (_, body) in receiver.bodies() {
            if let Ok(e) = serde_json::from_slice::<serde_json::Value>(&body)
                && let Some(id) = e["id"].as_str()
            {
                *seen.entry(id.to_string()).or_insert(0) += 1;
            }
        }
        seen
    };
    common::wait_until(
        "every violation's id at the receiver",
        common::liveness(),
        || {
            let seen = received();
            ids.values().all(|id| seen.contains_key(id)).then_some(seen)
        },
        || {
            let seen = received();
            let missing: Vec<_> = ids
                .iter()
                .filter(|(_, id)| !seen.contains_key(*id))
                .collect();
            format!("missing (pid, id): {missing:?}")
        },
    )
}

#[test]
fn a_receiver_down_for_30_s_while_violations_keep_coming_gets_every_one_when_it_returns() {
    let Some(scene) = Scene::new("outage") else {
        return;
    };
    let (writer, denied) = common::denied_binary(scene.dir());
    let port = silent_port();
    let tracer = scene.alerting(
        "outage",
        &denied,
        &format!(
            "sinks:\n  - {{name: siem, type: http, url: 'http://127.0.0.1:{port}/events', types: [dev.vigil.exec.v1]}}\n  - {{name: archive, type: file, path: {}}}\n",
            scene.archive.display()
        ),
        &[],
    );
    let down = std::time::Instant::now();
    let mut pids = Vec::new();
    while down.elapsed() < std::time::Duration::from_secs(30) {
        pids.push(scene.write_marker(&writer).0);
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
    let ids = common::wait_until(
        "every violation in the archive",
        common::liveness(),
        || archived_ids(&scene.archive, &pids),
        || format!("{} violations", pids.len()),
    );
    let receiver = Receiver::listen(
        std::net::TcpListener::bind(("127.0.0.1", port)).unwrap(),
        "200 OK\n",
    );
    assert_every_id_arrives(&receiver, &ids);
    assert!(ids.len() >= 25, "{} violations in 30 s", ids.len());
    let log = tracer.stderr_lines().join("\n");
    assert!(log.contains("retrying"), "the outage is in the log:\n{log}");
    tracer.stop();
}

#[test]
fn spooled_violations_survive_an_agent_restart_and_a_kill_9_and_arrive_with_their_ids() {
    let Some(scene) = Scene::new("spool") else {
        return;
    };
    let (writer, denied) = common::denied_binary(scene.dir());
    let port = silent_port();
    let spool = scene.dir().join("spool");
    let config = format!(
        "sinks:\n  - {{name: siem, type: http, url: 'http://127.0.0.1:{port}/events', types: [dev.vigil.exec.v1], spool: {{dir: {}, maxBytes: 1048576}}}}\n  - {{name: archive, type: file, path: {}}}\n",
        spool.display(),
        scene.archive.display()
    );
    let mut pids = Vec::new();
    let mut violate = |n: usize| {
        let mut batch: Vec<u32> = (0..n).map(|_| scene.write_marker(&writer).0).collect();
        let ids = common::wait_until(
            "the violations in the archive",
            common::liveness(),
            || archived_ids(&scene.archive, &batch),
            || "not all archived yet".into(),
        );
        // The file sink and the spool are fed by workers of their own: an event in the
        // archive may still be on its way to the spool, and a kill -9 then loses it by
        // design. What must survive is what the spool has taken (appended: the page cache
        // outlives the process).
        common::wait_until(
            "the violations in the spool",
            common::liveness(),
            || spooled(&spool, &ids).then_some(()),
            || format!("ids {ids:?} not all in {}", spool.display()),
        );
        pids.append(&mut batch);
    };
    // The receiver is down throughout: a clean stop with events spooled...
    let first = scene.alerting("spool", &denied, &config, &[]);
    violate(5);
    first.stop();
    // ...then a kill -9 with more.
    let second = scene.alerting("spool", &denied, &config, &[]);
    violate(5);
    second.kill();
    // The receiver comes back, and so does the agent.
    let receiver = Receiver::listen(
        std::net::TcpListener::bind(("127.0.0.1", port)).unwrap(),
        "200 OK\n",
    );
    let third = scene.alerting("spool", &denied, &config, &[]);
    let ids = archived_ids(&scene.archive, &pids).expect("every violation archived");
    let seen = assert_every_id_arrives(&receiver, &ids);
    let log = third.stderr_lines().join("\n");
    third.stop();
    assert_eq!(ids.len(), 10);
    // The third agent found all ten waiting: none was sent while the receiver was down.
    let opened = log
        .lines()
        .find(|l| l.contains("spool open"))
        .unwrap_or_default();
    assert!(opened.contains("pending=10"), "{log}");
    // What reached the receiver is what was taken, nothing else (ids are UUIDs per event).
    assert!(
        seen.keys().all(|id| ids.values().any(|i| i == id)),
        "{seen:?}"
    );
}

#[test]
fn a_flood_from_one_process_that_stops_is_counted_in_full_though_the_kernel_held_most_back() {
    let Some(scene) = Scene::new("flood-count") else {
        return;
    };
    let tracer = scene.enforcing(
        "flood-count",
        // Nothing on loopback is allowed: each datagram to 127.0.0.1:1023 is a violation.
        "connect:\n    allow: [{cidr: 10.255.255.0/24}]\n    action: Alert\n",
        &format!(
            "sinks:\n  - {{name: archive, type: file, path: {}}}\n",
            scene.archive.display()
        ),
        &[],
    );
    // 1,000 identical violations from one process within a few milliseconds: the kernel
    // lets 8 out and holds the rest; no later record comes to carry their count.
    let (pid, out) = scene.cg.scenario(&["bench-udp-same", "1000"]);
    assert!(out.status.success(), "{out:?}");
    let count = |e: &serde_json::Value| e["data"]["count"].as_u64().unwrap_or(1);
    let events = common::wait_until(
        "violations whose counts add up to 1,000",
        common::liveness(),
        || {
            let events: Vec<_> = lines_of(&scene.archive)
                .into_iter()
                .filter(|e| is(e, "dev.vigil.connect.v1", pid))
                .collect();
            (events.iter().map(count).sum::<u64>() == 1000).then_some(events)
        },
        || format!("file: {:?}", std::fs::read_to_string(&scene.archive)),
    );
    // The loss event that reports the held-back ones comes at the next report (every 5 s),
    // after several sweeps: by then a count carried twice would show.
    let loss = scene.archived("the loss event reporting the held-back violations", |e| {
        e["type"] == "dev.vigil.loss.v1"
            && e["data"]["lostSinceStart"]["heldBack"]["connect"].as_u64() >= Some(992)
    });
    let after = lines_of(&scene.archive)
        .into_iter()
        .filter(|e| is(e, "dev.vigil.connect.v1", pid))
        .map(|e| count(&e))
        .sum::<u64>();
    tracer.stop();
    assert_eq!(after, 1000, "carried once, not at every sweep; {loss}");
    let carried = events
        .iter()
        .find(|e| count(e) > 1)
        .expect("one stands for the held-back ones");
    assert!(carried["data"]["firstSeen"].is_string(), "{carried}");
    assert_eq!(carried["data"]["connect"]["dport"], 1023, "{carried}");
    for e in &events {
        let errors = schema_errors(e);
        assert!(errors.is_empty(), "{errors:?}");
    }
}

/// `GET path` on 127.0.0.1:`port`: the status code and the body.
fn get(port: u16, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The samples of a Prometheus text exposition, as the Python `prometheus_client` parser
/// reads them: `name{label="value",...}` (labels sorted) to value.
fn parsed(python: &Path, text: &str) -> BTreeMap<String, f64> {
    let script = "import sys, json\nfrom prometheus_client.parser import text_string_to_metric_families\nout = {}\nfor f in text_string_to_metric_families(sys.stdin.read()):\n    for s in f.samples:\n        labels = ','.join(f'{k}=\"{v}\"' for k, v in sorted(s.labels.items()))\n        out[f'{s.name}{{{labels}}}'] = s.value\nprint(json.dumps(out))\n";
    let mut child = Command::new(python)
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "prometheus_client refused the exposition: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON")
}

#[test]
fn metrics_move_by_exactly_the_violations_and_parse_with_prometheus_client() {
    let Some(scene) = Scene::new("metrics") else {
        return;
    };
    let Some(python) = python::with_package(
        "py-prometheus-client",
        "prometheus_client==0.21.1",
        "import prometheus_client.parser",
    ) else {
        return;
    };
    let (writer, denied) = common::denied_binary(scene.dir());
    let port = silent_port();
    let addr = format!("127.0.0.1:{port}");
    let tracer = scene.alerting_with(
        "metrics",
        &denied,
        &format!(
            "sinks:\n  - {{name: archive, type: file, path: {}}}\n",
            scene.archive.display()
        ),
        &["--metrics-addr", &addr],
    );
    assert_eq!(get(port, "/healthz"), (200, "ok\n".into()));
    assert_eq!(get(port, "/readyz"), (200, "ok\n".into()));
    let exec_alerts =
        "vigil_events_total{action=\"alert\",behaviour=\"exec\",verdict=\"violation\"}";
    let delivered = "vigil_sink_delivered_total{sink=\"archive\"}";
    let before = parsed(&python, &get(port, "/metrics").1);
    let pids: Vec<u32> = (0..3).map(|_| scene.write_marker(&writer).0).collect();
    let ids = common::wait_until(
        "the three violations in the archive",
        common::liveness(),
        || archived_ids(&scene.archive, &pids),
        || "not yet".into(),
    );
    let archived = || lines_of(&scene.archive).len() as f64;
    // The file sink counts a batch delivered once it is written.
    let after = common::wait_until(
        "the deliveries counted",
        common::liveness(),
        || {
            let now = parsed(&python, &get(port, "/metrics").1);
            (now.get(delivered).copied().unwrap_or(0.0) >= archived()).then_some(now)
        },
        || get(port, "/metrics").1,
    );
    let moved = |name: &str| {
        after.get(name).copied().unwrap_or(0.0) - before.get(name).copied().unwrap_or(0.0)
    };
    assert_eq!(ids.len(), 3);
    assert_eq!(moved(exec_alerts), 3.0, "{after:?}");
    assert_eq!(after.get(delivered).copied(), Some(archived()), "{after:?}");
    // Every delivered event has its latency measured once, from its kernel timestamp.
    let latency = |part: &str| {
        after
            .get(&format!(
                "vigil_sink_delivery_latency_seconds_{part}{{sink=\"archive\"}}"
            ))
            .copied()
    };
    assert_eq!(latency("count"), Some(archived()), "{after:?}");
    assert!(latency("sum").is_some_and(|s| s > 0.0), "{after:?}");
    // The policy's rules are in the kernel's maps, each map with its capacity.
    let map = |metric: &str, name: &str| {
        after
            .get(&format!("vigil_map_{metric}{{map=\"{name}\"}}"))
            .copied()
    };
    assert!(
        map("entries", "EXEC_PATHS").is_some_and(|n| n >= 1.0),
        "{after:?}"
    );
    assert!(
        map("entries", "CGROUP_SETS").is_some_and(|n| n >= 1.0),
        "{after:?}"
    );
    assert_eq!(map("capacity", "EXEC_PATHS"), Some(16_384.0), "{after:?}");
    assert_eq!(map("capacity", "SERVICES"), Some(65_536.0), "{after:?}");
    for name in [
        "vigil_sink_failed_total{sink=\"archive\"}",
        "vigil_sink_queue_full_total{sink=\"archive\"}",
        "vigil_reader_queue_dropped_total{}",
    ] {
        assert_eq!(after.get(name).copied(), Some(0.0), "{name}: {after:?}");
    }
    assert_eq!(
        after.get("vigil_policies{}").copied(),
        Some(1.0),
        "{after:?}"
    );
    assert_eq!(after.get("vigil_ready{}").copied(), Some(1.0));
    assert!(
        after
            .get("vigil_resident_memory_bytes{}")
            .copied()
            .unwrap_or(0.0)
            > 1e6
    );
    // Bounded labels: no pid, path or address in any of them.
    for key in after.keys() {
        assert!(!pids.iter().any(|p| key.contains(&p.to_string())), "{key}");
        assert!(!key.contains(&denied), "{key}");
    }
    tracer.stop();
}
