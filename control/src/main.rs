//! vxnet-control: the per-host control plane process (swarm membership,
//! networks, IPAM, containers). Not built yet: the dataplane is programmed
//! statically with `vxnet dp ...` until it is.
use clap::Parser;

/// vxnet control plane (not implemented yet; see issue 4).
#[derive(Parser)]
#[command(version, about)]
struct Args {}

fn main() -> std::process::ExitCode {
    let _ = Args::parse();
    eprintln!("vxnet-control is not implemented yet; program the dataplane with `vxnet dp ...`");
    std::process::ExitCode::from(2)
}
