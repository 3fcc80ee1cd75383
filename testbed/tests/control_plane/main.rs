//! The control plane as a user meets it (issue 8, "What goes wrong today"
//! items 1-7 and 9-13, and "Also expected"): real `vxnet-dataplane` and
//! `vxnet-control` daemons on testbed hosts, driven with the `vxnet` CLI.
//! Each test says which items it covers and fails if one of them breaks.
//! Item 8 (static-mode encryption up within 1 s) is
//! `vxnet_encrypted_late_key.rs`.
//!
//! - [`data_path`]: a dataplane restart (1), the dataplane API (7), a new
//!   container reachable at once (9);
//! - [`membership`]: init, join and leave (2, 4, 5, 6, 11, 12's last
//!   bullet);
//! - [`containers`]: removal across hosts, addresses that move, options
//!   and the container life cycle (3, 10, 12, 13).
//!
//! Needs root (skipped otherwise) and the workspace's binaries (`cargo
//! build -p vxnet-dataplane -p vxnet-cli -p vxnet-control`). Every test has
//! its own testbed (its own namespace prefix), so they run in parallel; the
//! testbed removes daemons, hosts and containers' namespaces on drop, also
//! on failure.

#[path = "../common/mod.rs"]
mod common;

mod containers;
mod data_path;
mod membership;

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use common::swarm::{dp_json, ok, ok_json};
use serde_json::Value;
use vxnet_testbed::Testbed;
use vxnet_testbed::process;
use vxnet_testbed::swarm::{Control, vxnet_ctl};

/// What a container has on one network, from `container inspect`.
#[derive(Debug, Clone)]
struct Ep {
    netns: String,
    ipv4: String,
    ipv6: Option<String>,
    mac: String,
}

/// Container `name`'s endpoint on `network`.
fn endpoint(c: &Control, name: &str, network: &str) -> Result<Ep> {
    let v = ok_json(c, &["container", "inspect", name])?;
    let a = v[0]["networks"]
        .as_array()
        .and_then(|a| a.iter().find(|a| a["network"] == network))
        .with_context(|| format!("{name} is not on {network}: {v}"))?;
    let s = |x: &Value| x.as_str().map(str::to_owned);
    Ok(Ep {
        netns: s(&v[0]["netns"]).context("netns")?,
        ipv4: s(&a["ipv4"]).context("ipv4")?,
        ipv6: s(&a["ipv6"]),
        mac: s(&a["mac"]).context("mac")?,
    })
}

/// The FDB entries of a host's dataplane.
fn fdb(tb: &Testbed, host: usize) -> Vec<Value> {
    dp_json(tb, host, &["fdb"])
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
}

/// Whether a host's FDB has a remote entry for `mac` behind `vtep` that
/// holds every address of `ips`.
fn has_remote(tb: &Testbed, host: usize, mac: &str, vtep: &str, ips: &[&str]) -> bool {
    fdb(tb, host).iter().any(|e| {
        e["kind"] == "remote"
            && e["mac"] == mac
            && e["vtep"] == vtep
            && ips.iter().all(|ip| {
                e["ips"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|x| x == ip))
            })
    })
}

/// The endpoints of a host's dataplane, as text (to look for a MAC or a
/// namespace).
fn endpoints(tb: &Testbed, host: usize) -> String {
    dp_json(tb, host, &["endpoints"])
        .map(|v| v.to_string())
        .unwrap_or_default()
}

/// Runs `vxnet ARGS` and checks that it was refused with each of `words`
/// in its message; returns the message.
fn refused(c: &Control, args: &[&str], words: &[&str]) -> Result<String> {
    let o = vxnet_ctl(&c.socket, args)?;
    ensure!(
        !o.success(),
        "`vxnet {}` was accepted: {}",
        args.join(" "),
        o.stdout
    );
    for w in words {
        ensure!(
            o.stderr.contains(w),
            "`vxnet {}`: refusal does not mention {w:?}: {}",
            args.join(" "),
            o.stderr
        );
    }
    Ok(o.stderr)
}

/// Whether namespace `ns` exists under /run/netns.
fn netns_exists(ns: &str) -> bool {
    Path::new("/run/netns").join(ns).exists()
}

/// Polls `cond` for up to `limit`; how long it took, or an error saying
/// what `what` was.
fn within(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) -> Result<Duration> {
    let t = Instant::now();
    if process::wait_until(limit, &mut cond) {
        Ok(t.elapsed())
    } else {
        bail!("{what}: not within {limit:?}")
    }
}

/// `swarm join` of `c` through host1 with `token`, advertising its host's
/// address.
fn join(tb: &Testbed, c: &Control, token: &str) -> Result<String> {
    let addr = tb.host(c.host).underlay_v4.to_string();
    let remote = format!("{}:2377", tb.host(1).underlay_v4);
    ok(
        c,
        &[
            "swarm",
            "join",
            "--token",
            token,
            "--advertise-addr",
            &addr,
            &remote,
        ],
    )
}

/// The worker join token of the manager `c`.
fn worker_token(c: &Control) -> Result<String> {
    Ok(ok(c, &["swarm", "join-token", "-q", "worker"])?
        .trim()
        .to_owned())
}

/// `node ls --format json` on a manager: (id, hostname, status).
fn nodes(c: &Control) -> Result<Vec<(String, String, String)>> {
    let v = ok_json(c, &["node", "ls", "--format", "json"])?;
    Ok(v.as_array()
        .context("node ls")?
        .iter()
        .map(|n| {
            let s = |x: &Value| x.as_str().unwrap_or_default().to_owned();
            (
                s(&n["node"]["id"]),
                s(&n["node"]["hostname"]),
                s(&n["node"]["status"]),
            )
        })
        .collect())
}

/// `container run -d --name NAME --network NET --ip IP -- sleep 600`.
fn run_at(c: &Control, name: &str, network: &str, ip: &str) -> Result<String> {
    ok(
        c,
        &[
            "container",
            "run",
            "-d",
            "--name",
            name,
            "--network",
            network,
            "--ip",
            ip,
            "--",
            "sleep",
            "600",
        ],
    )
}

/// How soon a new container must answer from every other host.
const REACHABLE_WITHIN: Duration = Duration::from_millis(300);

/// Makes a container's kernel send ARP for an unresolved address every
/// 20 ms (not every 1 s), for a while: a ping started before the address
/// is known then measures when the dataplane can answer, not the
/// kernel's retry timer.
fn fast_arp(tb: &Testbed, ns: &str) -> Result<()> {
    for (k, v) in [("retrans_time_ms", "20"), ("mcast_solicit", "50")] {
        let key = format!("net.ipv4.neigh.eth0.{k}={v}");
        tb.exec_ok(ns, &["sysctl", "-qw", &key])?;
    }
    Ok(())
}
