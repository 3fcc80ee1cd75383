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
    /// `--rekey-interval` ("30s", "12h"); the dataplane's default when unset.
    pub rekey_interval: Option<String>,
    /// `--allow-key-export`: lets `vxnet dp sa --show-keys` print keys (for
    /// decoding captures with tshark).
    pub allow_key_export: bool,
    /// Use the host's IPv6 underlay address as the VTEP (IPv6 outer headers).
    pub underlay_v6: bool,
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
        if let Some(r) = &self.rekey_interval {
            a.extend(["--rekey-interval".to_string(), r.clone()]);
        }
        if self.allow_key_export {
            a.push("--allow-key-export".to_string());
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

/// One entry of `vxnet dp vtep ls --format json`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct VtepState {
    pub vtep: String,
    /// A handshake completed: encrypted traffic can flow.
    pub established: bool,
    /// Key generation; each completed rotation increments it.
    pub generation: u32,
    /// A rotation is under way.
    pub rotating: bool,
}

/// One entry of `vxnet dp sa --format json`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct SaInfo {
    /// "0x1234abcd".
    pub spi: String,
    /// "in" or "out".
    pub direction: String,
    pub peer: String,
    pub vni: u32,
    pub generation: u32,
    pub packets: u64,
    pub age_secs: f64,
    /// "active" or "standby".
    pub state: String,
    pub src: String,
    pub dst: String,
    /// AES-GCM key in hex (only with `--show-keys`).
    #[serde(default)]
    pub key: Option<String>,
    /// AES-GCM salt in hex (only with `--show-keys`).
    #[serde(default)]
    pub salt: Option<String>,
}

/// `vxnet dp stats --format json`.
pub type Stats = vxnet_api::dp::StatsReport;

/// Counter and drop lookups by name.
pub trait StatsExt {
    fn counter(&self, name: &str) -> Option<u64>;
    fn drop_count(&self, stage: &str, reason: &str) -> Option<u64>;
}

impl StatsExt for Stats {
    fn counter(&self, name: &str) -> Option<u64> {
        self.counters
            .iter()
            .find(|c| c.name == name)
            .map(|c| c.value)
    }

