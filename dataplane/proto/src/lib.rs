//! Sans-IO core of the vxnet dataplane.
//!
//! Everything in this crate takes bytes (and, where time matters, an explicit
//! `now`) in and returns decisions out. It owns no socket, no TAP and reads no
//! clock, so it is unit-testable and fuzzable; the `vxnet-dataplane` crate owns
//! the I/O and drives it.
//!
//! Layers, bottom up:
//! - [`wire`]: one module per wire format (VXLAN, virtio-net header, ARP,
//!   IPv6 neighbour discovery, ICMP "too big", Internet checksum).
//! - [`mtu`]: the path MTU rule (endpoint MTU from the underlay's) and the
//!   largest frame the underlay carries.
//! - [`offload`]: segmentation of TAP GSO frames into wire-sized frames and
//!   coalescing of received TCP segments back into GSO frames.
//! - [`batch`]: the batch buffers the engine fills and the I/O layer drains
//!   (one `sendmmsg`/`recvmmsg` per batch).
//! - [`fdb`]: per-VNI forwarding tables (MAC -> local endpoint or remote VTEP,
//!   IP -> MAC for the ARP/ND proxy, flood VTEPs, the VTEPs flooded frames
//!   are replicated to).
//! - [`replication`]: per-VNI flooding policy, rate limit and counters.
//! - [`lb`]: service VIP load balancing (Maglev, conntrack, NAT).
//! - [`engine`]: the forwarding decisions, `from_tap` and `from_wire`.
//! - [`stats`]: per-thread counters and drop reasons.
#![forbid(unsafe_code)]

pub mod batch;
pub mod crypto;
pub mod engine;
pub mod fdb;
pub mod lb;
pub mod mtu;
pub mod offload;
pub mod replication;
pub mod stats;
pub mod wire;
