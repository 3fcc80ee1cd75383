//! The VXLAN UDP sockets: batched receive/send with GRO/GSO.
//! CONTRACT STUB: to be implemented.
use std::io;
use std::net::SocketAddr;
use vxnet_proto::batch::{RxBatch, TxBatch};
use vxnet_proto::stats::Stats;

pub struct UdpIo {
    _private: (),
}

impl UdpIo {
    /// Binds the receive socket to `local` (SO_REUSEPORT, so each worker may
    /// bind its own) and `src_ports` send sockets on ephemeral ports of the
    /// same address; enables UDP_GRO where the kernel has it.
    pub fn bind(local: SocketAddr, src_ports: usize) -> io::Result<UdpIo> {
        let _ = (local, src_ports);
        todo!()
    }
    pub fn rx_fd(&self) -> std::os::fd::RawFd {
        todo!()
    }
    /// One recvmmsg into `rx`; sets `rx.filled`; `WouldBlock` when empty.
    pub fn recv_batch(&mut self, rx: &mut RxBatch) -> io::Result<usize> {
        let _ = rx;
        todo!()
    }
    /// Sends every message of `tx` (sendmmsg per source socket, UDP_SEGMENT
    /// where `segment != 0`), falling back to plain sends where the kernel
    /// refuses GSO, and counts what it did in `stats`.
    pub fn send_batch(&mut self, tx: &TxBatch, stats: &Stats) {
        let _ = (tx, stats);
        todo!()
    }
    pub fn gso_enabled(&self) -> bool {
        todo!()
    }
    pub fn gro_enabled(&self) -> bool {
        todo!()
    }
    pub fn local_addr(&self) -> SocketAddr {
        todo!()
    }
}
