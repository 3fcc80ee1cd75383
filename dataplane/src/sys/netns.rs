//! Network namespaces: creating and deleting them, finding them, running
//! code inside one, and starting programs inside one.
//!
//! This module owns the only place the dataplane changes a thread's network
//! namespace. It does so on a dedicated, short-lived thread ([`run_in`]) so
//! that no worker or API thread ever changes namespace under its own feet:
//! sockets and TAPs created there stay bound to the namespace they were
//! created in after the thread is gone, which is exactly what we need to
//! open devices inside a container's namespace and then drive them from
//! the worker threads.
use std::ffi::CString;
use std::fs::{DirBuilder, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
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

/// `ip netns exec NAME` bind-mounts each file of `/etc/netns/NAME/` over
/// its namesake in `/etc` (resolv.conf above all).
pub const ETC_NETNS_DIR: &str = "/etc/netns";

/// Checks a namespace name as `ip netns add` would take it: a file name
/// under [`NETNS_RUN_DIR`].
fn check_name(name: &str) -> io::Result<()> {
    if name.is_empty() || name.len() > 255 || name == "." || name == ".." || name.contains('/') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("'{name}' is not a usable network namespace name (1-255 characters, no '/')"),
        ));
    }
    Ok(())
}

fn cstring(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("'{}' contains a NUL byte", s.escape_debug()),
        )
    })
}

fn cpath(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("path {} contains a NUL byte", p.display()),
        )
    })
}

/// Checks the return code of a libc call; on failure, the errno with
/// `what` in front.
fn check(rc: libc::c_int, what: impl FnOnce() -> String) -> io::Result<()> {
    if rc == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    Err(io::Error::new(e.kind(), format!("{}: {e}", what())))
}

/// Creates the network namespace `NAME`, pinned at `/run/netns/NAME`, as
/// `ip netns add NAME` does (iproute2 `ip/ipnetns.c`, `netns_add`), and
/// returns that path. Its loopback is down, as the kernel makes it.
///
/// `/run/netns` is made a shared mount point first (bind-mounted onto
/// itself if it is not a mount point yet) so that the pin propagates to, and
/// its removal from, other mount namespaces. The namespace itself is made
/// by `unshare(CLONE_NEWNET)` on a short-lived thread, whose namespace file
/// is then bind-mounted over the new empty file: no thread of the caller
/// changes namespace, and no process is forked (rtnetlink's
/// `NetworkNamespace::add` forks and then allocates in the child, which is
/// unsound in a multi-threaded daemon).
///
/// Errors: `AlreadyExists` if the name is taken; otherwise the failed step
/// with its errno. Nothing is left behind on failure.
pub fn add(name: &str) -> io::Result<PathBuf> {
    check_name(name)?;
    let dir = Path::new(NETNS_RUN_DIR);
    match DirBuilder::new().mode(0o755).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => {
            return Err(io::Error::new(
                e.kind(),
                format!("cannot create {NETNS_RUN_DIR}: {e}"),
            ));
        }
    }
    make_run_dir_shared(dir)?;
    let path = dir.join(name);
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o000)
        .open(&path)
        .map_err(|e| {
            if e.kind() == io::ErrorKind::AlreadyExists {
                io::Error::new(
                    e.kind(),
                    format!("network namespace '{name}' already exists"),
                )
            } else {
                io::Error::new(e.kind(), format!("cannot create {}: {e}", path.display()))
            }
        })?;
    let target = cpath(&path)?;
    let shown = path.display().to_string();
    let pinned = std::thread::Builder::new()
        .name("vxnet-netns-add".into())
        .spawn(move || -> io::Result<()> {
            // SAFETY: unshare takes no pointers; it gives only this thread,
            // which exits right after, a new network namespace.
            let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
            check(rc, || "cannot create a network namespace".into())?;
            // SAFETY: both paths are NUL-terminated strings that outlive the
            // call; the fs type and data are unused for a bind mount.
            let rc = unsafe {
                libc::mount(
                    c"/proc/thread-self/ns/net".as_ptr(),
                    target.as_ptr(),
                    c"none".as_ptr(),
                    libc::MS_BIND,
                    std::ptr::null(),
                )
            };
            check(rc, || format!("cannot bind the new namespace to {shown}"))
        })
        .map_err(|e| io::Error::new(e.kind(), format!("cannot start a thread: {e}")))
        .and_then(|t| {
            t.join()
                .unwrap_or_else(|_| Err(io::Error::other("netns thread panicked")))
        });
    if let Err(e) = pinned {
        let _ = delete(name);
        return Err(e);
    }
    Ok(path)
}

