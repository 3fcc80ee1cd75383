//! The testbed topology: hosts and containers as network namespaces, an
//! underlay joining the hosts, and their teardown.
//!
//! ```text
//!   netns <prefix>-ul:   br0 ── h1 ─┐        ┌─ h2 ── br0      (one bridge)
//!                                   │ veth   │
//!   netns <prefix>-h1:         eth0 192.0.2.11/24, 2001:db8::11/64
//!   netns <prefix>-h2:         eth0 192.0.2.12/24, 2001:db8::12/64
//!   netns <prefix>-h1-c1:      lo (+ eth0 made by the dataplane or a helper)
//!   netns <prefix>-x1:         eth0 192.0.2.231/24 on br0: an outside client
//! ```
//!
//! Nothing is created in the root namespace: veths are created inside the
//! underlay namespace with their peer moved straight into the host's. A
//! `Testbed` owns every namespace and process it made and removes them when
//! dropped (also while a test unwinds from a panic); [`down`] removes what an
//! earlier, killed run left behind.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::process::{self, BackgroundProc, CmdOutput};

/// Every namespace this crate creates starts with this.
pub const NAME_PREFIX: &str = "vxtb";

/// Where run state (sockets, logs, the `up` state file) lives.
pub const STATE_ROOT: &str = "/run/vxnet-testbed";

/// Timeout for quick configuration commands (`ip`, `bridge`, `sysctl`).
pub const CONFIG_TIMEOUT: Duration = Duration::from_secs(20);

/// Default timeout for [`Testbed::exec`].
pub const EXEC_TIMEOUT: Duration = Duration::from_secs(60);

/// Distinguishes several testbeds made by one process (parallel tests).
static INSTANCE: AtomicU32 = AtomicU32::new(0);

/// What to build.
#[derive(Debug, Clone)]
pub struct TestbedConfig {
    /// Number of hosts (1..=200).
    pub hosts: usize,
    /// MTU of the underlay links (1500 default, 9000 for jumbo tests).
    pub underlay_mtu: u32,
}

impl Default for TestbedConfig {
    fn default() -> Self {
        TestbedConfig {
            hosts: 2,
            underlay_mtu: 1500,
        }
    }
}

/// One simulated host: a namespace with an underlay `eth0`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Host {
    /// 1-based.
    pub index: usize,
    /// "host1", ...
    pub name: String,
    /// The namespace name.
    pub ns: String,
    pub underlay_v4: Ipv4Addr,
    pub underlay_v6: Ipv6Addr,
}

/// A container namespace belonging to a host.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Container {
    /// Short name given by the caller ("c1").
    pub name: String,
    /// The namespace name (`<host ns>-<name>`).
    pub ns: String,
    /// Index of the host it runs on.
    pub host: usize,
}

/// A set of hosts and containers that is torn down on drop.
#[derive(Debug)]
pub struct Testbed {
    prefix: String,
    state_dir: PathBuf,
    underlay_ns: String,
    underlay_mtu: u32,
    hosts: Vec<Host>,
    /// Every namespace created, in creation order (deleted in reverse).
    namespaces: Mutex<Vec<String>>,
    procs: Mutex<Vec<BackgroundProc>>,
    /// Set by [`Testbed::detach`]: leave everything running.
    detached: bool,
}

/// A machine outside the swarm on the underlay ([`Testbed::add_external`]).
#[derive(Debug, Clone)]
pub struct External {
    pub ns: String,
    pub v4: Ipv4Addr,
}

/// Underlay addresses of host `index` (1-based).
pub fn underlay_addrs(index: usize) -> (Ipv4Addr, Ipv6Addr) {
    // Host indexes are bounded to 200 by `Testbed::new`, so 10 + index fits.
    let last = u8::try_from(10 + index).unwrap_or(u8::MAX);
    (
        Ipv4Addr::new(192, 0, 2, last),
        // "2001:db8::11" for host 1, reading like the IPv4 address.
        Ipv6Addr::new(
            0x2001,
            0xdb8,
            0,
            0,
            0,
            0,
            0,
            u16::from_str_radix(&last.to_string(), 16).unwrap_or(0),
        ),
    )
}

/// The prefix for the next testbed made by this process.
pub fn next_prefix() -> String {
    let n = INSTANCE.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id();
    if n == 0 {
        format!("{NAME_PREFIX}{pid}")
    } else {
        format!("{NAME_PREFIX}{pid}x{n}")
    }
}

