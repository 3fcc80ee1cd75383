//! The vxnet dataplane process: owns the TAPs and UDP sockets, runs the
//! worker threads that drive the sans-IO engine of `vxnet-proto`, serves the
//! local API on a Unix socket and Prometheus metrics over HTTP.

pub mod api;
pub mod attach;
pub mod client;
pub mod control;
pub mod keyfile;
pub mod metrics;
pub mod server;
pub mod sys;
#[cfg(test)]
mod testutil;
pub mod worker;
