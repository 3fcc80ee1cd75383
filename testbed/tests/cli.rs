//! The `vxnet-testbed` binary: the benchmark produces rows (with a Gbit/s
//! per round) for the paths that need no dataplane, and SIGTERM in the
//! middle of a run tears it all down.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::root_or_skip;
use vxnet_testbed::process::{self, kill_pid, wait_until};
use vxnet_testbed::topology::{NAME_PREFIX, list_netns, prefix_of};

const BIN: &str = env!("CARGO_BIN_EXE_vxnet-testbed");

#[test]
fn bench_json_has_measured_rows() -> anyhow::Result<()> {
    if !root_or_skip("bench_json_has_measured_rows") {
        return Ok(());
    }
    let out = process::run(
        None,
        &[
            BIN,
            "bench",
            "--rounds",
            "2",
            "--seconds",
            "1",
            "--pings",
            "5",
            "--paths",
            "underlay,kernel-vxlan",
            "--format",
            "json",
        ],
        Duration::from_secs(120),
    )?
    .check()?;
    let v: serde_json::Value = serde_json::from_str(&out.stdout)?;
    assert!(v["machine"]["nproc"].as_u64().unwrap_or(0) >= 1, "{v}");
    assert_eq!(v["rounds"], 2, "{v}");
    let rows = v["rows"].as_array().cloned().unwrap_or_default();
    assert_eq!(rows.len(), 2, "{v}");
    for (row, path) in rows.iter().zip(["underlay", "kernel-vxlan"]) {
        assert_eq!(row["path"], path);
        assert!(row["error"].is_null(), "{row}");
        assert!(
            row["tcp"]["received_bytes"].as_u64().unwrap_or(0) > 0,
            "{row}"
        );
        let rounds = row["rounds_gbit"].as_array().cloned().unwrap_or_default();
        assert_eq!(rounds.len(), 2, "{row}");
        assert!(
            rounds.iter().all(|g| g.as_f64().unwrap_or(0.0) > 0.0),
            "{row}"
        );
        assert!(row["rtt_avg_ms"].as_f64().unwrap_or(0.0) > 0.0, "{row}");
        assert_eq!(row["ping"]["received"], 5, "{row}");
        // Moving bytes costs CPU, and no more than all of it.
        assert!(row["cpu_s_per_gb"].as_f64().unwrap_or(0.0) > 0.0, "{row}");
        let (busy, total) = (
            row["cpu"]["busy_s"].as_f64().unwrap_or(0.0),
            row["cpu"]["total_s"].as_f64().unwrap_or(0.0),
        );
        assert!(busy > 0.0 && busy <= total, "{row}");
    }
    Ok(())
}

