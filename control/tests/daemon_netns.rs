//! End to end on one host: a real `vxnet-dataplane` in a network namespace
//! made by this test, a real `vxnet-control` beside it, and the `vxnet` CLI
//! driving both. Needs root (skipped otherwise) and the workspace's binaries
//! (`cargo build -p vxnet-dataplane -p vxnet-cli`; `cargo test --workspace`
//! builds them). Everything it makes is removed on drop, also on failure.
//!
//! The control daemon runs in the host's network namespace (entered with
//! `nsenter --net`, keeping the root mount namespace: namespaces it creates
//! must be visible to the dataplane, and `ip netns exec` would give it a
//! private mount namespace).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// A binary of the workspace, next to this test's executable.
fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe.parent();
    for _ in 0..2 {
        let Some(d) = dir else { break };
        let c = d.join(name);
        if c.is_file() {
            return c;
        }
        dir = d.parent();
    }
    panic!(
        "cannot find {name} next to {}; run `cargo build -p vxnet-dataplane -p vxnet-cli` first",
        exe.display()
    );
}

fn ip(args: &[&str]) -> Output {
    Command::new("ip").args(args).output().expect("run ip")
}

fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    f()
}

/// SIGTERM, then SIGKILL after a grace period; whether it exited cleanly
/// (status 0) on SIGTERM.
fn stop(child: &mut Child) -> bool {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .output();
    let mut status = None;
    wait_until(Duration::from_secs(5), || {
        status = child.try_wait().ok().flatten();
        status.is_some()
    });
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    status.is_some_and(|s| s.success())
}

struct Env {
    dir: tempfile::TempDir,
    host_ns: String,
    containers: Vec<String>,
    dataplane: Option<Child>,
    control: Option<Child>,
}

impl Drop for Env {
    fn drop(&mut self) {
        // Containers' commands, then the daemons, then the namespaces.
        for c in &self.containers {
            let _ = Command::new("ip")
                .args(["netns", "pids", c])
                .output()
                .map(|o| {
                    for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                        let _ = Command::new("kill").args(["-KILL", pid]).output();
                    }
                });
        }
        for p in [self.control.as_mut(), self.dataplane.as_mut()]
            .into_iter()
            .flatten()
        {
            let _ = stop(p);
        }
        for c in &self.containers {
            let _ = ip(&["netns", "del", c]);
            let _ = std::fs::remove_dir_all(Path::new("/etc/netns").join(c));
        }
        let _ = ip(&["netns", "del", &self.host_ns]);
    }
}

impl Env {
    fn new() -> Env {
        let id = std::process::id();
        let env = Env {
            dir: tempfile::tempdir().expect("tempdir"),
            host_ns: format!("vxh{id}"),
            containers: vec![format!("vxca{id}"), format!("vxcb{id}")],
            dataplane: None,
            control: None,
        };
        let h = env.host_ns.as_str();
        for args in [
            &["netns", "add", h][..],
            &["-n", h, "link", "set", "lo", "up"],
            // A veth pair inside the namespace gives the VTEP an address
            // (this kernel may lack the dummy driver).
            &[
                "-n", h, "link", "add", "d0", "type", "veth", "peer", "name", "d1",
            ],
            &["-n", h, "addr", "add", "192.0.2.1/24", "dev", "d0"],
            &["-n", h, "link", "set", "d0", "up"],
            &["-n", h, "link", "set", "d1", "up"],
        ] {
            let o = ip(args);
            assert!(o.status.success(), "ip {args:?}: {o:?}");
        }
        env
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn log(&self, name: &str) -> std::fs::File {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path(name))
            .expect("log file")
    }

    fn log_tail(&self, name: &str) -> String {
        let s = std::fs::read_to_string(self.path(name)).unwrap_or_default();
        s.chars()
            .rev()
            .take(3000)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect()
    }

    fn start_dataplane(&mut self) {
        let sock = self.path("dp.sock");
        let _ = std::fs::remove_file(&sock);
        let log = self.log("dataplane.log");
        let child = Command::new("ip")
            .args(["netns", "exec", &self.host_ns])
            .arg(binary("vxnet-dataplane"))
            .args([
                "--local-vtep",
                "192.0.2.1",
                "--poll",
                "interrupt",
                "--socket",
            ])
            .arg(&sock)
            .arg("--key-file")
            .arg(self.path("host.key"))
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start dataplane");
        self.dataplane = Some(child);
        assert!(
            wait_until(Duration::from_secs(15), || {
                std::os::unix::net::UnixStream::connect(&sock).is_ok()
            }),
            "dataplane did not come up: {}",
            self.log_tail("dataplane.log")
        );
    }

