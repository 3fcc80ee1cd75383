//! Unit tests of the request handling in `control.rs` that need no root:
//! attaches fail at the kernel step (their namespace does not exist), which
//! is enough to see what is held, refused and left behind around it.
use super::*;
use crossbeam_channel::bounded;
use std::thread;

/// Long enough for a loaded machine; an answer that needs the attach to
/// finish never comes (the attach waits for the test).
const DEADLINE: Duration = Duration::from_secs(20);

fn dataplane() -> Arc<Dataplane> {
    let cfg = Config::loopback_for_tests();
    Arc::new(Dataplane::start(cfg).expect("start a dataplane on loopback"))
}

fn attach(netns: &str, ip: &str, mac: &str) -> Request {
    Request::Attach(Attach {
        target: AttachTarget::Netns(netns.into()),
        vni: Vni::new(4096).unwrap(),
        ips: vec![ip.parse().unwrap()],
        mac: Some(mac.parse().unwrap()),
        mtu: None,
        gateways: vec![],
        ifname: None,
        owner: Owner::User,
    })
}

fn error(r: &Response) -> &str {
    assert!(!r.ok, "expected a refusal, got {r:?}");
    r.error.as_ref().map_or("", |e| e.message.as_str())
}

#[test]
fn requests_are_answered_while_an_attach_configures_the_kernel() {
    let dp = dataplane();
    let (reached_tx, reached_rx) = bounded(1);
    let (go_tx, go_rx) = bounded(1);
    *dp.stall.lock().unwrap() = Some((reached_tx, go_rx));
    let stalled = {
        let dp = Arc::clone(&dp);
        thread::spawn(move || {
            dp.handle(attach("vxt-no-such-ns", "10.0.0.2/24", "02:00:00:00:00:02"))
        })
    };
    reached_rx
        .recv_timeout(DEADLINE)
        .expect("the attach reached its kernel step");

    // The attach sits between its reservation and its commit. Everything
    // that takes the dataplane's lock must still be answered.
    let (tx, rx) = bounded(1);
    {
        let dp = Arc::clone(&dp);
        thread::spawn(move || {
            let answers = [
                dp.handle(Request::Stats(dp::Stats {})),
                dp.handle(Request::Fdb(dp::Fdb { vni: None })),
                dp.handle(Request::Endpoints(dp::Endpoints {})),
                dp.handle(Request::Networks(dp::Networks {})),
                // Same MAC, other address: the claim refuses it at once.
                dp.handle(attach("vxt-other", "10.0.0.3/24", "02:00:00:00:00:02")),
                // Other MAC, same address.
                dp.handle(attach("vxt-other", "10.0.0.2/24", "02:00:00:00:00:03")),
                // Same namespace and interface.
                dp.handle(attach("vxt-no-such-ns", "10.0.0.4/24", "02:00:00:00:00:04")),
            ];
            let _ = tx.send(answers);
        });
    }
    let answers = rx
        .recv_timeout(DEADLINE)
        .expect("requests answered while an attach configures the kernel");
    assert!(answers[0].ok && answers[1].ok && answers[2].ok && answers[3].ok);
    let mac = error(&answers[4]);
    assert!(
        mac.contains("MAC 02:00:00:00:00:02") && mac.contains("being attached"),
        "{mac}"
    );
    let ip = error(&answers[5]);
    assert!(
        ip.contains("IP 10.0.0.2") && ip.contains("being attached"),
        "{ip}"
    );
    let dev = error(&answers[6]);
    assert!(
        dev.contains("eth0") && dev.contains("being attached"),
        "{dev}"
    );
    // While reserved, the endpoint is not listed and not in the table.
    assert_eq!(answers[2].result, Some(serde_json::json!([])));

    go_tx.send(()).unwrap();
    let failed = stalled.join().unwrap();
    assert!(error(&failed).contains("vxt-no-such-ns"), "{failed:?}");

    // The failed attach left nothing: the same MAC and address are free
    // again (the next attach fails on its namespace, not on a claim).
    let again = dp.handle(attach("vxt-no-such-ns", "10.0.0.2/24", "02:00:00:00:00:02"));
    let e = error(&again);
    assert!(
        !e.contains("being attached") && e.contains("does not exist"),
        "{e}"
    );
    let st = dp.lock();
    assert!(st.claims.is_empty() && st.endpoints.is_empty() && st.draining.is_empty());
    assert!(st.fdb.vnis().next().is_none());
    drop(st);
    dp.shutdown();
}

#[test]
fn ports_held_by_claims_or_draining_are_not_handed_out() {
    let mut st = State::default();
    assert_eq!(free_port(&st), 0);
    st.draining.push(0);
    assert_eq!(free_port(&st), 1);
    let plan = attach::Plan::validate(
        &Attach {
            target: AttachTarget::Netns("c1".into()),
            vni: Vni::new(7).unwrap(),
            ips: vec!["10.0.0.2/24".parse().unwrap()],
            mac: None,
            mtu: None,
            gateways: vec![],
            ifname: None,
            owner: Owner::User,
        },
        1450,
        22,
    )
    .unwrap();
    st.claims.push(Claim {
        id: 1,
        plan,
        target: AttachTarget::Netns("c1".into()),
        port: 1,
        new_bridge: false,
        encrypted: false,
        path_mtu: 1450,
        owner: Owner::User,
    });
    assert_eq!(free_port(&st), 2);
    st.draining.clear();
    assert_eq!(free_port(&st), 0);
}

/// A peer's VTEP must be another host's underlay address: loopback is
/// refused unless the dataplane itself is on loopback (several dataplanes
/// on one host, as in these tests); broadcast, multicast, unspecified, the
/// own address and the other family are refused everywhere.
#[test]
fn peer_vteps_that_cannot_be_another_host_are_refused() {
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    let refusal = |local: &str, vtep: &str| match remote_vtep(ip(local), ip(vtep)) {
        Ok(()) => None,
        Err(e) => {
            assert_eq!(e.code, vxnet_api::ErrorCode::InvalidArgument, "{vtep}");
            Some(e.message)
        }
    };
    let loopback = refusal("10.0.0.1", "127.0.0.1").expect("refused");
    assert!(loopback.contains("loopback"), "{loopback}");
    assert!(refusal("fd00::1", "::1").unwrap().contains("loopback"));
    for bad in ["255.255.255.255", "224.0.0.1", "0.0.0.0", "10.0.0.1"] {
        assert!(refusal("10.0.0.1", bad).is_some(), "{bad}");
    }
    assert!(refusal("10.0.0.1", "fd00::2").unwrap().contains("IPv6"));
    assert_eq!(refusal("10.0.0.1", "10.0.0.2"), None);
    assert_eq!(refusal("127.0.0.1", "127.0.0.2"), None);
    // Through the API: the refused peer leaves no FDB entry.
    let dp = dataplane();
    let r = dp.handle(Request::PeerAdd(PeerAdd {
        vni: Vni::new(4096).unwrap(),
        mac: "02:42:0a:00:00:09".parse().unwrap(),
        ips: vec![ip("10.0.0.9")],
        vtep: ip("255.255.255.255"),
        owner: Owner::User,
    }));
    assert!(error(&r).contains("not a unicast host address"), "{r:?}");
    assert!(dp.lock().fdb.vni(Vni::new(4096).unwrap()).is_none());
}