fn ip<S: AsRef<std::ffi::OsStr>>(argv: &[S]) -> Result<CmdOutput> {
    let mut full: Vec<&std::ffi::OsStr> = vec![std::ffi::OsStr::new("ip")];
    full.extend(argv.iter().map(|a| a.as_ref()));
    process::run(None, &full, CONFIG_TIMEOUT)?.check()
}

/// Runs a command in `ns`, failing on non-zero exit.
pub fn sh_in(ns: &str, argv: &[&str]) -> Result<CmdOutput> {
    process::run(Some(ns), argv, CONFIG_TIMEOUT)?.check()
}

impl Testbed {
    /// Builds hosts and the underlay. On error, whatever was made is removed.
    pub fn new(cfg: TestbedConfig) -> Result<Testbed> {
        Self::with_prefix(next_prefix(), cfg)
    }

    /// [`Testbed::new`] with a caller-chosen prefix (must start with `vxtb`).
    pub fn with_prefix(prefix: String, cfg: TestbedConfig) -> Result<Testbed> {
        if !process::is_root() {
            bail!("the testbed needs root (network namespaces)");
        }
        if !prefix.starts_with(NAME_PREFIX) {
            bail!("prefix {prefix:?} must start with {NAME_PREFIX}");
        }
        if cfg.hosts == 0 || cfg.hosts > 200 {
            bail!("--hosts must be in 1..=200, got {}", cfg.hosts);
        }
        if !(1280..=65000).contains(&cfg.underlay_mtu) {
            bail!(
                "underlay MTU {} out of range 1280..=65000",
                cfg.underlay_mtu
            );
        }
        let state_dir = Path::new(STATE_ROOT).join(&prefix);
        std::fs::create_dir_all(&state_dir)
            .with_context(|| format!("creating {}", state_dir.display()))?;
        std::fs::write(state_dir.join("owner"), std::process::id().to_string())?;
        let hosts = (1..=cfg.hosts)
            .map(|i| {
                let (v4, v6) = underlay_addrs(i);
                Host {
                    index: i,
                    name: format!("host{i}"),
                    ns: format!("{prefix}-h{i}"),
                    underlay_v4: v4,
                    underlay_v6: v6,
                }
            })
            .collect();
        let tb = Testbed {
            underlay_ns: format!("{prefix}-ul"),
            prefix,
            state_dir,
            underlay_mtu: cfg.underlay_mtu,
            hosts,
            namespaces: Mutex::new(Vec::new()),
            procs: Mutex::new(Vec::new()),
            detached: false,
        };
        // If this fails, dropping `tb` removes the partial topology.
        tb.build_underlay()?;
        Ok(tb)
    }

    fn build_underlay(&self) -> Result<()> {
        let ul = self.underlay_ns.clone();
        self.add_netns(&ul)?;
        let mtu = self.underlay_mtu.to_string();
        ip(&["-n", &ul, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &ul, "link", "set", "br0", "mtu", &mtu, "up"])?;
        for h in &self.hosts {
            self.add_netns(&h.ns)?;
            let port = format!("h{}", h.index);
            ip(&[
                "-n", &ul, "link", "add", &port, "mtu", &mtu, "type", "veth", "peer", "name",
                "eth0", "mtu", &mtu, "netns", &h.ns,
            ])?;
            ip(&["-n", &ul, "link", "set", &port, "master", "br0", "up"])?;
            ip(&[
                "-n",
                &h.ns,
                "addr",
                "add",
                &format!("{}/24", h.underlay_v4),
                "dev",
                "eth0",
            ])?;
            ip(&[
                "-n",
                &h.ns,
                "addr",
                "add",
                &format!("{}/64", h.underlay_v6),
                "dev",
                "eth0",
                "nodad",
            ])?;
            ip(&["-n", &h.ns, "link", "set", "eth0", "up"])?;
        }
        Ok(())
    }

