//! Services on a testbed swarm (issue 9): tasks scheduled over the hosts,
//! connections to the service name balanced over them by each client
//! host's dataplane, names answered by the embedded DNS server, scaling,
//! and healing when a task's process or a whole host dies. Needs root
//! (skipped otherwise) and the workspace's binaries, python3 and dig.
//!
//! Tasks run `whoami.py` (shipped with the testbed): HTTP on port 80
//! answers the task's name (and the client's address); TCP port 7000 greets
//! with the name and echoes.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use common::{dp_opts, root_or_skip, testbed};
use vxnet_dataplane::sys::netns;
use vxnet_testbed::Testbed;
use vxnet_testbed::process;
use vxnet_testbed::swarm::Control;

/// Opens `n` new TCP connections to `host:port` one after another (the
/// name resolved afresh each time, through the container's resolv.conf),
/// sends an HTTP GET, and prints JSON: answers per task name, and errors.
const CONNECT_PY: &str = r#"
import collections, json, socket, sys
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
counts, errors = collections.Counter(), collections.Counter()
for _ in range(n):
    try:
        s = socket.create_connection((host, port), timeout=3)
        s.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
        data = b""
        while True:
            d = s.recv(4096)
            if not d:
                break
            data += d
        s.close()
        counts[data.split(b"\r\n\r\n", 1)[1].decode().splitlines()[0].strip()] += 1
    except Exception as e:
        errors[type(e).__name__ + ": " + str(e)] += 1
print(json.dumps({"counts": counts, "errors": errors}))
"#;

/// A swarm of `n` hosts (host1 manager) with dataplanes and daemons.
struct Swarm {
    tb: Testbed,
    controls: Vec<Control>,
    dataplane_pids: Vec<u32>,
    whoami: String,
}

impl Swarm {
    /// Daemons on all `hosts`; the first `members` of them form the swarm.
    fn new(hosts: usize, members: usize) -> Result<Swarm> {
        let tb = testbed(hosts, 1500)?;
        let mut controls = Vec::new();
        let mut dataplane_pids = Vec::new();
        for h in tb.hosts() {
            let dp = tb.start_dataplane(h, &dp_opts())?;
            controls.push(tb.start_control(h, &dp.socket)?);
            dataplane_pids.push(dp.pid);
        }
        tb.form_swarm(&controls[..members])?;
        let whoami = tb.install_whoami()?.display().to_string();
        Ok(Swarm {
            tb,
            controls,
            dataplane_pids,
            whoami,
        })
    }

    fn manager(&self) -> &Control {
        &self.controls[0]
    }

    /// The control daemon of host `hostname`.
    fn on(&self, hostname: &str) -> Result<&Control> {
        self.controls
            .iter()
            .find(|c| self.tb.host(c.host).name == hostname)
            .with_context(|| format!("no host {hostname}"))
    }

    /// `vxnet dp services` of host `n` (1-based): VIP -> backend addresses.
    fn backends(&self, n: usize) -> Result<BTreeMap<String, BTreeSet<String>>> {
        let v = common::swarm::dp_json(&self.tb, n, &["services"])?;
        let mut m = BTreeMap::new();
        for s in v.as_array().context("services")? {
            let vip = s["vip"].as_str().context("vip")?.to_owned();
            let b = s["backends"]
                .as_array()
                .context("backends")?
                .iter()
                .filter_map(|b| b["ip"].as_str().map(str::to_owned))
                .collect();
            m.insert(vip, b);
        }
        Ok(m)
    }

    /// Whether host1 (the client's) has `vip` with backends `want`, and
    /// every other of `hosts` that has the VIP (the network is there) too.
    fn vip_on(&self, hosts: &[usize], vip: &str, want: &BTreeSet<String>) -> bool {
        hosts.iter().all(|&h| {
            self.backends(h).is_ok_and(|b| match b.get(vip) {
                Some(have) => have == want,
                None => h != 1,
            })
        })
    }

