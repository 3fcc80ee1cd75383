//! The testbed itself, without vxnet: underlay, kernel VXLAN between two
//! hosts, teardown (also on panic), `down`, and the `up`/`exec`/`down` CLI.

mod common;

use std::time::Duration;

use common::{MIN_IPERF_BYTES, leftover, root_or_skip, testbed};
use vxnet_testbed::process::{self, pid_alive};
use vxnet_testbed::scenario::{DEMO_VNI, VXLAN_PORT};
use vxnet_testbed::topology::{self, destroy_netns, list_netns};

#[test]
fn underlay_ping_v4_v6() -> anyhow::Result<()> {
    if !root_or_skip("underlay_ping_v4_v6") {
        return Ok(());
    }
    let tb = testbed(3, 1500)?;
    let (h1, h3) = (tb.host(1), tb.host(3));
    tb.ping_ok(&h1.ns, &h3.underlay_v4.to_string(), 3, None)?;
    tb.ping_ok(&h3.ns, &h1.underlay_v6.to_string(), 3, None)?;
    // Full-size frames with DF cross the 1500-byte underlay, bigger ones do not.
    tb.ping_ok(&h1.ns, &h3.underlay_v4.to_string(), 2, Some(1472))?;
    let too_big = tb.ping(
        &h1.ns,
        &h3.underlay_v4.to_string(),
        1,
        Duration::from_millis(100),
        Some(1473),
        true,
    )?;
    assert_eq!(too_big.received, 0, "1501-byte packet crossed a 1500 MTU");
    // Nothing of ours is in the root namespace: the underlay veths live in
    // the underlay netns, and no link named like them exists here.
    let root_links = process::run(None, &["ip", "-o", "link"], Duration::from_secs(10))?.check()?;
    assert!(
        !root_links.stdout.contains(tb.prefix()),
        "root netns has links of ours: {}",
        root_links.stdout
    );
    let ul_links = tb.exec_ok(
        tb.underlay_ns(),
        &["ip", "-o", "link", "show", "master", "br0"],
    )?;
    assert_eq!(ul_links.stdout.lines().count(), 3, "{}", ul_links.stdout);
    Ok(())
}

#[test]
fn kernel_vxlan_to_kernel_vxlan() -> anyhow::Result<()> {
    if !root_or_skip("kernel_vxlan_to_kernel_vxlan") {
        return Ok(());
    }
    let tb = testbed(2, 1500)?;
    let pair = tb.kernel_pair(DEMO_VNI, VXLAN_PORT, ("k1", "k2"))?;
    let (a, b) = (&pair.c1.ns, &pair.c2.ns);
    let (a4, b4) = (
        pair.ep1.v4().unwrap_or_default(),
        pair.ep2.v4().unwrap_or_default(),
    );
    let (a6, b6) = (
        pair.ep1.v6().unwrap_or_default(),
        pair.ep2.v6().unwrap_or_default(),
    );
    tb.ping_ok(a, b4, 3, None)?;
    tb.ping_ok(b, a4, 3, None)?;
    tb.ping_ok(a, b6, 3, None)?;
    tb.ping_ok(b, a6, 3, None)?;
    // 1422 + 8 ICMP + 20 IP = 1450: exactly the overlay MTU, DF set.
    tb.ping_ok(a, b4, 2, Some(1422))?;
    let t = tb.iperf(b, b4, a, 2, false)?;
    assert!(t.received_bytes > MIN_IPERF_BYTES, "{t:?}");
    // The container's eth0 has the overlay MTU.
    let link = tb.exec_ok(a, &["ip", "-o", "link", "show", "eth0"])?;
    assert!(link.stdout.contains("mtu 1450"), "{}", link.stdout);
    Ok(())
}

#[test]
fn kernel_vxlan_jumbo_underlay() -> anyhow::Result<()> {
    if !root_or_skip("kernel_vxlan_jumbo_underlay") {
        return Ok(());
    }
    let tb = testbed(2, 9000)?;
    let pair = tb.kernel_pair(DEMO_VNI, VXLAN_PORT, ("k1", "k2"))?;
    let b4 = pair.ep2.v4().unwrap_or_default();
    assert_eq!(pair.ep1.mtu, 8950);
    tb.ping_ok(&pair.c1.ns, b4, 2, Some(8922))?;
    Ok(())
}

#[test]
fn teardown_leaves_nothing_behind() -> anyhow::Result<()> {
    if !root_or_skip("teardown_leaves_nothing_behind") {
        return Ok(());
    }
    let tb = testbed(2, 1500)?;
    let c = tb.add_container(tb.host(2), "c1")?;
    let pid = tb.spawn(&tb.host(1).ns, "sleeper", &["sleep", "600"])?;
    let in_container = tb.spawn(&c.ns, "sleeper2", &["sleep", "600"])?;
    let names = tb.namespaces();
    assert_eq!(names.len(), 4, "{names:?}");
    assert_eq!(leftover(&names).len(), 4);
    let state_dir = tb.state_dir().to_path_buf();
    assert!(state_dir.exists());
    drop(tb);
    assert_eq!(leftover(&names), Vec::<String>::new());
    assert!(!pid_alive(pid), "process {pid} survived teardown");
    assert!(
        !pid_alive(in_container),
        "process {in_container} survived teardown"
    );
    assert!(!state_dir.exists());
    Ok(())
}