    fn drop_count(&self, stage: &str, reason: &str) -> Option<u64> {
        self.drops
            .iter()
            .find(|d| d.stage == stage && d.reason == reason)
            .map(|d| d.count)
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
        // Each dataplane gets its own host key in the run's state directory,
        // which teardown removes: never the system default under /var/lib.
        let key_file = self.state_dir().join(format!("{}.key", host.name));
        let mut argv: Vec<String> = vec![
            bin.display().to_string(),
            "--local-vtep".into(),
            if opts.underlay_v6 {
                host.underlay_v6.to_string()
            } else {
                host.underlay_v4.to_string()
            },
            "--socket".into(),
            socket.display().to_string(),
            "--key-file".into(),
            key_file.display().to_string(),
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

impl Testbed {
    /// Stops these dataplanes (started with [`Testbed::start_dataplane`]),
    /// freeing the VXLAN port in their hosts.
    pub fn stop_dataplanes(&self, dps: &[&Dataplane]) {
        let pids: Vec<u32> = dps.iter().map(|d| d.pid).collect();
        self.stop_pids(&pids);
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

    /// Native attach without `--mtu`: the endpoint gets the MTU the
    /// dataplane's underlay carries (the path MTU rule; `ep.mtu` unused).
    pub fn attach_path_mtu(&self, c: &Container, vni: u32, ep: &EndpointSpec) -> Result<CmdOutput> {
        let vni = vni.to_string();
        let mut args = vec!["attach", "--netns", &c.ns, "--vni", &vni, "--mac", &ep.mac];
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

    /// The host's X25519 public key (base64), from `vxnet dp show`.
    pub fn public_key(&self) -> Result<String> {
        let show = self.show()?;
        show.get("public_key")
            .and_then(|k| k.as_str())
            .map(str::to_string)
            .with_context(|| format!("`vxnet dp show` has no public_key: {show}"))
    }

    /// `network add --vni N [--encrypted]`.
    pub fn network_add(&self, vni: u32, encrypted: bool) -> Result<CmdOutput> {
        let vni = vni.to_string();
        let mut args = vec!["network", "add", "--vni", &vni];
        if encrypted {
            args.push("--encrypted");
        }
        self.cli_ok(&args)
    }

    /// `network add --vni N [--encrypted] [--no-flood] [--flood-rate R]`:
    /// declares a network or changes its flooding.
    pub fn network_flood(
        &self,
        vni: u32,
        encrypted: bool,
        flood: bool,
        rate: Option<u32>,
    ) -> Result<CmdOutput> {
        let vni = vni.to_string();
        let rate = rate.map(|r| r.to_string());
        let mut args = vec!["network", "add", "--vni", &vni];
        if encrypted {
            args.push("--encrypted");
        }
        if !flood {
            args.push("--no-flood");
        }
        if let Some(r) = &rate {
            args.extend(["--flood-rate", r]);
        }
        self.cli_ok(&args)
    }

    /// `network ls --format json`.
    pub fn networks(&self) -> Result<Vec<vxnet_api::dp::NetworkInfo>> {
        let out = self.cli_ok(&["network", "ls", "--format", "json"])?;
        serde_json::from_str(&out.stdout)
            .with_context(|| format!("parsing `vxnet dp network ls` output: {}", out.stdout))
    }

    /// `vtep add`: host `vtep` has public key `pubkey`.
    pub fn vtep_add(&self, vtep: &str, pubkey: &str) -> Result<CmdOutput> {
        self.cli_ok(&["vtep", "add", "--vtep", vtep, "--pubkey", pubkey])
    }

    /// `vtep del`: forget host `vtep`'s key (its SAs go with it).
    pub fn vtep_del(&self, vtep: &str) -> Result<CmdOutput> {
        self.cli_ok(&["vtep", "del", "--vtep", vtep])
    }

    /// `vtep ls --format json`.
    pub fn vteps(&self) -> Result<Vec<VtepState>> {
        let out = self.cli_ok(&["vtep", "ls", "--format", "json"])?;
        serde_json::from_str(&out.stdout)
            .with_context(|| format!("parsing `vxnet dp vtep ls` output: {}", out.stdout))
    }

    /// The state of VTEP `vtep`, if the dataplane knows it.
    pub fn vtep(&self, vtep: &str) -> Result<Option<VtepState>> {
        Ok(self.vteps()?.into_iter().find(|v| v.vtep == vtep))
    }

    /// Polls `vtep ls` until `vtep` is established at a generation of at
    /// least `generation` and not rotating; returns its state.
    pub fn wait_vtep(&self, vtep: &str, generation: u32, timeout: Duration) -> Result<VtepState> {
        let mut last = None;
        let mut err = None;
        let ok = process::wait_until(timeout, || match self.vtep(vtep) {
            Ok(v) => {
                let done = v
                    .as_ref()
                    .is_some_and(|v| v.established && !v.rotating && v.generation >= generation);
                last = v;
                done
            }
            Err(e) => {
                err = Some(format!("{e:#}"));
                false
            }
        });
        match (ok, last) {
            (true, Some(v)) => Ok(v),
            (_, last) => bail!(
                "host{}: VTEP {vtep} not established at generation >= {generation} within \
                 {timeout:?}: last {last:?}, error {err:?}",
                self.host
            ),
        }
    }

    /// `rekey [--vtep IP]`: starts a rotation now.
    pub fn rekey(&self, vtep: Option<&str>) -> Result<CmdOutput> {
        match vtep {
            Some(v) => self.cli_ok(&["rekey", "--vtep", v]),
            None => self.cli_ok(&["rekey"]),
        }
    }

    /// `sa [--show-keys] --format json`.
    pub fn sas(&self, show_keys: bool) -> Result<Vec<SaInfo>> {
        let mut args = vec!["sa", "--format", "json"];
        if show_keys {
            args.push("--show-keys");
        }
        let out = self.cli_ok(&args)?;
        serde_json::from_str(&out.stdout)
            .with_context(|| format!("parsing `vxnet dp sa` output: {}", out.stdout))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_json_shape() {
        let s: Stats = serde_json::from_str(
            r#"{"workers":2,"counters":[{"name":"tap_rx_frames","value":123,"help":""},{"name":"wire_rx","value":5,"help":""}],"drops":[{"stage":"wire","reason":"unknown_vni","count":7,"help":""},{"stage":"wire","reason":"runt","count":0,"help":""}]}"#,
        )
        .unwrap();
        assert_eq!(s.workers, 2);
        assert_eq!(s.counter("tap_rx_frames"), Some(123));
        assert_eq!(s.counter("nope"), None);
        assert_eq!(s.drop_count("wire", "unknown_vni"), Some(7));
        assert_eq!(s.drop_count("tap", "unknown_vni"), None);
    }

    #[test]
    fn vtep_and_sa_json_shapes() {
        let v: Vec<VtepState> = serde_json::from_str(
            r#"[{"vtep":"192.0.2.12","pubkey":"abc=","established":true,"generation":3,"rotating":false}]"#,
        )
        .unwrap();
        assert_eq!(v[0].vtep, "192.0.2.12");
        assert!(v[0].established && !v[0].rotating);
        assert_eq!(v[0].generation, 3);
        let s: Vec<SaInfo> = serde_json::from_str(
            r#"[{"spi":"0x1234abcd","direction":"out","peer":"192.0.2.12","vni":4097,"generation":1,
                "packets":5,"age_secs":1.5,"state":"active","src":"192.0.2.11","dst":"192.0.2.12",
                "key":"00112233445566778899aabbccddeeff","salt":"01020304"},
               {"spi":"0x0000beef","direction":"in","peer":"192.0.2.12","vni":4097,"generation":1,
                "packets":0,"age_secs":0.0,"state":"standby","src":"192.0.2.12","dst":"192.0.2.11"}]"#,
        )
        .unwrap();
        assert_eq!(s[0].spi, "0x1234abcd");
        assert_eq!(s[0].salt.as_deref(), Some("01020304"));
        assert_eq!(s[1].key, None);
        assert_eq!(s[1].direction, "in");
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
            rekey_interval: Some("30s".into()),
            allow_key_export: true,
            underlay_v6: false,
            extra: vec!["--x".into()],
        };
        assert_eq!(
            o.args(),
            [
                "--port",
                "4790",
                "--poll",
                "busy",
                "--workers",
                "1",
                "--rekey-interval",
                "30s",
                "--allow-key-export",
                "--x"
            ]
        );
    }
}
