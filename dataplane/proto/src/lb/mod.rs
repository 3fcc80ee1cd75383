//! Service VIP load balancing, sans-IO: what the engine needs to spread
//! the connections to a virtual IP over its backends and keep each
//! connection on one backend.
//!
//! - [`service`]: a VIP and its backends (sorted by address), built with
//!   their Maglev table off the packet path and published in the `Fdb`.
//! - [`maglev`]: the Maglev lookup table and the flow hash. Every host
//!   builds the same table and hashes a flow the same way, so every host
//!   picks the same backend for a flow (the ingress mesh relies on it).
//! - [`conntrack`]: a bounded table of balanced flows, indexed by forward
//!   key (client → VIP) and reply key (backend → client), with TCP/UDP
//!   state, timeouts and eviction.
//! - [`nat`]: address (and port) rewriting of a frame in place with
//!   incremental checksum updates, partial (NEEDS_CSUM) checksums included.
//! - [`reply`]: what the dataplane answers itself: echo replies for a VIP,
//!   resets for a VIP without backends.
//! - [`hash`]: the seeded 64-bit hash both tables use.
//!
//! # The decision (in `engine/lb.rs`)
//! A frame from a TAP whose destination MAC is no endpoint and whose
//! destination IP is a VIP of its VNI is balanced: a conntrack hit reuses
//! the flow's backend; a miss picks one with Maglev and tracks the flow.
//! The destination IP becomes the backend's (ports unchanged, as Docker's
//! VIP mode) and the destination MAC the backend's; the frame then follows
//! the normal FDB path (local endpoint or remote VTEP, plain or ESP). A
//! frame about to be written to a local port is looked up by its reply key;
//! a hit gets the VIP back as source address and the VIP's MAC as source
//! MAC. The client's host holds all of a flow's state: the backend's host
//! sees an ordinary client → backend connection.
//!
//! Changing a service's backends never disturbs a flow to a backend that
//! stays: its conntrack entry keeps it there (and Maglev moves few flows
//! that have none). A flow to a backend that left is dropped on its next
//! packet and its entry removed (`lb`/`backend_gone`). The packet after
//! that is balanced afresh; a TCP segment then reaches a backend that
//! does not know the connection and answers with a reset, so the client
//! learns at once that the connection is gone (Docker's IPVS keeps sending
//! to a dead backend, moby#33790).
//!
//! # One worker
//! Conntrack is per worker and lock-free. A flow's forward packets always
//! come from the client's TAP, read by the one worker that owns it, but its
//! replies arrive on whichever worker's UDP socket the kernel's
//! SO_REUSEPORT hash chose (or from a local backend's TAP, owned by any
//! worker), which would not find the entry. Until replies are steered to the
//! client port's worker, the dataplane refuses to program services when it
//! runs more than one worker (`--workers 1`, the default).
//!
//! Sources: Eisenbud et al., "Maglev", NSDI 2016; Cilium `pkg/maglev`,
//! `bpf/lib/lb.h`, `bpf/lib/conntrack.h` (timeouts); Linux
//! `nf_conntrack_proto_tcp.c` (states, loose pick-up); RFC 1624.

pub mod conntrack;
pub mod hash;
pub mod maglev;
pub mod nat;
pub mod reply;
pub mod service;