    /// An outside machine on the underlay ([`External`], `n` in 1..=20):
    /// a namespace on the underlay bridge with its own address
    /// (192.0.2.230+n), no dataplane, no swarm membership. Removed with
    /// the testbed.
    pub fn add_external(&self, n: u8) -> Result<External> {
        if !(1..=20).contains(&n) {
            bail!("external client {n} out of range 1..=20");
        }
        let ns = format!("{}-x{n}", self.prefix);
        self.add_netns(&ns)?;
        let mtu = self.underlay_mtu.to_string();
        let port = format!("x{n}");
        let ul = self.underlay_ns.clone();
        ip(&[
            "-n", &ul, "link", "add", &port, "mtu", &mtu, "type", "veth", "peer", "name", "eth0",
            "mtu", &mtu, "netns", &ns,
        ])?;
        ip(&["-n", &ul, "link", "set", &port, "master", "br0", "up"])?;
        let v4 = Ipv4Addr::new(192, 0, 2, 230 + n);
        ip(&["-n", &ns, "addr", "add", &format!("{v4}/24"), "dev", "eth0"])?;
        ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        Ok(External { ns, v4 })
    }

    /// Creates a namespace with `lo` up and records it for teardown.
    fn add_netns(&self, name: &str) -> Result<()> {
        ip(&["netns", "add", name])?;
        self.namespaces
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(name.to_string());
        ip(&["-n", name, "link", "set", "lo", "up"])?;
        Ok(())
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Directory for this run's sockets and logs.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    pub fn underlay_ns(&self) -> &str {
        &self.underlay_ns
    }

    pub fn underlay_mtu(&self) -> u32 {
        self.underlay_mtu
    }

    /// Changes the MTU of the whole underlay while it runs: the bridge, its
    /// ports and every host's eth0 (what an operator's network change looks
    /// like to the hosts).
    pub fn set_underlay_mtu(&mut self, mtu: u32) -> Result<()> {
        let m = mtu.to_string();
        let ul = self.underlay_ns.clone();
        for h in &self.hosts {
            ip(&[
                "-n",
                &ul,
                "link",
                "set",
                &format!("h{}", h.index),
                "mtu",
                &m,
            ])?;
            ip(&["-n", &h.ns, "link", "set", "eth0", "mtu", &m])?;
        }
        ip(&["-n", &ul, "link", "set", "br0", "mtu", &m])?;
        self.underlay_mtu = mtu;
        Ok(())
    }

    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// Host `n`, 1-based.
    ///
    /// # Panics
    /// If `n` is not in `1..=hosts` (a caller's mistake, not input).
    pub fn host(&self, n: usize) -> &Host {
        assert!(
            n >= 1 && n <= self.hosts.len(),
            "host index {n} out of range"
        );
        &self.hosts[n - 1]
    }

    /// Finds a host by name ("host1") or index ("1").
    pub fn host_by_name(&self, name: &str) -> Option<&Host> {
        self.hosts
            .iter()
            .find(|h| h.name == name || h.index.to_string() == name || h.ns == name)
    }