    /// `service ps NAME` as JSON.
    fn tasks(&self, service: &str) -> Result<Vec<serde_json::Value>> {
        Ok(self
            .manager()
            .json(&["service", "ps", service, "--format", "json"])?
            .as_array()
            .context("tasks")?
            .clone())
    }

    /// Tasks desired and reported running: (container name, node, IPv4).
    fn running(&self, service: &str) -> Result<Vec<(String, String, String)>> {
        Ok(self
            .tasks(service)?
            .iter()
            .filter(|t| t["desired"] == "running" && t["state"] == "running")
            .map(|t| {
                (
                    t["container"].as_str().unwrap_or_default().to_owned(),
                    t["node"].as_str().unwrap_or_default().to_owned(),
                    t["addresses"][0][1].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect())
    }

    fn wait_running(&self, service: &str, n: usize, within: Duration) -> Result<()> {
        let ok = process::wait_until(within, || {
            self.running(service).is_ok_and(|r| r.len() == n)
                && self
                    .tasks(service)
                    .is_ok_and(|t| t.iter().filter(|t| t["desired"] == "running").count() == n)
        });
        ensure!(
            ok,
            "{service}: not {n} running tasks after {within:?}: {:#?}\n{}",
            self.tasks(service)?,
            self.log("control-host1")
        );
        Ok(())
    }

    /// A standalone container on `network` at host `on`: its namespace.
    fn container(&self, on: &Control, name: &str, network: &str, extra: &[&str]) -> Result<String> {
        let mut args = vec![
            "container",
            "run",
            "-d",
            "--name",
            name,
            "--network",
            network,
        ];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--", "sleep", "600"]);
        on.ok(&args)?;
        let v = on.json(&["container", "inspect", name])?;
        Ok(v[0]["netns"].as_str().context("netns")?.to_owned())
    }

    /// `dig +short NAME` in `ns`: the answers, and the status line.
    fn dig(&self, ns: &str, name: &str, qtype: &str) -> Result<(BTreeSet<String>, String)> {
        let out = self.tb.exec_timeout(
            ns,
            &[
                "dig",
                "+time=2",
                "+tries=1",
                "+noall",
                "+answer",
                "+comments",
                name,
                qtype,
            ],
            Duration::from_secs(10),
        )?;
        let status = out
            .stdout
            .lines()
            .find(|l| l.contains("status:"))
            .unwrap_or_default()
            .to_owned();
        let answers = out
            .stdout
            .lines()
            .filter(|l| !l.starts_with(';') && !l.trim().is_empty())
            .filter_map(|l| l.split_whitespace().nth(4).map(str::to_owned))
            .collect();
        Ok((answers, status))
    }

    /// `n` new connections from `ns` to `host:80`: answers per task.
    fn connect(&self, ns: &str, host: &str, n: usize) -> Result<(BTreeMap<String, u64>, String)> {
        let out = self
            .tb
            .exec_timeout(
                ns,
                &["python3", "-c", CONNECT_PY, host, "80", &n.to_string()],
                Duration::from_secs(120),
            )?
            .check()?;
        let v: serde_json::Value = serde_json::from_str(out.stdout.trim())?;
        let counts = serde_json::from_value(v["counts"].clone())?;
        let errors = v["errors"].as_object().context("errors")?;
        let errors = if errors.is_empty() {
            String::new()
        } else {
            v["errors"].to_string()
        };
        Ok((counts, errors))
    }

    fn log(&self, name: &str) -> String {
        process::log_tail(&self.tb.log_path(name), 4000)
    }

    /// Waits until the server of each task address answers a connection
    /// from `ns` directly. A task without a health check joins the
    /// backends once it runs, as in Docker, and its server listens a
    /// moment later (long enough, under load, to refuse a connection
    /// through the VIP); the assertions after this are about balancing.
    fn wait_listening<'a>(
        &self,
        ns: &str,
        tasks: impl IntoIterator<Item = &'a String>,
    ) -> Result<()> {
        for ip in tasks {
            time_until(
                &format!("the task at {ip} listens"),
                Duration::from_secs(10),
                || {
                    self.connect(ns, ip, 1)
                        .is_ok_and(|(_, errors)| errors.is_empty())
                },
            )?;
        }
        Ok(())
    }
}

/// A TCP connection opened from inside a namespace, to a task's echo port.
struct Echo {
    reader: BufReader<TcpStream>,
    /// The task's container name, from its greeting.
    task: String,
}

impl Echo {
    fn open(ns: &str, to: SocketAddr) -> Result<Echo> {
        let ns = netns::resolve(ns)?;
        let s = netns::run_in(&ns, move || {
            TcpStream::connect_timeout(&to, Duration::from_secs(3))
        })??;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut reader = BufReader::new(s);
        let mut task = String::new();
        reader.read_line(&mut task)?;
        Ok(Echo {
            reader,
            task: task.trim().to_owned(),
        })
    }

    /// Sends a line and reads it back.
    fn round_trip(&mut self, line: &str) -> Result<()> {
        self.reader
            .get_mut()
            .write_all(format!("{line}\n").as_bytes())?;
        let mut back = String::new();
        self.reader.read_line(&mut back)?;
        ensure!(
            back.trim() == line,
            "echo of {line:?} came back as {back:?}"
        );
        Ok(())
    }
}

/// The slot of a task container (`web.3.<id>` -> 3).
fn slot(task: &str) -> Option<u64> {
    task.split('.').nth(1)?.parse().ok()
}

fn addresses(tasks: &[(String, String, String)]) -> BTreeSet<String> {
    tasks.iter().map(|t| t.2.clone()).collect()
}

/// Polls `f` until it holds; how long that took, or an error naming `what`.
fn time_until(what: &str, within: Duration, f: impl Fn() -> bool) -> Result<Duration> {
    let start = Instant::now();
    if process::wait_until(within, f) {
        Ok(start.elapsed())
    } else {
        bail!("{what}: not after {within:?}")
    }
}

/// The whole of issue 9's walkthrough on three hosts: a replicated HTTP
/// service reached by name from a standalone container, DNS, scaling with a
/// long-lived connection, a task's process killed, a host killed.
#[test]
fn replicated_service_balances_resolves_scales_and_heals() -> Result<()> {
    if !root_or_skip("replicated_service_balances_resolves_scales_and_heals") {
        return Ok(());
    }
    let sw = Swarm::new(3, 3)?;
    let m = sw.manager();
    m.ok(&[
        "network",
        "create",
        "-d",
        "overlay",
        "--attachable",
        "web-net",
    ])?;
    m.ok(&[
        "network",
        "create",
        "-d",
        "overlay",
        "--attachable",
        "other-net",
    ])?;
    m.ok(&[
        "service",
        "create",
        "--name",
        "web",
        "--replicas",
        "3",
        "--network",
        "web-net",
        "--network-alias",
        "www",
        "--",
        "python3",
        &sw.whoami,
    ])?;
    sw.wait_running("web", 3, Duration::from_secs(30))?;
    let nodes: BTreeSet<String> = sw.running("web")?.into_iter().map(|t| t.1).collect();
    assert_eq!(nodes.len(), 3, "one task per host: {nodes:?}");
    let v = m.json(&["service", "inspect", "web"])?;
    let vip = v[0]["Endpoint"]["VirtualIPs"][0]["Addr"]
        .as_str()
        .and_then(|a| a.split('/').next())
        .context("no VIP")?
        .to_owned();

    // Standalone containers on the attachable network, and one elsewhere.
    let client = sw.container(m, "client", "web-net", &["--network-alias", "front"])?;
    let h2 = sw.on("host2")?;
    let alpine2 = sw.container(h2, "alpine2", "web-net", &[])?;
    let _hidden = sw.container(h2, "hidden", "other-net", &[])?;
    let alpine2_ip = h2.json(&["container", "inspect", "alpine2"])?[0]["networks"][0]["ipv4"]
        .as_str()
        .context("ipv4")?
        .to_owned();

    // Docker's tutorial: ping another container by name.
    let r = sw
        .tb
        .exec(&client, &["ping", "-c", "2", "-W", "2", "alpine2"])?;
    assert!(r.success(), "ping alpine2 by name: {}", r.combined());

    // DNS: the VIP, the tasks, a container, aliases; scoped; no hang.
    let tasks = sw.running("web")?;
    assert_eq!(
        sw.dig(&client, "web", "A")?.0,
        BTreeSet::from([vip.clone()])
    );
    assert_eq!(
        sw.dig(&client, "www", "A")?.0,
        BTreeSet::from([vip.clone()])
    );
    assert_eq!(sw.dig(&client, "tasks.web", "A")?.0, addresses(&tasks));
    assert_eq!(
        sw.dig(&client, "alpine2", "A")?.0,
        BTreeSet::from([alpine2_ip])
    );
    let (front, _) = sw.dig(&alpine2, "front", "A")?;
    assert_eq!(
        front.len(),
        1,
        "the client's alias from another host: {front:?}"
    );
    let (none, status) = sw.dig(&client, "hidden", "A")?;
    assert!(
        none.is_empty(),
        "a name on a network the asker is not on: {none:?}"
    );
    // Not ours to answer: forwarded (no upstream in the testbed).
    assert!(
        status.contains("NXDOMAIN") || status.contains("SERVFAIL"),
        "{status}"
    );
    let started = Instant::now();
    let (none, status) = sw.dig(&client, "nothing.invalid", "A")?;
    assert!(none.is_empty());
    assert!(
        status.contains("NXDOMAIN") || status.contains("SERVFAIL"),
        "unknown names get an answer, not a hang: {status:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(8));
    // A known name without IPv6: empty NOERROR, not a forward.
    let (none, status) = sw.dig(&client, "web", "AAAA")?;
    assert!(
        none.is_empty() && status.contains("NOERROR"),
        "{none:?} {status}"
    );

    // 300 new connections to the service name reach every task, evenly.
    let (counts, errors) = sw.connect(&client, "web", 300)?;
    assert!(errors.is_empty(), "failed connections: {errors}");
    eprintln!("300 connections: {counts:?}");
    assert_eq!(counts.len(), 3, "{counts:?}");
    for (task, n) in &counts {
        assert!(*n >= 60, "{task} got {n} of 300: {counts:?}");
    }
    // A task connects to its own service: balanced over every task, itself
    // included (hairpin NAT), as in Docker.
    let (me, node, _) = tasks.first().context("a task")?.clone();
    let me_ns = sw.on(&node)?.json(&["container", "inspect", &me])?[0]["netns"]
        .as_str()
        .context("netns")?
        .to_owned();
    let (counts, errors) = sw.connect(&me_ns, "web", 60)?;
    assert!(errors.is_empty(), "from {me} to its own VIP: {errors}");
    assert_eq!(counts.len(), 3, "{counts:?}");
    assert!(
        counts.contains_key(&me),
        "{me} never reached itself: {counts:?}"
    );

    // A long-lived connection to a task that survives scaling to 2.
    let to: SocketAddr = SocketAddr::new(vip.parse::<IpAddr>()?, 7000);
    let mut echo = (0..30)
        .map(|_| Echo::open(&client, to))
        .find(|e| {
            e.as_ref()
                .is_ok_and(|e| slot(&e.task).is_some_and(|s| s <= 2))
        })
        .context("no connection reached slot 1 or 2")??;
    echo.round_trip("before scaling")?;

    // 3 -> 5: DNS and every host's backends follow.
    m.ok(&["service", "scale", "web=5"])?;
    sw.wait_running("web", 5, Duration::from_secs(30))?;
    let want = addresses(&sw.running("web")?);
    let took = time_until(
        "5 tasks in DNS and backends",
        Duration::from_secs(10),
        || {
            sw.dig(&client, "tasks.web", "A")
                .is_ok_and(|(a, _)| a == want)
                && sw.vip_on(&[1, 2, 3], &vip, &want)
        },
    )?;
    eprintln!("scaled to 5: DNS and backends followed {took:?} after the tasks ran");
    assert!(took <= Duration::from_secs(2), "{took:?}");
    echo.round_trip("after scaling up")?;
    let (counts, errors) = sw.connect(&client, "web", 100)?;
    assert!(errors.is_empty(), "{errors}");
    assert_eq!(counts.len(), 5, "{counts:?}");

    // 5 -> 2: the removed tasks leave DNS and backends; the connection stays.
    let scaled = Instant::now();
    m.ok(&["service", "scale", "web=2"])?;
    sw.wait_running("web", 2, Duration::from_secs(30))?;
    let want = addresses(&sw.running("web")?);
    time_until(
        "2 tasks in DNS and backends",
        Duration::from_secs(10),
        || {
            sw.dig(&client, "tasks.web", "A")
                .is_ok_and(|(a, _)| a == want)
                && sw.vip_on(&[1, 2, 3], &vip, &want)
        },
    )
    .with_context(|| {
        format!(
            "want {want:?}; DNS {:?}; backends {:?} {:?} {:?}; tasks {:#?}",
            sw.dig(&client, "tasks.web", "A"),
            sw.backends(1),
            sw.backends(2),
            sw.backends(3),
            sw.tasks("web")
        )
    })?;
    let took = scaled.elapsed();
    eprintln!("scaled to 2: DNS and backends followed {took:?} after the scale");
    assert!(took <= Duration::from_secs(2), "{took:?}");
    echo.round_trip("after scaling down")?;
    drop(echo);

    // A task's process killed: it leaves the backends, nothing is sent
    // to it, and it is restarted.
    let (victim, node, ip) = sw.running("web")?.into_iter().next().context("a task")?;
    let pid = sw.on(&node)?.json(&["container", "inspect", &victim])?[0]["pid"]
        .as_u64()
        .context("pid")?;
    process::kill_pid(pid as u32, libc::SIGKILL);
    let took = time_until(
        "the dead task left host1's backends",
        Duration::from_secs(5),
        || {
            sw.backends(1)
                .is_ok_and(|b| b.get(&vip).is_some_and(|s| !s.contains(&ip)))
        },
    )?;
    eprintln!("a killed task left the backends after {took:?}");
    assert!(took <= Duration::from_secs(2), "{took:?}");
    // Until it runs again, new connections go to the others (one sent to
    // the dead task would be refused: its namespace has no listener). It
    // restarts 0.5 s after it died and rejoins the backends once it runs,
    // a moment before its server listens (as in Docker without a health
    // check): only then may a connection be refused (seen under load).
    let (_, errors) = sw.connect(&client, "web", 10)?;
    if !errors.is_empty() {
        let restarted = sw.tasks("web").is_ok_and(|t| {
            t.iter()
                .any(|t| t["container"] == victim.as_str() && t["restarts"] == 1)
        });
        assert!(
            restarted,
            "refused while the dead task was out of the backends: {errors}"
        );
    }
    let restarted = time_until("the task restarted", Duration::from_secs(10), || {
        sw.tasks("web").is_ok_and(|t| {
            t.iter().any(|t| {
                t["container"] == victim.as_str() && t["state"] == "running" && t["restarts"] == 1
            })
        }) && sw
            .backends(1)
            .is_ok_and(|b| b.get(&vip).is_some_and(|s| s.contains(&ip)))
    })
    .with_context(|| {
        format!(
            "{victim} on {node}: backends {:?}; tasks {:#?}\n{}",
            sw.backends(1),
            sw.tasks("web"),
            sw.log(&format!("control-{node}"))
        )
    })?;
    eprintln!("and came back after {restarted:?}");
    // Once its server listens, every connection through the VIP succeeds.
    sw.wait_listening(&client, [&ip])?;
    let (_, errors) = sw.connect(&client, "web", 20)?;
    assert!(errors.is_empty(), "{errors}");

    // A host killed: its tasks run elsewhere within 5 s of Down, and the
    // VIP stops sending to them.
    sw.wait_running("web", 2, Duration::from_secs(10))?;
    m.ok(&["service", "scale", "web=3"])?;
    sw.wait_running("web", 3, Duration::from_secs(30))?;
    let on3: Vec<(String, String, String)> = sw
        .running("web")?
        .into_iter()
        .filter(|t| t.1 == "host3")
        .collect();
    ensure!(
        !on3.is_empty(),
        "no task on host3 to lose: {:?}",
        sw.running("web")?
    );
    let h3 = sw.on("host3")?;
    process::kill_pid(h3.pid, libc::SIGKILL);
    process::kill_pid(sw.dataplane_pids[2], libc::SIGKILL);
    let is_down = || {
        m.json(&["node", "inspect", "host3"])
            .is_ok_and(|v| v[0]["Status"]["State"] == "down")
    };
    time_until("host3 Down", Duration::from_secs(10), is_down)?;
    let took = time_until("host3's tasks elsewhere", Duration::from_secs(10), || {
        sw.running("web")
            .is_ok_and(|r| r.len() == 3 && r.iter().all(|t| t.1 != "host3"))
    })?;
    eprintln!("host3's tasks ran elsewhere {took:?} after it was Down");
    assert!(
        took <= Duration::from_secs(5),
        "rescheduled {took:?} after Down (at most 5 s)"
    );
    // (A new task may have taken a freed address: what counts is that the
    // backends are exactly the running tasks, none of them on host3.)
    let want = addresses(&sw.running("web")?);
    time_until(
        "the backends are the new tasks",
        Duration::from_secs(5),
        || sw.vip_on(&[1, 2], &vip, &want),
    )
    .with_context(|| format!("want {want:?}: {:?} {:?}", sw.backends(1), sw.backends(2)))?;
    sw.wait_listening(&client, &want)?;
    let (counts, errors) = sw.connect(&client, "web", 60)?;
    assert!(errors.is_empty(), "{errors}");
    assert_eq!(counts.len(), 3, "{counts:?}");

    // Removed: no VIP, no names.
    m.ok(&["service", "rm", "web"])?;
    time_until("the VIP left host1", Duration::from_secs(10), || {
        sw.backends(1).is_ok_and(|b| !b.contains_key(&vip))
    })?;
    let (none, _) = sw.dig(&client, "web", "A")?;
    assert!(none.is_empty(), "{none:?}");
    Ok(())
}

/// A global service gets a task on a host that joins later; a DNSRR
/// service has no VIP, and its name answers the tasks' addresses; running
/// tasks join and leave networks with their service; a drained node's
/// tasks go elsewhere (or, global, away).
#[test]
fn global_and_dnsrr_services() -> Result<()> {
    if !root_or_skip("global_and_dnsrr_services") {
        return Ok(());
    }
    let sw = Swarm::new(3, 2)?;
    let m = sw.manager();
    m.ok(&["network", "create", "-d", "overlay", "--attachable", "gnet"])?;
    m.ok(&[
        "service",
        "create",
        "--name",
        "agent",
        "--mode",
        "global",
        "--network",
        "gnet",
        "--",
        "python3",
        &sw.whoami,
    ])?;
    sw.wait_running("agent", 2, Duration::from_secs(30))?;

    // host3 joins: it gets its task.
    let token = m.ok(&["swarm", "join-token", "-q", "worker"])?;
    let ip1 = sw.tb.host(1).underlay_v4.to_string();
    let ip3 = sw.tb.host(3).underlay_v4.to_string();
    sw.controls[2].ok(&[
        "swarm",
        "join",
        "--token",
        token.trim(),
        "--advertise-addr",
        &ip3,
        &format!("{ip1}:2377"),
    ])?;
    sw.wait_running("agent", 3, Duration::from_secs(30))?;
    let nodes: BTreeSet<String> = sw.running("agent")?.into_iter().map(|t| t.1).collect();
    assert_eq!(
        nodes,
        BTreeSet::from(["host1".into(), "host2".into(), "host3".into()])
    );

    // DNSRR: the name is the tasks.
    m.ok(&[
        "service",
        "create",
        "--name",
        "rr",
        "--replicas",
        "2",
        "--endpoint-mode",
        "dnsrr",
        "--network",
        "gnet",
        "--",
        "python3",
        &sw.whoami,
    ])?;
    sw.wait_running("rr", 2, Duration::from_secs(30))?;
    let v = m.json(&["service", "inspect", "rr"])?;
    assert_eq!(v[0]["Endpoint"]["VirtualIPs"], serde_json::json!([]), "{v}");
    let client = sw.container(m, "probe", "gnet", &[])?;
    let want = addresses(&sw.running("rr")?);
    time_until("rr answers its tasks", Duration::from_secs(10), || {
        sw.dig(&client, "rr", "A").is_ok_and(|(a, _)| a == want)
    })?;
    let (counts, errors) = sw.connect(&client, "rr", 20)?;
    assert!(errors.is_empty(), "{errors}");
    assert!(!counts.is_empty());

    // Joining another network: its containers resolve and reach the tasks.
    m.ok(&[
        "network",
        "create",
        "-d",
        "overlay",
        "--attachable",
        "gnet2",
    ])?;
    m.ok(&["service", "update", "--network-add", "gnet2", "rr"])?;
    let probe2 = sw.container(m, "probe2", "gnet2", &[])?;
    time_until("rr answers on gnet2", Duration::from_secs(10), || {
        sw.dig(&probe2, "rr", "A")
            .is_ok_and(|(a, _)| a.len() == 2 && a.is_disjoint(&want))
    })
    .with_context(|| format!("{:?}", sw.dig(&probe2, "rr", "A")))?;
    let (_, errors) = sw.connect(&probe2, "rr", 10)?;
    assert!(errors.is_empty(), "{errors}");

    // Draining host2 takes every task off it: the global one goes, the
    // replicated ones run elsewhere; DNS follows.
    m.ok(&["node", "update", "--availability", "drain", "host2"])?;
    let off_host2 = |service: &str, n: usize| {
        sw.running(service)
            .is_ok_and(|r| r.len() == n && r.iter().all(|t| t.1 != "host2"))
            && sw.tasks(service).is_ok_and(|t| {
                t.iter()
                    .all(|t| t["node"] != "host2" || t["state"] != "running")
            })
    };
    time_until(
        "nothing runs on the drained host2",
        Duration::from_secs(30),
        || off_host2("agent", 2) && off_host2("rr", 2),
    )
    .with_context(|| format!("{:#?} {:#?}", sw.tasks("agent"), sw.tasks("rr")))?;
    let want = addresses(&sw.running("rr")?);
    time_until(
        "rr answers its moved tasks",
        Duration::from_secs(10),
        || sw.dig(&client, "rr", "A").is_ok_and(|(a, _)| a == want),
    )?;
    m.ok(&["node", "update", "--availability", "active", "host2"])?;
    sw.wait_running("agent", 3, Duration::from_secs(30))?;

    // Leaving a network: the name goes there, and stays on the other.
    m.ok(&["service", "update", "--network-rm", "gnet", "rr"])?;
    time_until("rr gone from gnet", Duration::from_secs(10), || {
        sw.dig(&client, "rr", "A").is_ok_and(|(a, _)| a.is_empty())
    })?;
    let (_, errors) = sw.connect(&probe2, "rr", 10)?;
    assert!(errors.is_empty(), "{errors}");
    Ok(())
}
