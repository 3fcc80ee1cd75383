//! epoll and an eventfd waker.
//!
//! A worker busy-polls its TAPs and UDP socket while there is traffic and
//! sleeps in [`Poller::wait`] when there is none. Readiness is
//! level-triggered on purpose: a worker that stops reading half-way through
//! a queue (its batch was full) is woken again at once, so no edge can be
//! lost. Another thread (the API, shutdown) gets a sleeping worker's
//! attention through its [`Waker`].
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// How many ready events one `epoll_wait` returns at most; a worker has a
/// handful of fds, so more would only be reported on the next call.
const MAX_EVENTS: usize = 64;

/// An epoll instance.
pub struct Poller {
    epfd: OwnedFd,
}

impl Poller {
    pub fn new() -> io::Result<Poller> {
        // SAFETY: epoll_create1 has no memory preconditions; we check the
        // result before taking ownership of the returned descriptor.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor nobody else owns.
        let epfd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Poller { epfd })
    }

    /// Watches `fd` for readability, level-triggered, reporting `token`.
    pub fn add(&self, fd: RawFd, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: token,
        };
        // SAFETY: `ev` is a valid epoll_event for the duration of the call;
        // the kernel copies it. A bad `fd` is reported as EBADF.
        let rc =
            unsafe { libc::epoll_ctl(self.epfd.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    pub fn remove(&self, fd: RawFd) -> io::Result<()> {
        // SAFETY: EPOLL_CTL_DEL ignores the event pointer (null is allowed
        // since Linux 2.6.9).
        let rc = unsafe {
            libc::epoll_ctl(
                self.epfd.as_raw_fd(),
                libc::EPOLL_CTL_DEL,
                fd,
                std::ptr::null_mut(),
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits up to `timeout` (None: forever); pushes ready tokens into `out`.
    /// An interrupted wait (EINTR) returns `Ok` with nothing pushed.
    pub fn wait(&self, out: &mut Vec<u64>, timeout: Option<Duration>) -> io::Result<()> {
        let timeout_ms: libc::c_int = match timeout {
            None => -1,
            // Round up so that a 100 µs timeout sleeps rather than spins.
            Some(d) => {
                let ms = d.as_nanos().div_ceil(1_000_000);
                ms.min(libc::c_int::MAX as u128) as libc::c_int
            }
        };
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; MAX_EVENTS];
        // SAFETY: `events` is a writable array of MAX_EVENTS entries and we
        // pass that length; the kernel writes at most that many.
        let n = unsafe {
            libc::epoll_wait(
                self.epfd.as_raw_fd(),
                events.as_mut_ptr(),
                MAX_EVENTS as libc::c_int,
                timeout_ms,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                return Ok(());
            }
            return Err(e);
        }
        out.extend(events.iter().take(n as usize).map(|ev| ev.u64));
        Ok(())
    }
}

impl AsRawFd for Poller {
    fn as_raw_fd(&self) -> RawFd {
        self.epfd.as_raw_fd()
    }
}

/// An eventfd another thread writes to wake a worker out of `Poller::wait`.
///
/// Counting mode (not EFD_SEMAPHORE): any number of wake-ups collapse into
/// one readable state that a single [`drain`](Waker::drain) clears.
pub struct Waker {
    fd: OwnedFd,
}

impl Waker {
    pub fn new() -> io::Result<Waker> {
        // SAFETY: eventfd has no memory preconditions; result checked below.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Waker { fd })
    }

    pub fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes the 8 bytes of `one`, which lives across the call.
        // EAGAIN (counter at its maximum) means a wake-up is already
        // pending, which is all we want, so the result is ignored.
        let _ = unsafe {
            libc::write(
                self.fd.as_raw_fd(),
                (&one as *const u64).cast(),
                std::mem::size_of::<u64>(),
            )
        };
    }

    /// Clears pending wake-ups.
    pub fn drain(&self) {
        let mut value: u64 = 0;
        // SAFETY: reads at most 8 bytes into `value`. One read resets a
        // counting eventfd to zero; EAGAIN means nothing was pending.
        let _ = unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                (&mut value as *mut u64).cast(),
                std::mem::size_of::<u64>(),
            )
        };
    }

    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl AsRawFd for Waker {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Instant;

    #[test]
    fn timeout_without_events() {
        let p = Poller::new().unwrap();
        let w = Waker::new().unwrap();
        p.add(w.fd(), 7).unwrap();
        let mut out = Vec::new();
        let t = Instant::now();
        p.wait(&mut out, Some(Duration::from_millis(20))).unwrap();
        assert!(out.is_empty());
        assert!(t.elapsed() >= Duration::from_millis(15));
    }

    #[test]
    fn wake_is_level_triggered_until_drained() {
        let p = Poller::new().unwrap();
        let w = Waker::new().unwrap();
        p.add(w.fd(), 42).unwrap();
        w.wake();
        w.wake();
        let mut out = Vec::new();
        p.wait(&mut out, Some(Duration::ZERO)).unwrap();
        assert_eq!(out, vec![42]);
        // Not drained yet: level-triggered readiness reports it again.
        out.clear();
        p.wait(&mut out, Some(Duration::ZERO)).unwrap();
        assert_eq!(out, vec![42]);
        // One drain clears any number of wake-ups.
        w.drain();
        out.clear();
        p.wait(&mut out, Some(Duration::ZERO)).unwrap();
        assert!(out.is_empty());
        // Draining with nothing pending is harmless.
        w.drain();
    }

    #[test]
    fn wake_from_another_thread() {
        let p = Poller::new().unwrap();
        let w = Arc::new(Waker::new().unwrap());
        p.add(w.fd(), 1).unwrap();
        let w2 = Arc::clone(&w);
        let t = std::thread::spawn(move || w2.wake());
        let mut out = Vec::new();
        // Bounded: a lost wake-up fails the test instead of hanging it.
        p.wait(&mut out, Some(Duration::from_secs(5))).unwrap();
        t.join().unwrap();
        assert_eq!(out, vec![1]);
    }

    #[test]
    fn remove_stops_reports_and_errors_are_reported() {
        let p = Poller::new().unwrap();
        let a = Waker::new().unwrap();
        let b = Waker::new().unwrap();
        p.add(a.fd(), 1).unwrap();
        p.add(b.fd(), 2).unwrap();
        a.wake();
        b.wake();
        let mut out = Vec::new();
        p.wait(&mut out, Some(Duration::ZERO)).unwrap();
        out.sort();
        assert_eq!(out, vec![1, 2]);
        p.remove(a.fd()).unwrap();
        out.clear();
        p.wait(&mut out, Some(Duration::ZERO)).unwrap();
        assert_eq!(out, vec![2]);
        // Adding twice and removing an unwatched fd are errors, not panics.
        assert!(p.add(b.fd(), 3).is_err());
        assert!(p.remove(a.fd()).is_err());
    }
}
