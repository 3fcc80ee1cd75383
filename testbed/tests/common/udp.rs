//! UDP broadcast and multicast between containers: sockets opened inside
//! the containers' namespaces from the test process, each datagram marked
//! so that only the test's own are counted.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::time::{Duration, Instant};

use anyhow::Context;
use socket2::{Domain, Protocol, Socket, Type};
use vxnet_dataplane::sys::netns;

/// A socket in a container, bound to a port of the wildcard address.
pub struct Listener {
    sock: Socket,
}

/// The interface index of `ifname` in namespace `ns`.
pub fn ifindex(ns: &str, ifname: &str) -> anyhow::Result<u32> {
    let path = netns::resolve(ns)?;
    let name = std::ffi::CString::new(ifname)?;
    // SAFETY: a NUL-terminated name; the call only reads it.
    let i = netns::run_in(&path, move || unsafe {
        libc::if_nametoindex(name.as_ptr())
    })?;
    anyhow::ensure!(i != 0, "no interface {ifname} in {ns}");
    Ok(i)
}

fn in_ns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    let path = netns::resolve(ns)?;
    Ok(netns::run_in(&path, f)??)
}

impl Listener {
    /// Listens on UDP `port` of every IPv4 address (`v6`: IPv6) of `ns`,
    /// joined to IPv4 multicast `groups` on the interface holding `local`.
    pub fn open(
        ns: &str,
        port: u16,
        v6: bool,
        groups: &[Ipv4Addr],
        local: Option<Ipv4Addr>,
    ) -> anyhow::Result<Listener> {
        let groups = groups.to_vec();
        let sock = in_ns(ns, move || {
            let (domain, any) = if v6 {
                (Domain::IPV6, IpAddr::V6(Ipv6Addr::UNSPECIFIED))
            } else {
                (Domain::IPV4, IpAddr::V4(Ipv4Addr::UNSPECIFIED))
            };
            let s = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
            if v6 {
                s.set_only_v6(true)?;
            }
            s.set_reuse_address(true)?;
            s.bind(&SocketAddr::new(any, port).into())?;
            for g in &groups {
                s.join_multicast_v4(g, &local.unwrap_or(Ipv4Addr::UNSPECIFIED))?;
            }
            s.set_read_timeout(Some(Duration::from_millis(100)))?;
            Ok(s)
        })?;
        Ok(Listener { sock })
    }

    /// Datagrams carrying `mark` received until `want` came or `wait`
    /// passed since the last one (or since the start).
    pub fn count(&self, mark: &[u8], want: usize, wait: Duration) -> usize {
        let mut n = 0;
        let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 2048];
        let mut last = Instant::now();
        while n < want && last.elapsed() < wait {
            if let Ok(len) = self.sock.recv(&mut buf) {
                // SAFETY: recv initialised the first `len` bytes.
                let got: Vec<u8> = buf[..len]
                    .iter()
                    .map(|b| unsafe { b.assume_init() })
                    .collect();
                if got.starts_with(mark) {
                    n += 1;
                    last = Instant::now();
                }
            }
        }
        n
    }
}

/// Sends `count` datagrams carrying `mark` from namespace `ns` to `to`, out
/// of interface `ifname` (broadcast allowed; multicast with TTL 1 through
/// that interface); `to` may be the IPv6 all-nodes address.
pub fn send(
    ns: &str,
    ifname: &str,
    to: SocketAddr,
    mark: &[u8],
    count: usize,
) -> anyhow::Result<()> {
    let index = ifindex(ns, ifname)?;
    let dev = ifname.as_bytes().to_vec();
    let mark = mark.to_vec();
    in_ns(ns, move || {
        let domain = if to.is_ipv6() {
            Domain::IPV6
        } else {
            Domain::IPV4
        };
        let s = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
        // Out of the container's interface whatever its routes (a limited
        // broadcast has none).
        s.bind_device(Some(&dev))?;
        let to = match to {
            SocketAddr::V4(a) => {
                s.set_broadcast(true)?;
                s.set_multicast_ttl_v4(1)?;
                SocketAddr::V4(a)
            }
            SocketAddr::V6(a) => {
                s.set_multicast_if_v6(index)?;
                SocketAddr::V6(SocketAddrV6::new(*a.ip(), a.port(), 0, index))
            }
        };
        for _ in 0..count {
            s.send_to(&mark, &to.into())?;
            // Spaced out: flooding has a rate; a burst of a few is fine.
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    })
    .with_context(|| format!("sending to {to} from {ns}"))
}
