//! Making, joining and leaving a swarm: the manager starting over
//! (item 2), a worker leaving and coming back (items 4, 5 and 12's last
//! bullet), the addresses a host gives (item 6), and secrets kept out of
//! the logs (item 11).

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use vxnet_testbed::swarm::Control;

use super::common::swarm::{
    container, control_call, create_network, daemons, dp_json, log_of, ok, ok_json, run_sleeper,
    swarm,
};
use super::common::{dp_opts, root_or_skip, testbed};
use super::*;

/// Items 2 and 5 (shared hostnames): the manager leaves with `--force` and
/// at once makes a new swarm; a host joins with the new token at once (the
/// management port serves the new swarm's CA). Two hosts that call
/// themselves `twin` are two nodes, and `node inspect twin` is refused,
/// naming both, while each id still resolves.
#[test]
fn manager_reinit_and_shared_hostname() -> Result<()> {
    if !root_or_skip("manager_reinit_and_shared_hostname") {
        return Ok(());
    }
    let tb = testbed(3, 1500)?;
    let mut cs = Vec::new();
    for h in tb.hosts() {
        let dp = tb.start_dataplane(h, &dp_opts())?;
        let extra: &[&str] = if h.index == 1 {
            &[]
        } else {
            &["--hostname", "twin"]
        };
        cs.push(tb.start_control_with(h, &dp.socket, extra)?);
    }
    let (c1, c2, c3) = (&cs[0], &cs[1], &cs[2]);
    let old = tb.form_swarm(&[c1.clone(), c2.clone()])?;
    let ip1 = tb.host(1).underlay_v4.to_string();

    ok(c1, &["swarm", "leave", "--force"])?;
    ok(c1, &["swarm", "init", "--advertise-addr", &ip1])?;
    let token = worker_token(c1)?;
    assert_ne!(token, old);
    let t = Instant::now();
    let out = join(&tb, c3, &token).context("a join right after the new swarm_init")?;
    assert!(out.contains("joined a swarm as a worker"), "{out}");
    eprintln!(
        "item 2: join with the new swarm's token took {:?}",
        t.elapsed()
    );

    // host2 still thinks it is in the old swarm: it leaves (its manager is
    // gone, so only with --force) and joins the new one.
    refused(
        c2,
        &["swarm", "join", "--token", &token, &ip1],
        &["already"],
    )?;
    ok(c2, &["swarm", "leave", "--force"])?;
    join(&tb, c2, &token)?;

    let n = nodes(c1)?;
    assert_eq!(n.len(), 3, "{n:?}");
    let twins: Vec<&str> = n
        .iter()
        .filter(|(_, h, _)| h == "twin")
        .map(|(id, _, _)| id.as_str())
        .collect();
    assert_eq!(twins.len(), 2, "{n:?}");
    refused(c1, &["node", "inspect", "twin"], &twins)?;
    for id in &twins {
        let v = ok_json(c1, &["node", "inspect", id])?;
        assert_eq!(v[0]["ID"], *id, "{v}");
    }
    Ok(())
}

/// How soon the other hosts drop a leaving host's endpoints (gossip's
/// failure detection alone takes seconds).
const LEAVE_SEEN_WITHIN: Duration = Duration::from_millis(500);

