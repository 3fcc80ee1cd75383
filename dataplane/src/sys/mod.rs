//! Linux I/O: TAP devices with vnet headers, UDP sockets with batched
//! GSO/GRO, network namespaces, netlink, epoll. All `unsafe` of the dataplane lives
//! here, each block with a `// SAFETY:` line.

pub mod netlink;
pub mod netns;
pub mod poll;
pub mod signal;
pub mod tap;
pub mod udp;
