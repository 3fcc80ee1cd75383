//! Network namespaces. CONTRACT STUB: to be implemented.
use std::io;
use std::path::{Path, PathBuf};

/// `NAME` means `/run/netns/NAME`; anything with a `/` is a path
/// (e.g. `/proc/PID/ns/net`). Errors if it does not exist.
pub fn resolve(name_or_path: &str) -> io::Result<PathBuf> {
    let _ = name_or_path;
    todo!()
}

/// Runs `f` on a fresh thread that has entered the network namespace at
/// `path` (setns), and returns its result. Sockets or TAPs created in `f`
/// belong to that namespace; child processes spawned in `f` run in it.
pub fn run_in<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> T + Send + 'static,
) -> io::Result<T> {
    let _ = (path, f);
    todo!()
}

/// Runs `ip ARGS...`; on failure returns its stderr as the error message.
pub fn ip(args: &[&str]) -> Result<(), String> {
    let _ = args;
    todo!()
}
