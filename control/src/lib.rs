//! vxnet-control library: the per-host control plane's sans-IO building
//! blocks. The daemon (`main.rs`) owns sockets and clocks and drives them.
pub mod gossip;
