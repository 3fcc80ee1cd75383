//! Waiting for SIGINT/SIGTERM on a thread of our choosing, so that a
//! dataplane stopped with Ctrl-C or `kill` tears down its TAPs, bridges and
//! socket instead of dying mid-way.

use std::io;

fn termination_set() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset only write the set we own.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGHUP);
        set
    }
}

/// Blocks the termination signals in the calling thread and in every thread
/// it spawns afterwards. Call first thing in `main`.
pub fn block_termination() -> io::Result<()> {
    let set = termination_set();
    // SAFETY: `set` is a valid, initialised signal set; no old set is asked for.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

/// Unblocks every signal in the calling thread. For a child between fork
/// and exec (`CommandExt::pre_exec`; only async-signal-safe calls): the
/// mask survives exec, so without this a command started by a daemon that
/// called [`block_termination`] could not be stopped with SIGTERM, which
/// `docker stop` sends first.
pub fn unblock_all() -> io::Result<()> {
    // SAFETY: sigemptyset writes only the set we own; pthread_sigmask reads
    // it and asks for no old set. Both are async-signal-safe.
    let rc = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut())
    };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

/// Makes the process `cmd` starts begin with no signal blocked (see
/// [`unblock_all`]), whatever the spawning thread blocks.
pub fn start_unblocked(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs between fork and exec and makes only
    // async-signal-safe calls.
    unsafe {
        cmd.pre_exec(unblock_all);
    }
}

/// Waits until a termination signal arrives; returns its number.
pub fn wait_termination() -> io::Result<i32> {
    let set = termination_set();
    let mut sig: libc::c_int = 0;
    // SAFETY: `set` is valid and `sig` is a writable int.
    let rc = unsafe { libc::sigwait(&set, &mut sig) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(sig)
}
