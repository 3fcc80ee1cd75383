//! A poor man's fuzzer for stable: deterministic random mutations of the
//! seeds (byte flips, overwrites, truncation, insertion) through every target
//! body. Bounded in count, so it runs in seconds.
use std::fs;
use std::path::Path;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(rng: &mut Rng, seed: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(seed);
    for _ in 0..1 + rng.below(4) {
        match rng.below(5) {
            0 if !out.is_empty() => {
                let i = rng.below(out.len());
                out[i] ^= 1 << rng.below(8);
            }
            1 if !out.is_empty() => {
                let i = rng.below(out.len());
                out[i] = [0, 0xff, 0x7f, 0x80, 1][rng.below(5)];
            }
            2 => {
                let n = rng.below(out.len() + 1);
                out.truncate(n);
            }
            3 => {
                let i = rng.below(out.len() + 1);
                out.insert(i, rng.next() as u8);
            }
            _ if out.len() > 60 => {
                // Header region: where parsers make their decisions.
                let i = rng.below(60);
                out[i] = rng.next() as u8;
            }
            _ => {}
        }
    }
}

fn run(target: &str, iterations: usize, f: impl Fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    let seeds: Vec<Vec<u8>> = fs::read_dir(&dir)
        .expect("corpus dir")
        .map(|e| fs::read(e.expect("entry").path()).expect("seed"))
        .collect();
    assert!(!seeds.is_empty());
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ target.len() as u64);
    let mut buf = Vec::new();
    for i in 0..iterations {
        mutate(&mut rng, &seeds[i % seeds.len()], &mut buf);
        f(&buf);
    }
}

#[test]
fn vxlan() {
    run("vxlan", 20_000, vxnet_fuzz::vxlan);
}

#[test]
fn vnet_tap_frame() {
    run("vnet_tap_frame", 3_000, vxnet_fuzz::vnet_tap_frame);
}

#[test]
fn arp_nd() {
    run("arp_nd", 20_000, vxnet_fuzz::arp_nd);
}

#[test]
fn too_big() {
    run("too_big", 20_000, vxnet_fuzz::too_big);
}

#[test]
fn tap_frame_accounted() {
    run(
        "tap_frame_accounted",
        5_000,
        vxnet_fuzz::tap_frame_accounted,
    );
}

#[test]
fn coalesce() {
    run("coalesce", 2_000, |d| {
        vxnet_fuzz::coalesce(d);
    });
}

#[test]
fn api_request() {
    run("api_request", 20_000, vxnet_fuzz::api_request);
}

#[test]
fn wire_rx() {
    run("wire_rx", 20_000, vxnet_fuzz::wire_rx);
}

#[test]
fn trace_dry_run() {
    run("trace_dry_run", 5_000, vxnet_fuzz::trace_dry_run);
}

#[test]
fn lb_nat() {
    run("lb_nat", 5_000, vxnet_fuzz::lb_nat);
}

#[test]
fn dns_query() {
    run("dns_query", 20_000, |d| {
        vxnet_fuzz::dns_query(d);
    });
}

#[test]
fn gossip_rx() {
    run("gossip_rx", 5_000, |d| {
        vxnet_fuzz::gossip_rx(d);
    });
}

#[test]
fn mgmt_frame() {
    run("mgmt_frame", 5_000, |d| {
        vxnet_fuzz::mgmt_frame(d);
    });
}

#[test]
fn mesh() {
    run("mesh", 5_000, vxnet_fuzz::mesh);
}

#[test]
fn kx_rotation() {
    run("kx_rotation", 800, |d| {
        vxnet_fuzz::kx_rotation(d);
    });
}