/// Kills the child if the test fails before it exits.
struct KillOnDrop(std::process::Child);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn sigterm_during_bench_tears_down() -> anyhow::Result<()> {
    if !root_or_skip("sigterm_during_bench_tears_down") {
        return Ok(());
    }
    let child = Command::new(BIN)
        .args(["bench", "--seconds", "60", "--paths", "underlay"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let pid = child.id();
    let mut child = KillOnDrop(child);
    let prefix = format!("{NAME_PREFIX}{pid}");
    let ours = || -> Vec<String> {
        list_netns()
            .unwrap_or_default()
            .into_iter()
            .filter(|n| prefix_of(n) == Some(prefix.as_str()))
            .collect()
    };
    // Wait until iperf3 runs inside the testbed (the busiest moment).
    let busy = wait_until(Duration::from_secs(60), || {
        ours().len() == 3
            && process::run(
                None,
                &["ip", "netns", "pids", &format!("{prefix}-h1")],
                Duration::from_secs(5),
            )
            .is_ok_and(|o| !o.stdout.trim().is_empty())
    });
    assert!(
        busy,
        "bench never started its traffic; namespaces: {:?}",
        ours()
    );
    kill_pid(pid, libc::SIGTERM);
    let exited = wait_until(Duration::from_secs(30), || {
        child.0.try_wait().ok().flatten().is_some()
    });
    assert!(exited, "bench did not exit after SIGTERM");
    assert_eq!(
        ours(),
        Vec::<String>::new(),
        "namespaces left after SIGTERM"
    );
    Ok(())
}

/// `up --hosts 3` forms a swarm by default: `exec host1 -- vxnet node ls`
/// lists three Ready nodes; `down` removes it all.
#[test]
fn up_forms_a_swarm_by_default() -> anyhow::Result<()> {
    if !root_or_skip("up_forms_a_swarm_by_default") {
        return Ok(());
    }
    // `up` leaves its hosts behind on purpose: remove them however the
    // test ends.
    struct Down;
    impl Drop for Down {
        fn drop(&mut self) {
            let _ = process::run(None, &[BIN, "down"], Duration::from_secs(60));
        }
    }
    let t = Duration::from_secs(120);
    let _down = Down;
    let up = process::run(None, &[BIN, "up", "--hosts", "3"], t)?;
    if up.stderr.contains("already up") {
        eprintln!("skipping up_forms_a_swarm_by_default: another testbed is up");
        return Ok(());
    }
    up.check()?;
    let ls = process::run(
        None,
        &[BIN, "exec", "host1", "--", "vxnet", "node", "ls"],
        t,
    )?
    .check()?;
    assert_eq!(ls.stdout.matches("Ready").count(), 3, "{}", ls.stdout);
    assert!(ls.stdout.contains("Leader"), "{}", ls.stdout);
    process::run(None, &[BIN, "down"], t)?.check()?;
    let left = process::run(None, &[BIN, "exec", "host1", "--", "true"], t)?;
    assert!(!left.success(), "host1 still there after down");
    Ok(())
}

/// The vxnet-swarm and vxnet-vip rows, one after the other in the same
/// round (each swarm starts afresh): the control plane places a container
/// on each host and programs both dataplanes, then a one-task service whose
/// VIP the client's dataplane balances; traffic flows on both, and the VIP
/// ratio is reported.
#[test]
fn bench_swarm_and_vip_rows_are_measured() -> anyhow::Result<()> {
    if !root_or_skip("bench_swarm_and_vip_rows_are_measured") {
        return Ok(());
    }
    rows_are_measured(["vxnet-swarm", "vxnet-vip"], "vip_ratio")
}

/// The vxnet-mesh and vxnet-mesh-direct rows: a client outside the swarm
/// reaches a one-task service's published port through host1 (no task,
/// over the ingress network) and through host2 (the task's node); traffic
/// flows on both and the mesh ratio is reported.
#[test]
fn bench_mesh_rows_are_measured() -> anyhow::Result<()> {
    if !root_or_skip("bench_mesh_rows_are_measured") {
        return Ok(());
    }
    rows_are_measured(["vxnet-mesh", "vxnet-mesh-direct"], "mesh_ratio")
}

/// Runs one bench round of the two `paths`: each row carries traffic and
/// answers every ping, and `ratio` (their ratio) is reported.
fn rows_are_measured(paths: [&str; 2], ratio: &str) -> anyhow::Result<()> {
    let out = process::run(
        None,
        &[
            BIN,
            "bench",
            "--rounds",
            "1",
            "--seconds",
            "1",
            "--pings",
            "5",
            "--paths",
            paths[0],
            "--paths",
            paths[1],
            "--format",
            "json",
        ],
        Duration::from_secs(300),
    )?
    .check()?;
    let v: serde_json::Value = serde_json::from_str(&out.stdout)?;
    for (i, path) in paths.into_iter().enumerate() {
        let row = &v["rows"][i];
        assert_eq!(row["path"], path, "{v}");
        assert!(row["error"].is_null(), "{row}");
        assert!(
            row["tcp"]["received_bytes"].as_u64().unwrap_or(0) > 0,
            "{row}"
        );
        assert_eq!(row["ping"]["received"], 5, "{row}");
    }
    assert!(v[ratio].as_f64().is_some_and(|r| r > 0.0), "{v}");
    Ok(())
}