/// Items 4, 5 and 12 (the last bullet), and from "Also expected": `swarm
/// join` creates `ingress` on the worker, `network ls -q` and `node ls
/// --filter role=... -q` print ids, and a worker's `network inspect` shows
/// the other host in `Peers`. Then `swarm leave` on the worker is refused
/// while its containers run, naming them, and changes nothing; `--force`
/// removes them and says so, and leaves in the worker's dataplane only
/// what was added there by hand. The manager shows the worker `Down`; it
/// joins again and is one node, `Ready`, whose containers work.
#[test]
fn worker_leave_refused_then_forced_cleans_up() -> Result<()> {
    if !root_or_skip("worker_leave_refused_then_forced_cleans_up") {
        return Ok(());
    }
    let tb = testbed(2, 1500)?;
    let s = swarm(&tb)?;
    let (c1, c2) = (&s.controls[0], &s.controls[1]);
    let token = &s.token;
    let ip1 = tb.host(1).underlay_v4.to_string();

    // ingress on the worker, and `network ls -q` lists the same ids as
    // the JSON listing, short as Docker prints them.
    let listed = ok_json(c2, &["network", "ls", "--format", "json"])?;
    let listed: Vec<&str> = listed
        .as_array()
        .context("network ls")?
        .iter()
        .filter_map(|n| n["id"].as_str()?.get(..12))
        .collect();
    assert!(
        ok(c2, &["network", "ls"])?.contains("ingress"),
        "no ingress on the worker"
    );
    let quiet = ok(c2, &["network", "ls", "-q"])?;
    assert_eq!(quiet.lines().collect::<Vec<_>>(), listed, "{quiet}");
    let id_of = |host: &str| -> Result<String> {
        let v = ok_json(c1, &["node", "inspect", host])?;
        Ok(v[0]["ID"].as_str().context("ID")?.to_owned())
    };
    let (id1, id2) = (id_of("host1")?, id_of("host2")?);
    let q = |role: &str| {
        ok(
            c1,
            &["node", "ls", "--filter", &format!("role={role}"), "-q"],
        )
    };
    assert_eq!(q("worker")?.trim(), id2);
    assert_eq!(q("manager")?.trim(), id1);

    create_network(c1, "lnet", &[])?;
    run_sleeper(c1, "l1", &["lnet"])?;
    for name in ["l2a", "l2b"] {
        run_sleeper(c2, name, &["lnet"])?;
    }
    let (_, l1_ip) = container(c1, "l1")?;
    let (l2a_ns, _) = container(c2, "l2a")?;
    let (l2b_ns, _) = container(c2, "l2b")?;
    tb.wait_reachable(&l2a_ns, &l1_ip, Duration::from_secs(15))?;
    let v = ok_json(c2, &["network", "inspect", "lnet"])?;
    let peers = v[0]["Peers"].as_array().cloned().unwrap_or_default();
    assert!(
        peers
            .iter()
            .any(|p| p["IP"] == ip1.as_str() && p["Name"] == "host1"),
        "host1 is not among the worker's Peers: {v}"
    );

    // What a user put into host2's dataplane by hand stays.
    let key1 = s.dataplanes[0].public_key()?;
    let hand = &s.dataplanes[1];
    hand.cli_ok(&["network", "add", "--vni", "7777"])?;
    hand.cli_ok(&[
        "peer",
        "add",
        "--vni",
        "7777",
        "--mac",
        "02:00:00:00:77:77",
        "--ip",
        "10.77.0.7",
        "--vtep",
        "192.0.2.99",
    ])?;
    hand.cli_ok(&["vtep", "add", "--vtep", "192.0.2.99", "--pubkey", &key1])?;

    refused(c2, &["swarm", "leave"], &["l2a", "l2b", "--force"])?;
    let running = ok(c2, &["container", "ls"])?;
    assert!(
        running.contains("l2a") && running.contains("l2b"),
        "{running}"
    );
    tb.ping_ok(&l2b_ns, &l1_ip, 1, None)
        .context("a refused leave changed something")?;

    let out = ok(c2, &["swarm", "leave", "--force"])?;
    assert!(
        out.contains("Removed containers") && out.contains("l2a") && out.contains("l2b"),
        "{out}"
    );
    assert!(!netns_exists(&l2a_ns) && !netns_exists(&l2b_ns));
    // The leave said so to the others: host1's dataplane forgets host2's
    // endpoints well before gossip would have noticed host2's silence.
    let vtep2 = tb.host(2).underlay_v4.to_string();
    let t = within(
        LEAVE_SEEN_WITHIN,
        "host2's endpoints gone from host1",
        || !fdb(&tb, 1).iter().any(|e| e["vtep"] == vtep2.as_str()),
    )
    .with_context(|| format!("{:?}", fdb(&tb, 1)))?;
    eprintln!("item 4: host1 dropped host2's endpoints {t:?} after its leave");
    let only_by_hand = |what: &[&str], key: &str, want: &str| -> Result<()> {
        let v = dp_json(&tb, 2, what)?;
        let entries = v.as_array().context("listing")?;
        ensure!(
            !entries.is_empty()
                && entries
                    .iter()
                    .all(|e| e[key].to_string().trim_matches('"') == want),
            "`vxnet dp {}` after the leave: {v}",
            what.join(" ")
        );
        Ok(())
    };
    only_by_hand(&["fdb"], "vni", "7777")?;
    only_by_hand(&["network", "ls"], "vni", "7777")?;
    only_by_hand(&["vtep", "ls"], "vtep", "192.0.2.99")?;
    let eps = dp_json(&tb, 2, &["endpoints"])?;
    assert_eq!(eps.as_array().map(Vec::len), Some(0), "{eps}");

    // Down on the manager as the leave returns, for having left, and
    // still so once gossip no longer holds it.
    let left = || -> Result<()> {
        let v = ok_json(c1, &["node", "inspect", &id2])?;
        ensure!(
            v[0]["Status"]["State"] == "down" && v[0]["Status"]["Message"] == "left the swarm",
            "host2 after its leave: {v}"
        );
        Ok(())
    };
    left()?;
    let gossip_members = || {
        control_call(c1, &serde_json::json!({"op": "gossip_status"}))
            .map(|s| s["members"].as_u64().unwrap_or(u64::MAX))
    };
    within(
        Duration::from_secs(5),
        "host2 out of the manager's gossip",
        || gossip_members().is_ok_and(|m| m == 0),
    )?;
    left()?;

    // Back with the same host: one node entry, Ready, and it works.
    join(&tb, c2, token)?;
    let n = nodes(c1)?;
    let host2: Vec<_> = n.iter().filter(|(_, h, _)| h == "host2").collect();
    assert_eq!(host2.len(), 1, "{n:?}");
    assert_eq!(host2[0].2, "ready", "{n:?}");
    run_sleeper(c2, "l2c", &["lnet"])?;
    let (l2c_ns, _) = container(c2, "l2c")?;
    tb.wait_reachable(&l2c_ns, &l1_ip, Duration::from_secs(15))
        .with_context(|| {
            format!(
                "fdb1 {:?}\nfdb2 {:?}\n{}",
                fdb(&tb, 1),
                fdb(&tb, 2),
                log_of(&tb, "control-host2")
            )
        })?;
    Ok(())
}

