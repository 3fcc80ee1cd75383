//! Helpers for tests that run a swarm: daemons on every host, the `vxnet`
//! CLI against a control daemon or a dataplane, and what they print.

use std::time::Duration;

use anyhow::{Context, Result};
use vxnet_testbed::process;
use vxnet_testbed::swarm::Control;
use vxnet_testbed::{Dataplane, DataplaneOptions, Testbed};

use super::dp_opts;

/// Dataplane and control daemon on every host, in host order.
pub fn daemons(tb: &Testbed) -> Result<Vec<(Control, Dataplane)>> {
    daemons_with(tb, &dp_opts())
}

/// [`daemons`] with dataplanes started with `opts`.
pub fn daemons_with(tb: &Testbed, opts: &DataplaneOptions) -> Result<Vec<(Control, Dataplane)>> {
    let mut v = Vec::new();
    for h in tb.hosts() {
        let dp = tb.start_dataplane(h, opts)?;
        let c = tb.start_control(h, &dp.socket)?;
        v.push((c, dp));
    }
    Ok(v)
}

/// `vxnet ARGS` against a control daemon; its stdout, or an error with
/// what it printed when it failed.
pub fn ok(c: &Control, args: &[&str]) -> Result<String> {
    c.ok(args)
}

/// [`ok`] of a command that prints JSON.
pub fn ok_json(c: &Control, args: &[&str]) -> Result<serde_json::Value> {
    c.json(args)
}

/// `container run -d --name NAME --network NET... -- sleep 600`.
pub fn run_sleeper(c: &Control, name: &str, networks: &[&str]) -> Result<String> {
    ok(c, &sleeper_args(name, networks))
}

/// The arguments of [`run_sleeper`], for a run that may be refused.
pub fn sleeper_args<'a>(name: &'a str, networks: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["container", "run", "-d", "--name", name];
    for n in networks {
        args.extend(["--network", n]);
    }
    args.extend(["--", "sleep", "600"]);
    args
}

/// The container's namespace and IPv4 address, from `container inspect`.
pub fn container(c: &Control, name: &str) -> Result<(String, String)> {
    let v = ok_json(c, &["container", "inspect", name])?;
    let ns = v[0]["netns"].as_str().context("netns")?.to_owned();
    let ip = v[0]["networks"][0]["ipv4"]
        .as_str()
        .context("ipv4")?
        .to_owned();
    Ok((ns, ip))
}

/// `vxnet dp <args>` against a host's dataplane socket (which keeps its
/// path across a restart of the dataplane).
pub fn dp(tb: &Testbed, host: usize, args: &[&str]) -> Result<String> {
    let socket = tb.state_dir().join(format!("{}.sock", tb.host(host).name));
    let cli = vxnet_testbed::vxnet::find_binary("vxnet")?;
    let mut argv = vec![cli.display().to_string(), "dp".into()];
    argv.extend(args.iter().map(|s| (*s).to_string()));
    argv.extend(["--socket".into(), socket.display().to_string()]);
    Ok(process::run(None, &argv, Duration::from_secs(10))?
        .check()?
        .stdout)
}

/// [`dp`] with `--format json`, parsed.
pub fn dp_json(tb: &Testbed, host: usize, args: &[&str]) -> Result<serde_json::Value> {
    let mut a = args.to_vec();
    a.extend(["--format", "json"]);
    let out = dp(tb, host, &a)?;
    serde_json::from_str(&out).with_context(|| format!("`vxnet dp {}`: {out}", args.join(" ")))
}

pub fn vni_declared(tb: &Testbed, host: usize, vni: u64) -> Result<bool> {
    let v = dp_json(tb, host, &["network", "ls"])?;
    Ok(v.as_array()
        .is_some_and(|a| a.iter().any(|n| n["vni"].as_u64() == Some(vni))))
}

pub fn network_vni(c: &Control, name: &str) -> Result<u64> {
    let v = ok_json(c, &["network", "inspect", name])?;
    let n = if v.is_array() { &v[0] } else { &v };
    n["Options"]["com.docker.network.driver.overlay.vxlanid_list"]
        .as_str()
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no vni in {n}"))
}

/// The last few KB of a process's log (`control-host1`, `dataplane-host2`).
pub fn log_of(tb: &Testbed, name: &str) -> String {
    process::log_tail(&tb.log_path(name), 3000)
}

/// One request to a control daemon's socket, its `result` (for what the
/// CLI has no command for, such as the gossip driver's counters).
pub fn control_call(c: &Control, req: &serde_json::Value) -> Result<serde_json::Value> {
    use std::io::{BufRead, BufReader, Write};
    let mut s = std::os::unix::net::UnixStream::connect(&c.socket)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    writeln!(s, "{req}")?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line)?;
    let v: serde_json::Value = serde_json::from_str(&line)?;
    anyhow::ensure!(v["ok"] == true, "{req} refused: {line}");
    Ok(v["result"].clone())
}

/// Daemons on every host, formed into a swarm: host1 the manager, the
/// others workers.
pub struct Swarm {
    /// The control daemons, in host order.
    pub controls: Vec<Control>,
    /// The dataplanes, in host order.
    pub dataplanes: Vec<Dataplane>,
    /// The worker join token.
    pub token: String,
}

/// [`daemons`] on every host of `tb`, then `swarm init` on host1 and
/// `swarm join` on the others.
pub fn swarm(tb: &Testbed) -> Result<Swarm> {
    swarm_with(tb, &dp_opts())
}

/// [`swarm`] with dataplanes started with `opts`; over the IPv6 underlay
/// (management, gossip and data path) when they use it.
pub fn swarm_with(tb: &Testbed, opts: &DataplaneOptions) -> Result<Swarm> {
    let (controls, dataplanes): (Vec<_>, Vec<_>) = daemons_with(tb, opts)?.into_iter().unzip();
    let token = tb.form_swarm_with(&controls, opts.underlay_v6)?;
    Ok(Swarm {
        controls,
        dataplanes,
        token,
    })
}

/// `network create -d overlay --attachable OPTS... NAME` on `c`.
pub fn create_network(c: &Control, name: &str, opts: &[&str]) -> Result<String> {
    let mut args = vec!["network", "create", "-d", "overlay", "--attachable"];
    args.extend(opts);
    args.push(name);
    ok(c, &args)
}

/// `vxnet trace ARGS --format json` on `c`: the report, and the exit code
/// (1 means dropped).
pub fn trace_json(c: &Control, args: &[&str]) -> Result<(serde_json::Value, Option<i32>)> {
    let mut argv = vec!["trace"];
    argv.extend_from_slice(args);
    argv.extend(["--format", "json"]);
    let out = c.cli(&argv)?;
    let report = serde_json::from_str(&out.stdout)
        .with_context(|| format!("`vxnet {}`: {} {}", argv.join(" "), out.stdout, out.stderr))?;
    Ok((report, out.status.code()))
}