    /// Creates container namespace `<host ns>-<name>` with `lo` up.
    pub fn add_container(&self, host: &Host, name: &str) -> Result<Container> {
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric()) {
            bail!("container name {name:?} must be alphanumeric");
        }
        let ns = format!("{}-{name}", host.ns);
        self.add_netns(&ns)?;
        Ok(Container {
            name: name.to_string(),
            ns,
            host: host.index,
        })
    }

    /// Runs `argv` in namespace `ns` with the default timeout (exit status not checked).
    pub fn exec(&self, ns: &str, argv: &[&str]) -> Result<CmdOutput> {
        process::run(Some(ns), argv, EXEC_TIMEOUT)
    }

    /// Runs `argv` in namespace `ns` with a timeout (exit status not checked).
    pub fn exec_timeout(&self, ns: &str, argv: &[&str], timeout: Duration) -> Result<CmdOutput> {
        process::run(Some(ns), argv, timeout)
    }

    /// Runs `argv` in `ns` and fails on a non-zero exit.
    pub fn exec_ok(&self, ns: &str, argv: &[&str]) -> Result<CmdOutput> {
        self.exec(ns, argv)?.check()
    }

    /// Starts a long-running process in `ns`, stopped when the testbed drops.
    /// Returns its pid. Its output goes to `<state dir>/<name>.log`.
    pub fn spawn(&self, ns: &str, name: &str, argv: &[&str]) -> Result<u32> {
        let p = self.spawn_proc(ns, name, argv)?;
        let pid = p.pid();
        self.adopt(p);
        Ok(pid)
    }

    /// Starts a process the caller owns (dropped = stopped); the testbed does
    /// not track it.
    pub fn spawn_proc(&self, ns: &str, name: &str, argv: &[&str]) -> Result<BackgroundProc> {
        BackgroundProc::spawn(name, Some(ns), argv, &self.log_path(name))
    }

    /// Hands a process to the testbed, to be stopped at teardown.
    pub fn adopt(&self, p: BackgroundProc) {
        self.procs.lock().unwrap_or_else(|e| e.into_inner()).push(p);
    }

    /// Stops the processes with these pids that the testbed owns (e.g. one
    /// pair's dataplanes, to free the UDP port for the next) and forgets
    /// them. Unknown pids are ignored.
    pub fn stop_pids(&self, pids: &[u32]) {
        let stopping: Vec<BackgroundProc> = {
            let mut procs = self.procs.lock().unwrap_or_else(|e| e.into_inner());
            let (stop, keep) = std::mem::take(&mut *procs)
                .into_iter()
                .partition(|p| pids.contains(&p.pid()));
            *procs = keep;
            stop
        };
        // Dropping a BackgroundProc stops and reaps it.
        drop(stopping);
    }

    /// Log file path for a process name.
    pub fn log_path(&self, name: &str) -> PathBuf {
        self.state_dir.join(format!("{name}.log"))
    }

    /// Names of every namespace this testbed made (and has not removed).
    pub fn namespaces(&self) -> Vec<String> {
        self.namespaces
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Leaves everything running (for `vxnet-testbed up`): processes started
    /// with [`Testbed::spawn`] are left alone, namespaces are kept; a later
    /// [`down`] removes them.
    pub fn detach(mut self) {
        self.detached = true;
        let procs = std::mem::take(&mut *self.procs.lock().unwrap_or_else(|e| e.into_inner()));
        // The processes must outlive us; forgetting skips their Drop (which
        // would stop them). Their pids stay findable with `ip netns pids`.
        for p in procs {
            std::mem::forget(p);
        }
    }

    /// Stops processes and deletes namespaces. Idempotent; errors are
    /// reported on stderr, never panics (it runs inside Drop).
    pub fn teardown(&mut self) {
        let procs = std::mem::take(&mut *self.procs.lock().unwrap_or_else(|e| e.into_inner()));
        // Stop in reverse start order: clients before the dataplane they use.
        for mut p in procs.into_iter().rev() {
            p.stop();
        }
        let namespaces =
            std::mem::take(&mut *self.namespaces.lock().unwrap_or_else(|e| e.into_inner()));
        for ns in namespaces.iter().rev() {
            if let Err(e) = destroy_netns(ns) {
                eprintln!("vxnet-testbed: teardown of {ns}: {e:#}");
            }
        }
        // Namespaces others made under our prefix (control daemons'
        // containers are named `<host ns>-<name>`).
        destroy_prefix(&self.prefix);
        let _ = std::fs::remove_dir_all(&self.state_dir);
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        if !self.detached {
            self.teardown();
        }
    }
}

/// Kills every process inside `ns`, then deletes it. Deleting a namespace
/// also removes the veths in it (and their peers elsewhere).
pub fn destroy_netns(ns: &str) -> Result<()> {
    kill_netns_processes(ns);
    // A control daemon's container keeps its resolv.conf here.
    let _ = std::fs::remove_dir_all(Path::new("/etc/netns").join(ns));
    let out = process::run(None, &["ip", "netns", "del", ns], CONFIG_TIMEOUT)?;
    if !out.success() && list_netns()?.iter().any(|n| n == ns) {
        bail!("ip netns del {ns}: {}", out.stderr.trim());
    }
    Ok(())
}

/// SIGTERM, then SIGKILL, to every process inside `ns`.
fn kill_netns_processes(ns: &str) {
    for sig in [libc::SIGTERM, libc::SIGKILL] {
        let pids = netns_pids(ns);
        if pids.is_empty() {
            break;
        }
        for pid in &pids {
            process::kill_pid(*pid, sig);
        }
        process::wait_until(Duration::from_secs(3), || netns_pids(ns).is_empty());
    }
}