/// Every `*.log` file under `dir`: the daemons' logs and the containers'.
fn logs_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(logs_under(&p));
        } else if p.extension().is_some_and(|x| x == "log") {
            out.push(p);
        }
    }
    out
}

/// Items 6 and 11. `--advertise-addr` and `--data-path-addr` that are on
/// no interface of the host, or of the other family than the dataplane's
/// (IPv4) VTEP, are refused by `swarm init` and `swarm join`, and nothing
/// is recorded (no swarm on the host, no node on the manager). A join
/// with a wrong token secret is refused; afterwards no daemon's log, and
/// no container's, holds a token's secret or a host's private key.
#[test]
fn addresses_checked_and_no_secret_logged() -> Result<()> {
    if !root_or_skip("addresses_checked_and_no_secret_logged") {
        return Ok(());
    }
    let tb = testbed(2, 1500)?;
    let d = daemons(&tb)?;
    let (c1, c2) = (&d[0].0, &d[1].0);
    let ip1 = tb.host(1).underlay_v4.to_string();
    let remote = format!("{ip1}:2377");
    let bad_addrs = |h: usize| {
        let v6 = tb.host(h).underlay_v6.to_string();
        [
            (
                "--advertise-addr",
                "203.0.113.7".to_owned(),
                "not an address",
            ),
            ("--advertise-addr", v6.clone(), "IPv6"),
            (
                "--data-path-addr",
                "203.0.113.7".to_owned(),
                "not an address",
            ),
            ("--data-path-addr", v6, "IPv6"),
        ]
    };
    let outside = |c: &Control| -> Result<()> {
        refused(c, &["network", "ls"], &["not part of a swarm"])?;
        Ok(())
    };
    for (flag, addr, why) in bad_addrs(1) {
        refused(c1, &["swarm", "init", flag, &addr], &[flag, &addr, why])?;
        outside(c1)?;
    }
    ok(c1, &["swarm", "init", "--advertise-addr", &ip1])?;
    let token = worker_token(c1)?;
    let manager_token = ok(c1, &["swarm", "join-token", "-q", "manager"])?
        .trim()
        .to_owned();
    for (flag, addr, why) in bad_addrs(2) {
        refused(
            c2,
            &["swarm", "join", "--token", &token, flag, &addr, &remote],
            &[flag, &addr, why],
        )?;
        outside(c2)?;
        assert_eq!(nodes(c1)?.len(), 1, "the manager recorded a refused join");
    }

    // A token with the swarm's CA digest and a wrong secret.
    let (digest, _) = token.rsplit_once('-').context("token shape")?;
    let bad = format!("{digest}-0123456789abcdefghijklmno");
    refused(c2, &["swarm", "join", "--token", &bad, &remote], &["token"])?;
    outside(c2)?;
    join(&tb, c2, &token)?;

    let mut secrets: Vec<(String, String)> = [&bad, &token, &manager_token]
        .iter()
        .map(|t| {
            let s = t.rsplit_once('-').map_or("", |(_, s)| s).to_owned();
            (format!("the secret of {t}"), s)
        })
        .collect();
    for h in tb.hosts() {
        let key = std::fs::read_to_string(tb.state_dir().join(format!("{}.key", h.name)))?;
        secrets.push((format!("{}'s private key", h.name), key.trim().to_owned()));
    }
    let logs = logs_under(tb.state_dir());
    let refusal_logged = logs
        .iter()
        .any(|p| std::fs::read_to_string(p).is_ok_and(|s| s.contains("refused")));
    assert!(refusal_logged, "no log mentions the refusals: {logs:?}");
    for p in &logs {
        let text = std::fs::read_to_string(p)?;
        for (what, s) in &secrets {
            assert!(s.len() >= 16, "{what} is too short to look for: {s:?}");
            assert!(!text.contains(s.as_str()), "{} holds {what}", p.display());
        }
    }
    eprintln!(
        "item 11: {} secrets absent from {} log files",
        secrets.len(),
        logs.len()
    );
    Ok(())
}