    fn start_control(&mut self) {
        let sock = self.path("ctl.sock");
        let log = self.log("control.log");
        // In the host's network namespace (its addresses are the ones
        // `swarm init` may advertise), but the root mount namespace (the
        // container namespaces it makes must be visible to the dataplane).
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.host_ns))
            .arg("--")
            .arg(env!("CARGO_BIN_EXE_vxnet-control"))
            .arg("--socket")
            .arg(&sock)
            .arg("--state-dir")
            .arg(self.path("state"))
            .arg("--dataplane-socket")
            .arg(self.path("dp.sock"))
            .args(["--hostname", "testhost", "--reconcile-interval", "1"])
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start control");
        self.control = Some(child);
        assert!(
            wait_until(Duration::from_secs(15), || {
                std::os::unix::net::UnixStream::connect(&sock).is_ok()
            }),
            "control daemon did not come up: {}",
            self.log_tail("control.log")
        );
    }

    fn vxnet(&self, args: &[&str]) -> Output {
        Command::new(binary("vxnet"))
            .args(args)
            .env("VXNET_CONTROL_SOCKET", self.path("ctl.sock"))
            .stdin(Stdio::null())
            .output()
            .expect("run vxnet")
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.vxnet(args);
        assert!(
            o.status.success(),
            "vxnet {args:?} failed: {}\ncontrol log: {}",
            String::from_utf8_lossy(&o.stderr),
            self.log_tail("control.log")
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    fn container_ip(&self, name: &str) -> String {
        let v: serde_json::Value =
            serde_json::from_str(&self.ok(&["container", "inspect", name])).expect("json");
        v[0]["networks"][0]["ipv4"]
            .as_str()
            .expect("ipv4")
            .to_owned()
    }
}

fn loss_free(ping_output: &str) -> bool {
    ping_output.contains(" 0% packet loss")
}

#[test]
fn containers_talk_and_survive_restarts() {
    if !is_root() {
        eprintln!("skipping containers_talk_and_survive_restarts: needs root");
        return;
    }
    let mut env = Env::new();
    env.start_dataplane();
    env.start_control();
    let (a, b) = (env.containers[0].clone(), env.containers[1].clone());

    let out = env.ok(&["swarm", "init"]);
    assert!(out.contains("vxnet swarm join --token SWMTKN-1-"), "{out}");
    assert!(out.contains("192.0.2.1:2377"), "{out}");
    env.ok(&["network", "create", "-d", "overlay", "--attachable", "tnet"]);
    let nets = env.ok(&["network", "ls", "--format", "json"]);
    assert!(
        nets.contains("\"tnet\"") && nets.contains("\"ingress\""),
        "{nets}"
    );

    // Only attachable networks take standalone containers.
    let o = env.vxnet(&[
        "container",
        "run",
        "-d",
        "--name",
        &a,
        "--network",
        "ingress",
        "--",
        "sleep",
        "600",
    ]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("not attachable"),
        "{o:?}"
    );

    for c in [&a, &b] {
        env.ok(&[
            "container",
            "run",
            "-d",
            "--name",
            c,
            "--network",
            "tnet",
            "--",
            "sleep",
            "600",
        ]);
    }
    let ip_b = env.container_ip(&b);
    let ping = env.vxnet(&[
        "container",
        "exec",
        &a,
        "--",
        "ping",
        "-c",
        "2",
        "-W",
        "2",
        &ip_b,
    ]);
    assert!(
        ping.status.success(),
        "ping failed: {}\n{}",
        String::from_utf8_lossy(&ping.stdout),
        env.log_tail("dataplane.log")
    );
    // Foreground runs report the command's exit code.
    let o = env.vxnet(&["container", "exec", &a, "--", "sh", "-c", "exit 3"]);
    assert_eq!(o.status.code(), Some(3));

    // Docker's inspect shape: this host's containers, and the peers.
    let v: serde_json::Value =
        serde_json::from_str(&env.ok(&["network", "inspect", "tnet"])).expect("json");
    let names: Vec<&str> = v[0]["Containers"]
        .as_object()
        .expect("Containers")
        .values()
        .filter_map(|c| c["Name"].as_str())
        .collect();
    assert_eq!(names.len(), 2, "{v}");
    assert!(
        names.contains(&a.as_str()) && names.contains(&b.as_str()),
        "{v}"
    );
    assert_eq!(v[0]["Peers"][0]["IP"], "192.0.2.1", "{v}");
    let nodes = env.ok(&["node", "ls"]);
    assert!(
        nodes.contains("testhost") && nodes.contains("Ready"),
        "{nodes}"
    );
    let o = env.vxnet(&["swarm", "join", "--token", "SWMTKN-1-x-y", "192.0.2.9:2377"]);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("already part of a swarm"),
        "{o:?}"
    );

    let o = env.vxnet(&["network", "rm", "tnet"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("in use by container"), "{err}");

    // Restart the control daemon under a running ping: nothing is lost.
    let pinger = Command::new("ip")
        .args([
            "netns", "exec", &a, "ping", "-c", "30", "-i", "0.1", "-W", "1", &ip_b,
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("ping");
    std::thread::sleep(Duration::from_millis(500));
    let clean = env.control.as_mut().is_some_and(stop);
    assert!(clean, "control daemon did not shut down cleanly on SIGTERM");
    env.start_control();
    let out = pinger.wait_with_output().expect("ping output");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        loss_free(&text),
        "ping lost packets across a daemon restart:\n{text}"
    );

    // The state survived the restart.
    let list = env.ok(&["container", "ls", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_str(&list).expect("json");
    assert_eq!(v.as_array().map(Vec::len), Some(2), "{list}");
    assert!(
        v.as_array()
            .into_iter()
            .flatten()
            .all(|c| c["state"] == "running"),
        "{list}"
    );

    // Restart the dataplane: the daemon programs the new one.
    if let Some(d) = env.dataplane.as_mut() {
        let _ = stop(d);
    }
    env.start_dataplane();
    let back = wait_until(Duration::from_secs(20), || {
        env.vxnet(&[
            "container",
            "exec",
            &a,
            "--",
            "ping",
            "-c",
            "1",
            "-W",
            "1",
            &ip_b,
        ])
        .status
        .success()
    });
    assert!(
        back,
        "not re-programmed after a dataplane restart: {}",
        env.log_tail("control.log")
    );

    // Tear down through the CLI; then the network can go.
    env.ok(&["container", "rm", "-f", &a, &b]);
    assert!(!Path::new("/run/netns").join(&a).exists());
    env.ok(&["network", "rm", "tnet"]);
    let nets = env.ok(&["network", "ls", "--format", "json"]);
    assert!(!nets.contains("\"tnet\""), "{nets}");
}
