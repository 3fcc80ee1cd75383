//! Runs every fuzz target over its corpus: the seeds, the crash inputs saved
//! as `seed-regress-*` and the inputs a fuzzing run kept (`min-*`), so the
//! targets are exercised without libFuzzer.
use std::fs;
use std::path::Path;

fn run(target: &str, f: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    let mut n = 0;
    for entry in fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("dir entry").path();
        let data = fs::read(&path).expect("readable seed");
        f(&data);
        // Every prefix of a seed too: truncation is the commonest
        // malformation. (The fuzzer's `min-*` inputs run whole: there are
        // many, and the fuzzer truncated them already.)
        let seed = path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("seed-"));
        if seed {
            for cut in 0..data.len().min(200) {
                f(&data[..cut]);
            }
        }
        n += 1;
    }
    assert!(n > 0, "no seeds in {}", dir.display());
}

#[test]
fn vxlan() {
    run("vxlan", vxnet_fuzz::vxlan);
}

#[test]
fn vnet_tap_frame() {
    run("vnet_tap_frame", vxnet_fuzz::vnet_tap_frame);
}

#[test]
fn arp_nd() {
    run("arp_nd", vxnet_fuzz::arp_nd);
}

#[test]
fn too_big() {
    run("too_big", vxnet_fuzz::too_big);
}

#[test]
fn tap_frame_accounted() {
    run("tap_frame_accounted", vxnet_fuzz::tap_frame_accounted);
}

#[test]
fn coalesce() {
    run("coalesce", |d| {
        vxnet_fuzz::coalesce(d);
    });
    // The seeds reach the merge path: five segments and an ARP frame in
    // between give one merged item per seed.
    for seed in ["seed-tcp4-5segs", "seed-tcp6-5segs"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("corpus/coalesce")
            .join(seed);
        let data = fs::read(path).expect("seed");
        assert_eq!(vxnet_fuzz::coalesce(&data), 1, "{seed}");
    }
}

#[test]
fn api_request() {
    run("api_request", vxnet_fuzz::api_request);
}

#[test]
fn wire_rx() {
    run("wire_rx", vxnet_fuzz::wire_rx);
}

#[test]
fn lb_nat() {
    run("lb_nat", vxnet_fuzz::lb_nat);
}

#[test]
fn dns_query() {
    run("dns_query", |d| {
        vxnet_fuzz::dns_query(d);
    });
    // The seeds reach every path: answered, refused, forwarded, dropped,
    // and an upstream reply accepted.
    let seed = |name: &str| {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("corpus/dns_query")
            .join(name);
        vxnet_fuzz::dns_query(&fs::read(path).expect("seed"))
    };
    for name in ["seed-a-web-edns-cookie", "seed-ptr-v6", "seed-mx-db"] {
        assert!(seed(name).answered, "{name}");
    }
    for name in ["seed-notify", "seed-qdcount2", "seed-a-web-edns-version1"] {
        assert!(seed(name).refused, "{name}");
    }
    assert!(seed("seed-a-example-com-noedns").forwarded);
    assert!(seed("seed-upstream-reply-example-com").dropped);
    for name in [
        "seed-upstream-reply-example-com",
        "seed-upstream-nxdomain-example-com",
    ] {
        assert!(seed(name).accepted_upstream, "{name}");
    }
}

#[test]
fn gossip_rx() {
    use vxnet_fuzz::gossip::GossipMode;
    run("gossip_rx", |d| {
        vxnet_fuzz::gossip_rx(d);
    });
    // The seeds get past the seal and are accepted: datagrams as they
    // arrived (`raw`), the same plaintexts sealed by the target (`plain`),
    // snapshots and endpoint records.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/gossip_rx");
    for entry in fs::read_dir(&dir).expect("corpus dir") {
        let path = entry.expect("dir entry").path();
        let name = path
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        // `seed-regress-*` are crashes the fuzzer found: the run above
        // checks them; they need not be accepted.
        if !name.starts_with("seed-") || name.starts_with("seed-regress-") {
            continue;
        }
        let r = vxnet_fuzz::gossip_rx(&fs::read(&path).expect("seed"));
        // A record is parsed on its own, with no seal to open.
        let record = name.starts_with("seed-record");
        assert!((r.opened || record) && r.accepted, "{name}: {r:?}");
        if record || name.contains("broadcast") || name.contains("snapshot") {
            assert!(r.records >= 1, "{name} carries a record: {r:?}");
        }
    }
    // A datagram sealed under another key changes nothing.
    let r = vxnet_fuzz::gossip_rx(&GossipMode::Raw.input(&[0u8; 64]));
    assert!(!r.opened, "{r:?}");
}

#[test]
fn mgmt_frame() {
    run("mgmt_frame", |d| {
        vxnet_fuzz::mgmt_frame(d);
    });
    let seed = |name: &str| {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("corpus/mgmt_frame")
            .join(name);
        vxnet_fuzz::mgmt_frame(&fs::read(path).expect("seed"))
    };
    let join = seed("seed-join");
    assert_eq!(join.joins, 1, "{join:?}");
    assert!(join.token_ok, "the join's token parses: {join:?}");
    for name in [
        "seed-node-assignments",
        "seed-node-container-create",
        "seed-node-container-desire",
    ] {
        let r = seed(name);
        assert!(r.node_calls >= 1, "{name}: {r:?}");
    }
    // A length over MAX_FRAME is refused after its four bytes.
    let r = vxnet_fuzz::mgmt_frame(&[0xff, 0xff, 0xff, 0xff, b'{']);
    assert!(r.too_large && r.requests == 0, "{r:?}");
}

#[test]
fn mesh() {
    run("mesh", vxnet_fuzz::mesh);
}

#[test]
fn trace_dry_run() {
    run("trace_dry_run", vxnet_fuzz::trace_dry_run);
}

#[test]
fn kx_rotation() {
    run("kx_rotation", |d| {
        vxnet_fuzz::kx_rotation(d);
    });
    // The seeds reach restarts, replays and rotations.
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/kx_rotation/seed-restart-replay-all");
    let reached = vxnet_fuzz::kx_rotation(&fs::read(path).expect("seed"));
    assert!(
        reached.restarts >= 2 && reached.replays > 10 && reached.rotations >= 4,
        "{reached:?}"
    );
    assert!(reached.opened > 0, "{reached:?}");
}
