//! Seal/open throughput of each compiled-in AES-GCM backend through the
//! `Aead` trait, i.e. the exact call the ESP layer makes per packet.
//!
//! All backends: `cargo bench -p vxnet-benches --bench aead --features
//! rustcrypto,aws-lc`. Payload sizes: 1450 bytes (a full inner frame under a
//! 1500-byte underlay MTU) and 64 bytes (per-packet overhead dominates).
//! Nonces change per iteration as they do on the wire (sequence number).

use criterion::{BenchmarkId, Criterion, Throughput, black_box, criterion_group, criterion_main};
use vxnet_proto::crypto::aead::{Backend, new_aead};

fn nonce(seq: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[..4].copy_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
    n[4..].copy_from_slice(&seq.to_be_bytes());
    n
}

fn aead(c: &mut Criterion) {
    let aad = [0x11u8; 12];
    for &size in &[1450usize, 64] {
        let mut group = c.benchmark_group(format!("aes128gcm/{size}B"));
        group.throughput(Throughput::Bytes(size as u64));
        for &backend in Backend::compiled() {
            let Ok(a) = new_aead(backend, &[0x42u8; 16]) else {
                continue;
            };
            let mut buf = vec![0u8; size];
            let mut seq = 0u64;
            group.bench_function(BenchmarkId::new("seal", backend.name()), |b| {
                b.iter(|| {
                    seq += 1;
                    black_box(a.seal_in_place(&nonce(seq), &aad, black_box(&mut buf)))
                })
            });
            // Open needs a valid tag: seal once, then open a fresh copy each
            // iteration (the copy is part of the measured cost, ~1% at 1450 B,
            // and mirrors that a received packet is opened once).
            let mut sealed = vec![0x5au8; size];
            let tag = a.seal_in_place(&nonce(1), &aad, &mut sealed);
            let mut work = sealed.clone();
            group.bench_function(BenchmarkId::new("open", backend.name()), |b| {
                b.iter(|| {
                    work.copy_from_slice(&sealed);
                    let r = a.open_in_place(&nonce(1), &aad, black_box(&mut work), &tag);
                    assert!(r.is_ok());
                })
            });
        }
        group.finish();
    }
}

criterion_group!(benches, aead);
criterion_main!(benches);