/// Makes `dir` a shared mount point as iproute2 does: `mount --make-rshared`,
/// and where that fails with `EINVAL` (not a mount point), bind-mount it
/// onto itself first. A lock on the directory keeps concurrent callers from
/// stacking bind mounts (iproute2 does the same, Debian bug 949235).
fn make_run_dir_shared(dir: &Path) -> io::Result<()> {
    let lock = File::open(dir)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot open {}: {e}", dir.display())))?;
    // SAFETY: flock on a descriptor we own; released when `lock` closes.
    unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
    let c_dir = cpath(dir)?;
    let mut made_mount_point = false;
    loop {
        // SAFETY: `c_dir` and the literals are NUL-terminated and outlive
        // the call; a propagation change reads no source or data.
        let rc = unsafe {
            libc::mount(
                c"".as_ptr(),
                c_dir.as_ptr(),
                c"none".as_ptr(),
                libc::MS_SHARED | libc::MS_REC,
                std::ptr::null(),
            )
        };
        if rc == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINVAL) || made_mount_point {
            return Err(io::Error::new(
                e.kind(),
                format!("mount --make-shared {} failed: {e}", dir.display()),
            ));
        }
        // SAFETY: as above; a bind mount of the directory onto itself.
        let rc = unsafe {
            libc::mount(
                c_dir.as_ptr(),
                c_dir.as_ptr(),
                c"none".as_ptr(),
                libc::MS_BIND | libc::MS_REC,
                std::ptr::null(),
            )
        };
        check(rc, || format!("mount --bind {0} {0} failed", dir.display()))?;
        made_mount_point = true;
    }
}

/// Removes the pin of namespace `NAME` as `ip netns del NAME` does (detach
/// the bind mount, unlink the file). The namespace itself goes when the
/// last process, socket or device in it is gone.
///
/// Errors: `NotFound` if there is no such namespace.
pub fn delete(name: &str) -> io::Result<()> {
    check_name(name)?;
    let path = Path::new(NETNS_RUN_DIR).join(name);
    let c_path = cpath(&path)?;
    // SAFETY: `c_path` is NUL-terminated and outlives the call. A failure
    // (nothing mounted there) is fine: the unlink below reports what matters.
    unsafe { libc::umount2(c_path.as_ptr(), libc::MNT_DETACH) };
    std::fs::remove_file(&path).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            io::Error::new(
                e.kind(),
                format!("network namespace '{name}' does not exist"),
            )
        } else {
            io::Error::new(e.kind(), format!("cannot remove {}: {e}", path.display()))
        }
    })
}