#[test]
fn teardown_on_panic() {
    if !root_or_skip("teardown_on_panic") {
        return;
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let r = std::panic::catch_unwind(move || {
        let tb = testbed(2, 1500).expect("testbed");
        tx.send(tb.namespaces()).expect("send");
        panic!("deliberate");
    });
    assert!(r.is_err());
    let names = rx.recv().expect("names");
    assert_eq!(names.len(), 3);
    assert_eq!(leftover(&names), Vec::<String>::new());
}

#[test]
fn down_removes_stale_runs_only() -> anyhow::Result<()> {
    if !root_or_skip("down_removes_stale_runs_only") {
        return Ok(());
    }
    let _lock = DOWN_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    // A pid that existed and is gone: a finished child of ours.
    let mut child = std::process::Command::new("true").spawn()?;
    let dead = child.id();
    child.wait()?;
    assert!(!pid_alive(dead));
    let stale = format!("{}{dead}-h1", topology::NAME_PREFIX);
    process::run(
        None,
        &["ip", "netns", "add", &stale],
        Duration::from_secs(10),
    )?
    .check()?;
    let guard = NetnsGuard(stale.clone());
    let live = testbed(1, 1500)?;
    let report = topology::down(false, None)?;
    let now = list_netns()?;
    assert!(!now.contains(&stale), "stale {stale} not removed");
    assert!(report.namespaces.contains(&stale));
    for n in live.namespaces() {
        assert!(now.contains(&n), "down removed live {n}");
    }
    drop(guard);
    Ok(())
}

/// `down` removes whatever a dead process left, including a testbed left by
/// `up`: the two tests that use it must not overlap.
static DOWN_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

struct NetnsGuard(String);
impl Drop for NetnsGuard {
    fn drop(&mut self) {
        let _ = destroy_netns(&self.0);
    }
}

/// `vxnet-testbed up --no-dataplane`, `exec`, `down` through the binary.
#[test]
fn cli_up_exec_down() -> anyhow::Result<()> {
    if !root_or_skip("cli_up_exec_down") {
        return Ok(());
    }
    let _lock = DOWN_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let bin = env!("CARGO_BIN_EXE_vxnet-testbed");
    let t = Duration::from_secs(60);
    struct Down(&'static str);
    impl Drop for Down {
        fn drop(&mut self) {
            let _ = process::run(None, &[self.0, "down"], Duration::from_secs(60));
        }
    }
    // Another testbed left up on this machine (by hand) would make `up`
    // refuse; that is its documented behaviour, so skip rather than remove it.
    if vxnet_testbed::state::UpState::load()?.is_some() {
        eprintln!("SKIPPED cli_up_exec_down: a testbed is already up on this machine");
        return Ok(());
    }
    let _down = Down(bin);
    let up = process::run(None, &[bin, "up", "--hosts", "2", "--no-dataplane"], t)?.check()?;
    assert!(up.stdout.contains("host2"), "{}", up.stdout);
    let again = process::run(None, &[bin, "up", "--hosts", "2", "--no-dataplane"], t)?;
    assert!(
        !again.success() && again.stderr.contains("already up"),
        "{again:?}"
    );
    let st = vxnet_testbed::state::UpState::load()?.expect("state file");
    let names: Vec<String> = st.hosts.iter().map(|h| h.host.ns.clone()).collect();
    assert_eq!(leftover(&names).len(), 2);
    let ex = process::run(
        None,
        &[
            bin, "exec", "host1", "--", "ip", "-o", "addr", "show", "eth0",
        ],
        t,
    )?
    .check()?;
    assert!(ex.stdout.contains("192.0.2.11/24"), "{}", ex.stdout);
    let ping = process::run(
        None,
        &[
            bin,
            "exec",
            "1",
            "--",
            "ping",
            "-c",
            "1",
            "-W",
            "5",
            "192.0.2.12",
        ],
        t,
    )?;
    assert!(ping.success(), "{ping:?}");
    let code = process::run(None, &[bin, "exec", "host1", "--", "sh", "-c", "exit 7"], t)?;
    assert_eq!(code.status.code(), Some(7));
    process::run(None, &[bin, "down"], t)?.check()?;
    assert_eq!(leftover(&names), Vec::<String>::new());
    assert!(vxnet_testbed::state::UpState::load()?.is_none());
    Ok(())
}
