//! A swarm on the testbed: `vxnet-control` beside each host's dataplane,
//! `swarm init` on host1 and `swarm join` on the others, driven through
//! the `vxnet` CLI as a user would.
//!
//! The control daemon runs in its host's network namespace (its gossip
//! and management sockets bind the host's address) but in the root mount
//! namespace: it is started with `nsenter --net`, not `ip netns exec`,
//! whose private mount namespace would hide the container namespaces it
//! creates from the dataplane and the CLI. Container namespaces are named
//! `<host ns>-<container>`, so `down` and teardown remove them with the
//! rest of the run.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::process::{self, BackgroundProc, CmdOutput};
use crate::topology::{Host, Testbed};
use crate::vxnet::{CLI_BIN, find_binary, wait_for_socket};

/// The control daemon's binary.
pub const CONTROL_BIN: &str = "vxnet-control";
/// How long one CLI call may take (a join waits for TLS to the manager).
const CLI_TIMEOUT: Duration = Duration::from_secs(60);

/// A running control daemon.
#[derive(Debug, Clone)]
pub struct Control {
    pub host: usize,
    /// Its Unix socket (the CLI's `VXNET_CONTROL_SOCKET`).
    pub socket: PathBuf,
    pub pid: u32,
}

/// A service task for tests and demos (`python3 whoami.py`): HTTP on port
/// 80 answers the task's name and the client address it saw; TCP port 7000
/// greets with the name and echoes; UDP port 7000 answers with the name,
/// the client address and the datagram.
pub const WHOAMI_PY: &str = include_str!("assets/whoami.py");

impl Control {
    /// `vxnet ARGS` against this daemon.
    pub fn cli(&self, args: &[&str]) -> Result<CmdOutput> {
        vxnet_ctl(&self.socket, args)
    }

    /// The output of `vxnet ARGS`, which must succeed.
    pub fn ok(&self, args: &[&str]) -> Result<String> {
        Ok(self
            .cli(args)?
            .check()
            .with_context(|| format!("vxnet {}", args.join(" ")))?
            .stdout)
    }

    /// The JSON output of `vxnet ARGS` (an `inspect`, or a listing with
    /// `--format json`).
    pub fn json(&self, args: &[&str]) -> Result<serde_json::Value> {
        let out = self.ok(args)?;
        serde_json::from_str(&out)
            .with_context(|| format!("vxnet {}: not JSON: {out}", args.join(" ")))
    }
}

/// Runs the `vxnet` CLI against a control daemon's socket (from the root
/// namespaces, as `container run` needs `ip netns exec`).
pub fn vxnet_ctl(socket: &Path, args: &[&str]) -> Result<CmdOutput> {
    let cli = find_binary(CLI_BIN)?;
    let mut argv = vec![cli.display().to_string()];
    argv.extend(args.iter().map(|s| (*s).to_string()));
    process::run_env(
        None,
        &argv,
        &[("VXNET_CONTROL_SOCKET", socket.as_os_str())],
        CLI_TIMEOUT,
    )
}

