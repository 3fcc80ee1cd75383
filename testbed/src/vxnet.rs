//! Driving vxnet itself: finding its binaries, starting a dataplane in a
//! host namespace, and calling the `vxnet dp` CLI against it.

use std::ffi::OsStr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use crate::process::{self, BackgroundProc, CmdOutput};
use crate::topology::{Container, Host, Testbed};

/// How long a dataplane may take to open its API socket.
pub const DATAPLANE_START_TIMEOUT: Duration = Duration::from_secs(20);

/// Timeout for one CLI call.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(30);

/// The dataplane binary's name.
pub const DATAPLANE_BIN: &str = "vxnet-dataplane";
/// The CLI binary's name.
pub const CLI_BIN: &str = "vxnet";

/// Finds a binary next to the running executable (its directory, then the
/// parent, since integration tests run from `target/<profile>/deps`), else on
/// PATH.
pub fn find_binary(name: &str) -> Result<PathBuf> {
    if let Ok(exe) = std::env::current_exe() {
        let mut dir = exe.parent();
        for _ in 0..2 {
            let Some(d) = dir else { break };
            let candidate = d.join(name);
            if candidate.is_file() {
                return Ok(candidate);
            }
            dir = d.parent();
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for d in std::env::split_paths(&path) {
            let candidate = d.join(name);
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    bail!(
        "cannot find `{name}` next to {} or on PATH; build it first (cargo build --workspace)",
        std::env::current_exe()
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    )
}

/// How to start a dataplane.
#[derive(Debug, Clone, Default)]
pub struct DataplaneOptions {
    /// `--port` (4789 when unset).
    pub port: Option<u16>,
    /// `--poll busy|adaptive|interrupt`.
    pub poll: Option<String>,
    /// `--workers N`.
    pub workers: Option<usize>,
    /// `--metrics ADDR`.
    pub metrics: Option<String>,
    /// Anything else, appended as is.
    pub extra: Vec<String>,
}

impl DataplaneOptions {
    fn args(&self) -> Vec<String> {
        let mut a = Vec::new();
        if let Some(p) = self.port {
            a.extend(["--port".to_string(), p.to_string()]);
        }
        if let Some(p) = &self.poll {
            a.extend(["--poll".to_string(), p.clone()]);
        }
        if let Some(w) = self.workers {
            a.extend(["--workers".to_string(), w.to_string()]);
        }
        if let Some(m) = &self.metrics {
            a.extend(["--metrics".to_string(), m.clone()]);
        }
        a.extend(self.extra.iter().cloned());
        a
    }
}

/// A running dataplane: where it runs and how to talk to it.
#[derive(Debug, Clone)]
pub struct Dataplane {
    /// The host namespace it runs in.
    pub ns: String,
    pub host: usize,
    pub socket: PathBuf,
    pub pid: u32,
    cli: PathBuf,
}

/// An endpoint to create: MAC, addresses with prefix length, MTU.
#[derive(Debug, Clone)]
pub struct EndpointSpec {
    pub mac: String,
    /// "10.44.0.2/24", "fd44::2/64".
    pub ips: Vec<String>,
    pub mtu: u32,
}

impl EndpointSpec {
    /// The addresses without prefix length.
    pub fn addrs(&self) -> Vec<&str> {
        self.ips
            .iter()
            .map(|a| a.split('/').next().unwrap_or(a))
            .collect()
    }

    /// The first IPv4 address, without prefix length.
    pub fn v4(&self) -> Option<&str> {
        self.addrs().into_iter().find(|a| !a.contains(':'))
    }

    /// The first IPv6 address, without prefix length.
    pub fn v6(&self) -> Option<&str> {
        self.addrs().into_iter().find(|a| a.contains(':'))
    }
}

/// `vxnet dp stats --format json`.
#[derive(Debug, Clone, Deserialize)]
pub struct Stats {
    pub workers: usize,
    pub counters: Vec<(String, u64)>,
    pub drops: Vec<(String, String, u64)>,
}

impl Stats {
    pub fn counter(&self, name: &str) -> Option<u64> {
        self.counters
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| *v)
    }

    pub fn drop_count(&self, stage: &str, reason: &str) -> Option<u64> {
        self.drops
            .iter()
            .find(|(s, r, _)| s == stage && r == reason)
            .map(|(_, _, v)| *v)
    }
}

impl Testbed {
    /// Starts `vxnet-dataplane --local-vtep <host underlay v4>` in the host's
    /// namespace and waits until its API socket accepts connections. It is
    /// stopped at teardown.
    pub fn start_dataplane(&self, host: &Host, opts: &DataplaneOptions) -> Result<Dataplane> {
        let (dp, p) = self.launch_dataplane(host, opts, false)?;
        self.adopt(p);
        Ok(dp)
    }

    /// [`Testbed::start_dataplane`] for a dataplane that outlives this
    /// process (`vxnet-testbed up`); `down` stops it.
    pub fn start_dataplane_detached(
        &self,
        host: &Host,
        opts: &DataplaneOptions,
    ) -> Result<Dataplane> {
        let (dp, p) = self.launch_dataplane(host, opts, true)?;
        // Skip its Drop, which would stop it.
        std::mem::forget(p);
        Ok(dp)
    }

    fn launch_dataplane(
        &self,
        host: &Host,
        opts: &DataplaneOptions,
        detached: bool,
    ) -> Result<(Dataplane, BackgroundProc)> {
        let bin = find_binary(DATAPLANE_BIN)?;
        let cli = find_binary(CLI_BIN)?;
        let socket = self.state_dir().join(format!("{}.sock", host.name));
        let _ = std::fs::remove_file(&socket);
        let mut argv: Vec<String> = vec![
            bin.display().to_string(),
            "--local-vtep".into(),
            host.underlay_v4.to_string(),
            "--socket".into(),
            socket.display().to_string(),
        ];
        argv.extend(opts.args());
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let name = format!("dataplane-{}", host.name);
        let log = self.log_path(&name);
        let mut p = if detached {
            BackgroundProc::spawn_detached(&name, Some(&host.ns), &argv, &log)?
        } else {
            BackgroundProc::spawn(&name, Some(&host.ns), &argv, &log)?
        };
        wait_for_socket(&socket, &mut p)?;
        let dp = Dataplane {
            ns: host.ns.clone(),
            host: host.index,
            socket,
            pid: p.pid(),
            cli,
        };
        Ok((dp, p))
    }
}

/// Polls until `socket` accepts a connection, failing early if `p` exits.
pub fn wait_for_socket(socket: &Path, p: &mut BackgroundProc) -> Result<()> {
    let mut exited = None;
    let ready = process::wait_until(DATAPLANE_START_TIMEOUT, || {
        if let Some(st) = p.exited() {
            exited = Some(st);
            return true;
        }
        UnixStream::connect(socket).is_ok()
    });
    if let Some(st) = exited {
        bail!(
            "{} exited ({st}) before opening {}; log:\n{}",
            p.name,
            socket.display(),
            p.log_tail(4000)
        );
    }
    if !ready {
        bail!(
            "{} did not open {} within {DATAPLANE_START_TIMEOUT:?}; log:\n{}",
            p.name,
            socket.display(),
            p.log_tail(4000)
        );
    }
    Ok(())
}

impl Dataplane {
    /// Describes a dataplane started elsewhere (e.g. by `vxnet-testbed up`).
    pub fn existing(host: &Host, socket: PathBuf, pid: u32) -> Result<Dataplane> {
        Ok(Dataplane {
            ns: host.ns.clone(),
            host: host.index,
            socket,
            pid,
            cli: find_binary(CLI_BIN)?,
        })
    }

    /// Runs `vxnet dp --socket S <args>` in the host's namespace; the exit
    /// status is not checked (bad-input tests want the failure).
    pub fn cli(&self, args: &[&str]) -> Result<CmdOutput> {
        let mut argv: Vec<&OsStr> = vec![
            self.cli.as_os_str(),
            OsStr::new("dp"),
            OsStr::new("--socket"),
            self.socket.as_os_str(),
        ];
        argv.extend(args.iter().map(OsStr::new));
        process::run(Some(&self.ns), &argv, CLI_TIMEOUT)
    }

    /// [`Dataplane::cli`], failing on a non-zero exit.
    pub fn cli_ok(&self, args: &[&str]) -> Result<CmdOutput> {
        self.cli(args)?.check()
    }

    /// Native attach of a container on `vni`.
    pub fn attach(&self, c: &Container, vni: u32, ep: &EndpointSpec) -> Result<CmdOutput> {
        let vni = vni.to_string();
        let mtu = ep.mtu.to_string();
        let mut args = vec![
            "attach", "--netns", &c.ns, "--vni", &vni, "--mac", &ep.mac, "--mtu", &mtu,
        ];
        for ip in &ep.ips {
            args.extend(["--ip", ip.as_str()]);
        }
        self.cli_ok(&args)
    }

    /// `peer add`: `ep` lives behind VTEP `vtep`.
    pub fn peer_add(&self, vni: u32, ep: &EndpointSpec, vtep: &str) -> Result<CmdOutput> {
        let vni = vni.to_string();
        let mut args = vec![
            "peer", "add", "--vni", &vni, "--mac", &ep.mac, "--vtep", vtep,
        ];
        for ip in ep.addrs() {
            args.extend(["--ip", ip]);
        }
        self.cli_ok(&args)
    }

    /// `flood add`: default VTEP for broadcast and unknown unicast.
    pub fn flood_add(&self, vni: u32, vtep: &str) -> Result<CmdOutput> {
        self.cli_ok(&["flood", "add", "--vni", &vni.to_string(), "--vtep", vtep])
    }

    fn json(&self, what: &str) -> Result<serde_json::Value> {
        let out = self.cli_ok(&[what, "--format", "json"])?;
        serde_json::from_str(&out.stdout)
            .with_context(|| format!("parsing `vxnet dp {what}` output: {}", out.stdout))
    }

    pub fn stats(&self) -> Result<Stats> {
        let out = self.cli_ok(&["stats", "--format", "json"])?;
        serde_json::from_str(&out.stdout)
            .with_context(|| format!("parsing `vxnet dp stats` output: {}", out.stdout))
    }

    pub fn endpoints(&self) -> Result<serde_json::Value> {
        self.json("endpoints")
    }

    pub fn fdb(&self) -> Result<serde_json::Value> {
        self.json("fdb")
    }

    pub fn show(&self) -> Result<serde_json::Value> {
        self.json("show")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_json_shape() {
        let s: Stats = serde_json::from_str(
            r#"{"workers":2,"counters":[["tap_rx_frames",123],["wire_rx",5]],"drops":[["wire","unknown_vni",7],["wire","runt",0]]}"#,
        )
        .unwrap();
        assert_eq!(s.workers, 2);
        assert_eq!(s.counter("tap_rx_frames"), Some(123));
        assert_eq!(s.counter("nope"), None);
        assert_eq!(s.drop_count("wire", "unknown_vni"), Some(7));
        assert_eq!(s.drop_count("tap", "unknown_vni"), None);
    }

    #[test]
    fn endpoint_addrs() {
        let ep = EndpointSpec {
            mac: "02:44:00:00:00:02".into(),
            ips: vec!["10.44.0.2/24".into(), "fd44::2/64".into()],
            mtu: 1450,
        };
        assert_eq!(ep.addrs(), vec!["10.44.0.2", "fd44::2"]);
        assert_eq!(ep.v4(), Some("10.44.0.2"));
        assert_eq!(ep.v6(), Some("fd44::2"));
    }

    #[test]
    fn dataplane_options_args() {
        let o = DataplaneOptions {
            port: Some(4790),
            poll: Some("busy".into()),
            workers: Some(1),
            metrics: None,
            extra: vec!["--x".into()],
        };
        assert_eq!(
            o.args(),
            ["--port", "4790", "--poll", "busy", "--workers", "1", "--x"]
        );
    }
}
