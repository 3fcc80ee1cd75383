//! epoll and an eventfd waker. CONTRACT STUB: to be implemented.
use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

pub struct Poller {
    _private: (),
}

impl Poller {
    pub fn new() -> io::Result<Poller> {
        todo!()
    }
    /// Watches `fd` for readability, level-triggered, reporting `token`.
    pub fn add(&self, fd: RawFd, token: u64) -> io::Result<()> {
        let _ = (fd, token);
        todo!()
    }
    pub fn remove(&self, fd: RawFd) -> io::Result<()> {
        let _ = fd;
        todo!()
    }
    /// Waits up to `timeout` (None: forever); pushes ready tokens into `out`.
    pub fn wait(&self, out: &mut Vec<u64>, timeout: Option<Duration>) -> io::Result<()> {
        let _ = (out, timeout);
        todo!()
    }
}

/// An eventfd another thread writes to wake a worker out of `Poller::wait`.
pub struct Waker {
    _private: (),
}

impl Waker {
    pub fn new() -> io::Result<Waker> {
        todo!()
    }
    pub fn wake(&self) {
        todo!()
    }
    /// Clears pending wake-ups.
    pub fn drain(&self) {
        todo!()
    }
    pub fn fd(&self) -> RawFd {
        todo!()
    }
}
