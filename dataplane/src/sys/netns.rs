//! Network namespaces: finding them, running code inside one, and the `ip`
//! tool.
//!
//! This module owns the only place the dataplane changes a thread's network
//! namespace. It does so on a dedicated, short-lived thread ([`run_in`]) so
//! that no worker or API thread ever changes namespace under its own feet:
//! sockets and TAPs created there stay bound to the namespace they were
//! created in after the thread is gone, which is exactly what we need to
//! open devices inside a container's namespace and then drive them from
//! the worker threads.
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where `ip netns add NAME` puts its bind mounts.
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// `NAME` means `/run/netns/NAME`; anything with a `/` is a path
/// (e.g. `/proc/PID/ns/net`). Errors if it does not exist.
pub fn resolve(name_or_path: &str) -> io::Result<PathBuf> {
    if name_or_path.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "empty network namespace name",
        ));
    }
    if name_or_path.contains('/') {
        let path = PathBuf::from(name_or_path);
        if !path.exists() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("network namespace path '{name_or_path}' does not exist"),
            ));
        }
        return Ok(path);
    }
    let path = Path::new(NETNS_RUN_DIR).join(name_or_path);
    if !path.exists() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "network namespace '{name_or_path}' does not exist (looked for {})",
                path.display()
            ),
        ));
    }
    Ok(path)
}

/// Runs `f` on a fresh thread that has entered the network namespace at
/// `path` (setns), and returns its result. Sockets or TAPs created in `f`
/// belong to that namespace; child processes spawned in `f` run in it.
///
/// A panic in `f` is propagated to the caller.
pub fn run_in<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> T + Send + 'static,
) -> io::Result<T> {
    // Open the namespace on the calling thread so that a missing path is
    // reported before a thread is spawned, with the path in the message.
    let ns = File::open(path).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot open network namespace {}: {e}", path.display()),
        )
    })?;
    let shown = path.display().to_string();
    let handle = std::thread::Builder::new()
        .name("vxnet-netns".into())
        .spawn(move || -> io::Result<T> {
            // SAFETY: `ns` is an open file descriptor owned by this closure
            // for the duration of the call; setns only reads it. It changes
            // the namespace of this thread only, which exits after `f`.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            if rc != 0 {
                let e = io::Error::last_os_error();
                return Err(io::Error::new(
                    e.kind(),
                    format!("cannot enter network namespace {shown}: {e}"),
                ));
            }
            drop(ns);
            Ok(f())
        })?;
    match handle.join() {
        Ok(result) => result,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Runs `ip ARGS...`; on failure returns its stderr as the error message.
pub fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run `ip {}`: {e}", args.join(" ")))?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if stderr.is_empty() {
        Err(format!("`ip {}` failed: {}", args.join(" "), out.status))
    } else {
        Err(stderr)
    }
}

/// Helpers for tests (this crate's, the testbed's) that need a scratch
/// network namespace. Not part of the dataplane's API.
#[doc(hidden)]
pub mod testutil {
    use super::{NETNS_RUN_DIR, ip, run_in};
    use std::io;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// True when running as root; otherwise prints why `test` is skipped.
    /// Use as `if !testutil::root_or_skip("name") { return; }`.
    pub fn root_or_skip(test: &str) -> bool {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let root = unsafe { libc::geteuid() } == 0;
        if !root {
            eprintln!("skipping {test}: needs root (network namespaces, TAP devices)");
        }
        root
    }

    /// A network namespace named `vxt-<pid>-<n>`, with `lo` up, deleted
    /// (with everything still inside it) when dropped.
    pub struct TestNetns {
        name: String,
    }

    impl TestNetns {
        pub fn new() -> Result<TestNetns, String> {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let name = format!("vxt-{}-{n}", std::process::id());
            ip(&["netns", "add", &name])?;
            // From here on Drop removes the namespace, also if `lo` fails.
            let ns = TestNetns { name };
            ns.ip(&["link", "set", "lo", "up"])?;
            Ok(ns)
        }

        pub fn name(&self) -> &str {
            &self.name
        }

        pub fn path(&self) -> PathBuf {
            PathBuf::from(NETNS_RUN_DIR).join(&self.name)
        }

        /// Runs `ip -n NAME ARGS...`.
        pub fn ip(&self, args: &[&str]) -> Result<(), String> {
            let mut all = vec!["-n", self.name.as_str()];
            all.extend_from_slice(args);
            ip(&all)
        }

        /// [`run_in`] this namespace.
        pub fn run<T: Send + 'static>(
            &self,
            f: impl FnOnce() -> T + Send + 'static,
        ) -> io::Result<T> {
            run_in(&self.path(), f)
        }
    }

    impl Drop for TestNetns {
        fn drop(&mut self) {
            if let Err(e) = ip(&["netns", "del", &self.name]) {
                eprintln!("warning: cannot delete test netns {}: {e}", self.name);
            }
        }
    }
}