impl Testbed {
    /// Writes [`WHOAMI_PY`] into the run's state directory; returns its
    /// path (removed with the testbed).
    pub fn install_whoami(&self) -> Result<PathBuf> {
        let path = self.state_dir().join("whoami.py");
        std::fs::write(&path, WHOAMI_PY).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// Starts `vxnet-control` for `host` beside its dataplane at
    /// `dataplane_socket`; the testbed stops it at teardown.
    pub fn start_control(&self, host: &Host, dataplane_socket: &Path) -> Result<Control> {
        self.start_control_with(host, dataplane_socket, &[])
    }

    /// [`Testbed::start_control`] with more `vxnet-control` options (say
    /// `--gossip-key-rotation 3s`, or `--hostname NAME` instead of the
    /// host's own).
    pub fn start_control_with(
        &self,
        host: &Host,
        dataplane_socket: &Path,
        extra: &[&str],
    ) -> Result<Control> {
        let (c, p) = self.launch_control(host, dataplane_socket, false, extra)?;
        self.adopt(p);
        Ok(c)
    }

    /// [`Testbed::start_control`] for a process that outlives us (`up`).
    pub fn start_control_detached(&self, host: &Host, dataplane_socket: &Path) -> Result<Control> {
        let (c, p) = self.launch_control(host, dataplane_socket, true, &[])?;
        std::mem::forget(p);
        Ok(c)
    }

    fn launch_control(
        &self,
        host: &Host,
        dataplane_socket: &Path,
        detached: bool,
        extra: &[&str],
    ) -> Result<(Control, BackgroundProc)> {
        let bin = find_binary(CONTROL_BIN)?;
        let socket = self.state_dir().join(format!("{}-control.sock", host.name));
        let _ = std::fs::remove_file(&socket);
        let state = self.state_dir().join(format!("{}-control", host.name));
        let mut argv: Vec<String> = vec![
            "nsenter".into(),
            format!("--net=/run/netns/{}", host.ns),
            "--".into(),
            bin.display().to_string(),
            "--socket".into(),
            socket.display().to_string(),
            "--state-dir".into(),
            state.display().to_string(),
            "--dataplane-socket".into(),
            dataplane_socket.display().to_string(),
            "--advertise-addr".into(),
            host.underlay_v4.to_string(),
            "--netns-prefix".into(),
            format!("{}-", host.ns),
            "--reconcile-interval".into(),
            "1".into(),
        ];
        // The host's name unless the caller gives its own (two hosts
        // sharing one is what some tests need).
        if !extra.contains(&"--hostname") {
            argv.extend(["--hostname".into(), host.name.clone()]);
        }
        argv.extend(extra.iter().map(|a| (*a).to_owned()));
        let name = format!("control-{}", host.name);
        let log = self.log_path(&name);
        let mut p = if detached {
            BackgroundProc::spawn_detached(&name, None, &argv, &log)?
        } else {
            BackgroundProc::spawn(&name, None, &argv, &log)?
        };
        wait_for_socket(&socket, &mut p)?;
        let c = Control {
            host: host.index,
            socket,
            pid: p.pid(),
        };
        Ok((c, p))
    }

    /// `swarm init` on the first daemon, `swarm join` with the worker token
    /// on the others. Returns the worker join token.
    pub fn form_swarm(&self, controls: &[Control]) -> Result<String> {
        self.form_swarm_with(controls, false)
    }

    /// [`Testbed::form_swarm`]; with `v6` the nodes advertise their IPv6
    /// underlay addresses, so management, gossip and the data path run
    /// over IPv6 (each dataplane must use its host's IPv6 address as VTEP).
    pub fn form_swarm_with(&self, controls: &[Control], v6: bool) -> Result<String> {
        let Some((first, rest)) = controls.split_first() else {
            bail!("no control daemon to form a swarm with");
        };
        let addr = |h: &Host| -> std::net::IpAddr {
            if v6 {
                h.underlay_v6.into()
            } else {
                h.underlay_v4.into()
            }
        };
        let manager = addr(self.host(first.host));
        let ip = manager.to_string();
        vxnet_ctl(&first.socket, &["swarm", "init", "--advertise-addr", &ip])?
            .check()
            .context("swarm init")?;
        let token = vxnet_ctl(&first.socket, &["swarm", "join-token", "-q", "worker"])?
            .check()?
            .stdout
            .trim()
            .to_string();
        let remote = std::net::SocketAddr::new(manager, 2377).to_string();
        for c in rest {
            let h = self.host(c.host);
            let a = addr(h).to_string();
            vxnet_ctl(
                &c.socket,
                &[
                    "swarm",
                    "join",
                    "--token",
                    &token,
                    "--advertise-addr",
                    &a,
                    &remote,
                ],
            )?
            .check()
            .with_context(|| format!("swarm join of {}", h.name))?;
        }
        Ok(token)
    }
}
