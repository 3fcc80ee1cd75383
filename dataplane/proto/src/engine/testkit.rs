//! Two in-memory hosts, A (192.0.2.1, endpoint 02:42:0a:00:00:02) and B
//! (192.0.2.2, endpoint 02:42:0a:00:00:03), on encrypted VNI 4096, with
//! deterministic keys: the fixture of the engine's encryption tests and of
//! the fuzz target for the encrypted receive path. Not for production use
//! (seeded RNGs), hence behind the `testkit` feature.
#![allow(clippy::missing_panics_doc)]

use super::{Engine, EngineConfig, Outputs};
use crate::batch::TxBatch;
use crate::crypto::keys::StaticKeypair;
use crate::crypto::session::{Session, SessionConfig};
use crate::fdb::Fdb;
use crate::stats::Stats;
use crate::wire::{MacAddr, Vni};
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::SeedableRng;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Instant;

pub const A: MacAddr = MacAddr([2, 0x42, 10, 0, 0, 2]);
pub const B: MacAddr = MacAddr([2, 0x42, 10, 0, 0, 3]);

pub fn vni() -> Vni {
    Vni::new(4096).expect("valid VNI")
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("testkit address")
}

pub const HOST_A: &str = "192.0.2.1";
pub const HOST_B: &str = "192.0.2.2";

pub struct Host {
    pub engine: Engine,
    pub out: Outputs,
    pub addr: IpAddr,
}

/// Host A has endpoint A, host B endpoint B, on encrypted VNI 4096.
pub fn encrypted_pair(now: Instant) -> (Host, Host) {
    let mut rng = ChaCha20Rng::seed_from_u64(7);
    let ka = StaticKeypair::generate(&mut rng);
    let kb = StaticKeypair::generate(&mut rng);
    let host = |me: &StaticKeypair,
                peer: &StaticKeypair,
                addr: &str,
                other: &str,
                mine: MacAddr,
                theirs: MacAddr| {
        let session = Session::new(
            SessionConfig::default(),
            me,
            peer.public(),
            &[4096],
            now,
            1_700_000_000_000_000_000,
            Box::new(ChaCha20Rng::seed_from_u64(u64::from(mine.0[5]))),
        )
        .expect("testkit setup");
        let mut fdb = Fdb::default();
        fdb.set_encrypted(vni(), true);
        fdb.add_local(0, vni(), mine, &[]).expect("testkit setup");
        fdb.add_remote(vni(), theirs, &[], ip(other))
            .expect("testkit setup");
        fdb.set_peer(ip(other), Arc::new(Mutex::new(session)));
        let mut engine = Engine::new(
            EngineConfig::default(),
            Arc::new(fdb),
            Arc::new(Stats::default()),
        );
        engine.set_now(now);
        Host {
            engine,
            out: Outputs::new(TxBatch::new(1 << 20, 256)),
            addr: ip(addr),
        }
    };
    (
        host(&ka, &kb, HOST_A, HOST_B, A, B),
        host(&kb, &ka, HOST_B, HOST_A, B, A),
    )
}

/// Moves every queued UDP message of `from` to `to`, datagram by datagram.
pub fn deliver(from: &mut Host, to: &mut Host) -> usize {
    let msgs = from.out.udp.msgs().to_vec();
    let mut n = 0;
    for m in &msgs {
        let mut bytes = from.out.udp.bytes(m).to_vec();
        let step = if m.segment == 0 {
            bytes.len()
        } else {
            m.segment as usize
        };
        for d in bytes.chunks_mut(step) {
            to.engine
                .from_wire(SocketAddr::new(from.addr, 4789), d, &mut to.out);
            n += 1;
        }
    }
    from.out.udp.clear();
    n
}

pub fn handshake(a: &mut Host, b: &mut Host) {
    for _ in 0..10 {
        a.engine.handle_timers(&mut a.out);
        b.engine.handle_timers(&mut b.out);
        let moved = deliver(a, b) + deliver(b, a);
        if moved == 0 {
            break;
        }
    }
    for h in [&*a, &*b] {
        let peer = if h.addr == ip(HOST_A) {
            ip(HOST_B)
        } else {
            ip(HOST_A)
        };
        let s = h
            .engine
            .fdb
            .peer(peer)
            .expect("testkit setup")
            .lock()
            .expect("testkit setup");
        assert!(
            s.is_established(),
            "{} did not finish the handshake",
            h.addr
        );
    }
}

/// Starts a key rotation on `host` with the host at `peer`.
pub fn rekey(host: &Host, peer: IpAddr, now: Instant) {
    if let Some(s) = host.engine.fdb.peer(peer) {
        s.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .rekey(now);
    }
}

/// A deterministic static keypair (fuzz targets driving sessions directly).
pub fn keypair(seed: u64) -> StaticKeypair {
    StaticKeypair::generate(&mut ChaCha20Rng::seed_from_u64(seed))
}

/// A deterministic RNG for [`Session::new`].
pub fn seeded_rng(seed: u64) -> Box<dyn rand_core::CryptoRngCore + Send> {
    Box::new(ChaCha20Rng::seed_from_u64(seed))
}
