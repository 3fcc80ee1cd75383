//! Encrypted overlay with hosts configured at different times (issue 8,
//! item 8): one host is told the other's key (`vxnet dp vtep add`) and
//! sends its first key-exchange message to a host that does not know it
//! yet, which drops it; a ping between the containers must get through
//! within 1 s of the second host's `vtep add`, in either order.

mod common;

use std::time::{Duration, Instant};
use vxnet_testbed::vxnet::StatsExt;

use common::{dp_opts, root_or_skip, testbed};
use vxnet_testbed::scenario::ENCRYPTED_VNI;
use vxnet_testbed::{Container, Dataplane, EndpointSpec, Testbed};

/// The encrypted path must be up this soon after the second `vtep add`.
const UP_WITHIN: Duration = Duration::from_secs(1);

/// One host of the pair: its dataplane, VTEP address and public key, and
/// its container's namespace and IPv4 address.
struct Side<'a> {
    name: String,
    dp: &'a Dataplane,
    vtep: String,
    key: String,
    container: &'a str,
    ip: &'a str,
}

impl<'a> Side<'a> {
    fn new(
        tb: &Testbed,
        host: usize,
        dp: &'a Dataplane,
        c: &'a Container,
        ep: &'a EndpointSpec,
    ) -> anyhow::Result<Side<'a>> {
        Ok(Side {
            name: format!("host{host}"),
            dp,
            vtep: tb.host(host).underlay_v4.to_string(),
            key: dp.public_key()?,
            container: &c.ns,
            ip: ep.v4().unwrap_or_default(),
        })
    }
}

fn bad_control(dp: &Dataplane) -> anyhow::Result<u64> {
    Ok(dp.stats()?.drop_count("wire", "bad_control").unwrap_or(0))
}

/// `first` gets `second`'s key and sends its first key-exchange message,
/// which `second` drops (it does not know `first`); `first`'s container
/// pings `second`'s and nothing gets through. Then `second` gets `first`'s
/// key; returns how long after that a ping got through.
fn configure_late(tb: &Testbed, first: &Side, second: &Side) -> anyhow::Result<Duration> {
    let dropped_before = bad_control(second.dp)?;
    first.dp.vtep_add(&second.vtep, &second.key)?;
    let ping = tb.exec(
        first.container,
        &["ping", "-n", "-c", "1", "-W", "1", second.ip],
    )?;
    anyhow::ensure!(
        !ping.success(),
        "a ping got through before {} knew {}'s key: {}",
        second.name,
        first.name,
        ping.combined()
    );
    // The first key-exchange message reached `second` and was dropped there.
    let mut dropped = dropped_before;
    let arrived = vxnet_testbed::process::wait_until(Duration::from_secs(5), || {
        dropped = bad_control(second.dp).unwrap_or(dropped);
        dropped > dropped_before
    });
    anyhow::ensure!(
        arrived,
        "{} counted no dropped control message from {}",
        second.name,
        first.name
    );
    let v = first.dp.vtep(&second.vtep)?;
    anyhow::ensure!(
        v.as_ref().is_some_and(|v| !v.established),
        "{} established with {} before it was configured: {v:?}",
        first.name,
        second.name
    );

    let start = Instant::now();
    second.dp.vtep_add(&first.vtep, &first.key)?;
    // One echo request every 10 ms until the first reply. The deadline
    // goes well past UP_WITHIN so that a slow path is measured, not only
    // found slow.
    let ping = tb.exec_timeout(
        first.container,
        &["ping", "-n", "-i", "0.01", "-c", "1", "-w", "8", second.ip],
        Duration::from_secs(15),
    )?;
    let took = start.elapsed();
    anyhow::ensure!(
        ping.success(),
        "no ping through 8 s after {} got {}'s key: {}",
        second.name,
        first.name,
        ping.combined()
    );
    Ok(took)
}

/// Both orders run on the same two dataplanes (the keys of both orders
/// are the same), so one of them has the host with the larger key, which
/// wins handshake collisions, configured first.
#[test]
fn encrypted_path_up_within_1s_of_second_vtep_add() -> anyhow::Result<()> {
    if !root_or_skip("encrypted_path_up_within_1s_of_second_vtep_add") {
        return Ok(());
    }
    let tb = testbed(2, 1500)?;
    let p = tb.vxnet_encrypted_pair_without_keys(ENCRYPTED_VNI, &dp_opts(), ("c1", "c2"))?;
    let h1 = Side::new(&tb, 1, &p.dp1, &p.c1, &p.ep1)?;
    let h2 = Side::new(&tb, 2, &p.dp2, &p.c2, &p.ep2)?;
    let mut results = Vec::new();
    for (first, second) in [(&h1, &h2), (&h2, &h1)] {
        let took = configure_late(&tb, first, second)?;
        eprintln!(
            "{} then {}: ping through {took:?} after the second vtep add",
            first.name, second.name
        );
        results.push((&first.name, &second.name, took));
        // Both forget each other for the next order.
        h1.dp.vtep_del(&h2.vtep)?;
        h2.dp.vtep_del(&h1.vtep)?;
    }
    for (first, second, took) in results {
        assert!(
            took <= UP_WITHIN,
            "{first} then {second}: ping through only {took:?} after the second vtep add"
        );
    }
    Ok(())
}
