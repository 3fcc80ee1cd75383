//! Encrypted overlay end to end (issue 3): ping and TCP between containers
//! on two hosts over ESP; a tshark capture decoded with the exported SAs;
//! forged packets dropped and counted by reason; forced key rotations under
//! steady UDP and TCP load.

mod common;

use std::time::Duration;

use common::{MIN_IPERF_BYTES, dp_opts, root_or_skip, testbed};
use vxnet_testbed::scenario::ENCRYPTED_VNI;
use vxnet_testbed::{DataplaneOptions, Stats};

/// Dataplane options for the encrypted tests: keys may be exported.
fn enc_opts() -> DataplaneOptions {
    DataplaneOptions {
        allow_key_export: true,
        ..dp_opts()
    }
}

fn counter(s: &Stats, name: &str) -> u64 {
    s.counter(name).unwrap_or(0)
}

/// (a) ping both ways v4/v6, an MTU-sized DF ping, TCP both ways; the
/// traffic was encrypted and decrypted by the dataplanes.
#[test]
fn encrypted_ping_and_tcp() -> anyhow::Result<()> {
    if !root_or_skip("encrypted_ping_and_tcp") {
        return Ok(());
    }
    let tb = testbed(2, 1500)?;
    let p = tb.vxnet_encrypted_pair(ENCRYPTED_VNI, &enc_opts(), ("c1", "c2"))?;
    let (a, b) = (&p.c1.ns, &p.c2.ns);
    let (a4, b4) = (
        p.ep1.v4().unwrap_or_default(),
        p.ep2.v4().unwrap_or_default(),
    );
    let (a6, b6) = (
        p.ep1.v6().unwrap_or_default(),
        p.ep2.v6().unwrap_or_default(),
    );
    tb.ping_ok(a, b4, 3, None)?;
    tb.ping_ok(b, a4, 3, None)?;
    tb.ping_ok(a, b6, 3, None)?;
    tb.ping_ok(b, a6, 3, None)?;
    let link = tb.exec_ok(a, &["ip", "-o", "link", "show", "eth0"])?;
    assert!(link.stdout.contains("mtu 1408"), "{}", link.stdout);
    // 1380 + 8 (ICMP) + 20 (IPv4) = 1408, DF set: a full-size frame fits.
    tb.ping_ok(a, b4, 3, Some(1380))?;
    tb.ping_ok(b, a4, 3, Some(1380))?;
    let t = tb.iperf(b, b4, a, 3, false)?;
    assert!(t.received_bytes > MIN_IPERF_BYTES, "c1->c2 {t:?}");
    let t = tb.iperf(a, a4, b, 3, false)?;
    assert!(t.received_bytes > MIN_IPERF_BYTES, "c2->c1 {t:?}");
    for dp in [&p.dp1, &p.dp2] {
        let s = dp.stats()?;
        assert!(counter(&s, "encrypted") > 1000, "host{}: {s:?}", dp.host);
        assert!(counter(&s, "decrypted") > 1000, "host{}: {s:?}", dp.host);
        for r in ["auth_failed", "replay", "unknown_spi", "plain_on_encrypted"] {
            assert_eq!(s.drop_count("wire", r), Some(0), "host{} {r}: {s:?}", dp.host);
        }
    }
    Ok(())
}

/// (b) tshark on host2's underlay during a ping, decoded with the SAs that
/// host1 exports: the inner ICMP echo between the containers shows.
#[test]
fn tshark_decodes_with_exported_sa() -> anyhow::Result<()> {
    if !root_or_skip("tshark_decodes_with_exported_sa") {
        return Ok(());
    }
    let tb = testbed(2, 1500)?;
    let p = tb.vxnet_encrypted_pair(ENCRYPTED_VNI, &enc_opts(), ("c1", "c2"))?;
    let (a4, b4) = (
        p.ep1.v4().unwrap_or_default(),
        p.ep2.v4().unwrap_or_default(),
    );
    tb.ping_ok(&p.c1.ns, b4, 1, None)?;
    let pcap = tb.state_dir().join("esp.pcap");
    // Both directions: requests from host1 and replies from host2.
    let filter = format!(
        "udp dst port 4789 and udp[8:4] != 0 and (host {} or host {})",
        tb.host(1).underlay_v4,
        tb.host(2).underlay_v4
    );
    let mut cap = tb.capture(&tb.host(2).ns, "eth0", &filter, 6, &pcap)?;
    // Ping until tshark has its packets (bounded: 20 rounds).
    for _ in 0..20 {
        tb.ping_ok(&p.c1.ns, b4, 2, None)?;
        if cap.finished() {
            break;
        }
    }
    cap.wait(Duration::from_secs(10))?;
    let mut sas = p.dp1.sas(true)?;
    assert!(
        sas.iter().all(|s| s.key.is_some() && s.salt.is_some()),
        "keys not exported: {sas:?}"
    );
    sas.retain(|s| s.vni == ENCRYPTED_VNI);
    let text = tb.decode_esp(&pcap, &sas)?;
    eprintln!("{text}");
    let requests = text
        .lines()
        .filter(|l| l.contains(&format!("{a4} → {b4}")) && l.contains("Echo (ping) request"))
        .count();
    let replies = text
        .lines()
        .filter(|l| l.contains(&format!("{b4} → {a4}")) && l.contains("Echo (ping) reply"))
        .count();
    assert!(requests >= 1 && replies >= 1, "decoded:\n{text}");
    Ok(())
}
