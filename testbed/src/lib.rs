//! vxnet-testbed: hosts and containers as network namespaces on one machine,
//! for the end-to-end tests, the demo and the benchmark.
//!
//! Layers, bottom up:
//! - [`process`]: run a command in a namespace with a timeout; background
//!   processes that die with us (process group + `PR_SET_PDEATHSIG`).
//! - [`topology`]: [`Testbed`] builds `vxtb<pid>-h<i>` host namespaces joined
//!   by a bridge in `vxtb<pid>-ul`, container namespaces, and tears all of it
//!   down on drop; [`topology::down`] cleans up after killed runs.
//! - [`kernel_vxlan`]: the Linux VXLAN driver + bridge, as interop peer and
//!   benchmark baseline.
//! - [`vxnet`]: start `vxnet-dataplane` in a host, drive it with `vxnet dp`.
//! - [`measure`]: ping and iperf3 with parsed results.
//! - [`scenario`]: the two-host setups shared by demo, bench and tests.
//! - [`inject`]: malformed VXLAN datagrams and forged ESP for robustness tests.
//! - [`capture`]: tshark captures on the underlay, decoded with exported SAs.
//! - [`bench`]: the side-by-side throughput/RTT table.
//! - [`swarm`]: `vxnet-control` per host and a swarm formed with the CLI.
//!
//! Every address used lives inside namespaces the testbed created
//! (192.0.2.0/24 and 2001:db8::/64 underlay, 10.x/fdxx overlays); nothing is
//! created in the root namespace.

pub mod bench;
pub mod capture;
pub mod cpu;
pub mod inject;
pub mod kernel_vxlan;
pub mod measure;
pub mod process;
pub mod scenario;
pub mod state;
pub mod swarm;
pub mod topology;
pub mod vxnet;

pub use kernel_vxlan::KernelVxlan;
pub use measure::{IperfResult, PingResult};
pub use topology::{Container, Host, Testbed, TestbedConfig};
pub use vxnet::{Dataplane, DataplaneOptions, EndpointSpec, SaInfo, Stats, VtepState};
