//! The vxnet dataplane process: owns the TAPs and UDP sockets, runs the
//! worker threads that drive the sans-IO engine of `vxnet-proto`, serves the
//! local API on a Unix socket and Prometheus metrics over HTTP.

pub mod attach;
pub mod control;
pub mod firewall;
pub mod keyfile;
pub mod metrics;
pub mod observe;
pub mod sys;
pub mod trace_stage;
pub mod worker;