/// Makes `cmd` start inside network namespace `name_or_path` the way
/// `ip netns exec NAME` sets a program up (iproute2 `lib/namespace.c`,
/// `netns_switch`): in the child, after fork and before exec, it enters the
/// namespace, takes a private mount namespace whose mounts do not propagate
/// back (`--make-rslave /`), mounts a `/sys` that shows the namespace's
/// devices, and bind-mounts each file of `/etc/netns/NAME/` over its
/// namesake in `/etc` (so the program reads the container's resolv.conf).
///
/// Unlike running `ip netns exec`, a command that cannot be started makes
/// `cmd.spawn()` fail with the exec error itself, rather than `ip` starting
/// and the error ending up in the program's output.
///
/// Errors (here): the namespace does not exist. Errors of the set-up steps
/// in the child come out of `spawn()`; a file of `/etc/netns/NAME` that
/// cannot be mounted is skipped, as iproute2 does.
pub fn exec_in(cmd: &mut Command, name_or_path: &str) -> io::Result<()> {
    let path = resolve(name_or_path)?;
    let ns = File::open(&path).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot open network namespace {}: {e}", path.display()),
        )
    })?;
    let name = path.file_name().map_or_else(
        || name_or_path.to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let sysfs_source = cstring(&name)?;
    // Everything the child needs is prepared here: after fork it must not
    // allocate (another thread may hold the allocator's lock).
    let mut binds: Vec<(CString, CString)> = Vec::new();
    if let Ok(entries) = std::fs::read_dir(Path::new(ETC_NETNS_DIR).join(&name)) {
        for entry in entries.flatten() {
            let target = Path::new("/etc").join(entry.file_name());
            binds.push((cpath(&entry.path())?, cpath(&target)?));
        }
    }
    let enter = move || -> io::Result<()> {
        // SAFETY: `ns` is an open descriptor owned by this closure; setns
        // only reads it and moves this (single-threaded) child.
        let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
        check_in_child(rc)?;
        // SAFETY: unshare takes no pointers.
        let rc = unsafe { libc::unshare(libc::CLONE_NEWNS) };
        check_in_child(rc)?;
        // SAFETY: NUL-terminated literals; a propagation change reads no
        // source or data.
        let rc = unsafe {
            libc::mount(
                c"".as_ptr(),
                c"/".as_ptr(),
                c"none".as_ptr(),
                libc::MS_SLAVE | libc::MS_REC,
                std::ptr::null(),
            )
        };
        check_in_child(rc)?;
        let mut sys_flags = 0;
        // SAFETY: NUL-terminated literal path.
        if unsafe { libc::umount2(c"/sys".as_ptr(), libc::MNT_DETACH) } != 0 {
            // Could not unmount it: mount over it, read-only if it is (a
            // read-only sysfs cannot be shadowed by a writable one).
            // SAFETY: statvfs is plain data, fully written by the call.
            let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
            // SAFETY: NUL-terminated path; `st` is a valid out pointer.
            if unsafe { libc::statvfs(c"/sys".as_ptr(), &mut st) } == 0
                && st.f_flag & libc::ST_RDONLY != 0
            {
                sys_flags = libc::MS_RDONLY;
            }
        }
        // SAFETY: NUL-terminated strings owned by this closure.
        let rc = unsafe {
            libc::mount(
                sysfs_source.as_ptr(),
                c"/sys".as_ptr(),
                c"sysfs".as_ptr(),
                sys_flags,
                std::ptr::null(),
            )
        };
        check_in_child(rc)?;
        for (source, target) in &binds {
            // SAFETY: NUL-terminated strings owned by this closure. A file
            // that cannot be bound is skipped, as `ip netns exec` does.
            unsafe {
                libc::mount(
                    source.as_ptr(),
                    target.as_ptr(),
                    c"none".as_ptr(),
                    libc::MS_BIND,
                    std::ptr::null(),
                )
            };
        }
        Ok(())
    };
    // SAFETY: `enter` only makes system calls on data prepared above; it
    // neither allocates nor takes locks, so it is safe between fork and exec.
    unsafe { cmd.pre_exec(enter) };
    Ok(())
}

/// [`check`] for the child after fork: the bare errno, no allocation.
fn check_in_child(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Helpers for tests (this crate's, the testbed's) that need a scratch
/// network namespace. Not part of the dataplane's API.
#[doc(hidden)]
pub mod testutil {
    use super::{NETNS_RUN_DIR, add, delete, run_in};
    use crate::sys::netlink::Netlink;
    use std::io;
    use std::path::PathBuf;
    use std::process::Command;
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

    /// Runs the `ip` tool with `args` (tests check the kernel with the
    /// tool people use); on failure returns its stderr.
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
            add(&name).map_err(|e| e.to_string())?;
            // From here on Drop removes the namespace, also if `lo` fails.
            let ns = TestNetns { name };
            ns.netlink()
                .and_then(|mut nl| nl.set_up("lo"))
                .map_err(|e| e.to_string())?;
            Ok(ns)
        }

        pub fn name(&self) -> &str {
            &self.name
        }

        pub fn path(&self) -> PathBuf {
            PathBuf::from(NETNS_RUN_DIR).join(&self.name)
        }

        /// A netlink socket in this namespace.
        pub fn netlink(&self) -> io::Result<Netlink> {
            Netlink::open_in(&self.path())
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
            if let Err(e) = delete(&self.name) {
                eprintln!("warning: cannot delete test netns {}: {e}", self.name);
            }
        }
    }
}