fn netns_pids(ns: &str) -> Vec<u32> {
    match process::run(None, &["ip", "netns", "pids", ns], CONFIG_TIMEOUT) {
        Ok(out) => out
            .stdout
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .filter(|p| *p != std::process::id())
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Names in `ip netns list`.
pub fn list_netns() -> Result<Vec<String>> {
    let out = process::run(None, &["ip", "netns", "list"], CONFIG_TIMEOUT)?.check()?;
    Ok(out
        .stdout
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect())
}

/// The pid encoded in a testbed name (`vxtb<pid>...`).
pub fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(NAME_PREFIX)?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// The run prefix of a testbed namespace name (`vxtb123x1-h1-c1` -> `vxtb123x1`).
pub fn prefix_of(name: &str) -> Option<&str> {
    if !name.starts_with(NAME_PREFIX) {
        return None;
    }
    Some(name.split('-').next().unwrap_or(name))
}

/// What [`down`] removed.
#[derive(Debug, Default)]
pub struct DownReport {
    pub namespaces: Vec<String>,
    pub skipped_live: Vec<String>,
}

/// Removes namespaces (with their processes) and state left by earlier runs.
/// Only runs whose owning process is gone are removed, so testbeds of running
/// tests are left alone, unless `all` is set. `keep` names a prefix never to
/// touch (our own).
pub fn down(all: bool, keep: Option<&str>) -> Result<DownReport> {
    let mut report = DownReport::default();
    let mut names: Vec<String> = list_netns()?
        .into_iter()
        .filter(|n| n.starts_with(NAME_PREFIX))
        .collect();
    // Containers first, then hosts, then the underlay: longest names first.
    names.sort_by_key(|n| std::cmp::Reverse(n.len()));
    let live = |name: &str| -> bool {
        if keep.is_some_and(|k| prefix_of(name) == Some(k)) {
            return true;
        }
        !all && owner_pid(name).is_some_and(process::pid_alive)
    };
    let (skipped, doomed): (Vec<String>, Vec<String>) = names.into_iter().partition(|n| live(n));
    report.skipped_live = skipped;
    // Hosts' processes first: a control daemon still running would make
    // its containers' namespaces again (restart policy) as they go.
    for n in doomed.iter().rev() {
        kill_netns_processes(n);
    }
    for n in doomed {
        destroy_netns(&n)?;
        report.namespaces.push(n);
    }
    if let Ok(dir) = std::fs::read_dir(STATE_ROOT) {
        for entry in dir.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(NAME_PREFIX) && !live(&name) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    if let Ok(Some(st)) = crate::state::UpState::load()
        && !live(&st.prefix)
    {
        let _ = std::fs::remove_file(crate::state::UpState::path());
    }
    Ok(report)
}

/// Removes every namespace and process of one run prefix, right now (used by
/// the signal handler, which cannot reach the `Testbed` value).
pub fn destroy_prefix(prefix: &str) {
    let mut names: Vec<String> = list_netns()
        .unwrap_or_default()
        .into_iter()
        .filter(|n| prefix_of(n) == Some(prefix))
        .collect();
    names.sort_by_key(|n| std::cmp::Reverse(n.len()));
    for n in names.iter().rev() {
        kill_netns_processes(n);
    }
    for n in names {
        if let Err(e) = destroy_netns(&n) {
            eprintln!("vxnet-testbed: {e:#}");
        }
    }
    let _ = std::fs::remove_dir_all(Path::new(STATE_ROOT).join(prefix));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_addresses() {
        assert_eq!(owner_pid("vxtb1234-h1-c1"), Some(1234));
        assert_eq!(owner_pid("vxtb1234x2-ul"), Some(1234));
        assert_eq!(owner_pid("vxtbx-ul"), None);
        assert_eq!(owner_pid("other"), None);
        assert_eq!(prefix_of("vxtb1234x2-h1-c1"), Some("vxtb1234x2"));
        assert_eq!(prefix_of("foo-h1"), None);
        let (v4, v6) = underlay_addrs(1);
        assert_eq!(v4.to_string(), "192.0.2.11");
        assert_eq!(v6.to_string(), "2001:db8::11");
        let (v4, v6) = underlay_addrs(2);
        assert_eq!(v4.to_string(), "192.0.2.12");
        assert_eq!(v6.to_string(), "2001:db8::12");
    }

    #[test]
    fn prefixes_are_unique_per_process() {
        let a = next_prefix();
        let b = next_prefix();
        assert_ne!(a, b);
        assert_eq!(owner_pid(&a), Some(std::process::id()));
        assert_eq!(owner_pid(&b), Some(std::process::id()));
    }
}
