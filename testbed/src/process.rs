//! Running commands inside network namespaces: one-shot commands with a
//! timeout and captured output, and long-running background processes that
//! die with the testbed.
//!
//! Every child gets its own process group (so a timeout or teardown kills
//! whatever it forked too) and `PR_SET_PDEATHSIG` (so it dies if the testbed
//! process dies without running its destructors, e.g. on SIGKILL).
//! Namespaces are entered with `ip netns exec`, which `setns`es and then
//! `exec`s the command: the pid we hold is the command's own pid.
//!
//! Linux sends the parent-death signal when the *thread* that spawned the
//! child exits, not the process: spawn long-running processes from the thread
//! that owns the `Testbed` (each test's own thread, the binary's main thread).

use std::ffi::OsStr;
use std::fs::File;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// How often a timed wait looks at its condition again.
const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// Grace time between SIGTERM and SIGKILL when stopping a background process.
const TERM_GRACE: Duration = Duration::from_secs(3);

/// The captured result of a finished command.
#[derive(Debug, Clone)]
pub struct CmdOutput {
    /// The command line, for error messages.
    pub cmdline: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl CmdOutput {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// Turns a non-zero exit into an error carrying the command and its output.
    pub fn check(self) -> Result<CmdOutput> {
        if self.success() {
            Ok(self)
        } else {
            bail!(
                "`{}` failed ({}): {}{}",
                self.cmdline,
                self.status,
                self.stderr.trim(),
                if self.stdout.trim().is_empty() {
                    String::new()
                } else {
                    format!(" [stdout: {}]", self.stdout.trim())
                }
            )
        }
    }

    /// stdout and stderr together, for "does the message mention X" checks.
    pub fn combined(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

/// Builds the argv that runs `argv` inside namespace `ns` (or in the current
/// one when `ns` is `None`).
fn command<S: AsRef<OsStr>>(ns: Option<&str>, argv: &[S]) -> Result<Command> {
    let mut cmd = match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]);
            c.args(argv);
            c
        }
        None => {
            let (first, rest) = argv.split_first().context("empty command line")?;
            let mut c = Command::new(first);
            c.args(rest);
            c
        }
    };
    cmd.stdin(Stdio::null());
    Ok(cmd)
}

fn cmdline<S: AsRef<OsStr>>(ns: Option<&str>, argv: &[S]) -> String {
    let mut s = match ns {
        Some(ns) => format!("[{ns}]"),
        None => String::new(),
    };
    for a in argv {
        if !s.is_empty() {
            s.push(' ');
        }
        s.push_str(&a.as_ref().to_string_lossy());
    }
    s
}

/// Makes the child a process-group leader that is SIGKILLed when we die.
fn die_with_parent(cmd: &mut Command) {
    cmd.process_group(0);
    // SAFETY: the closure runs between fork and exec and only calls prctl(2),
    // which is async-signal-safe; it touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Sends `sig` to the process group led by `pid`.
fn kill_group(pid: u32, sig: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    if pid <= 0 {
        return;
    }
    // SAFETY: kill(2) has no memory-safety preconditions; a negative pid
    // addresses the process group we created with process_group(0).
    unsafe {
        libc::kill(-pid, sig);
    }
}

fn read_all<R: Read + Send + 'static>(r: Option<R>) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut r) = r {
            // A read error only truncates what we report; the exit status decides.
            let _ = r.read_to_end(&mut buf);
        }
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// Runs `argv` (in namespace `ns`, if given) to completion, capturing its
/// output. The whole process group is killed if it outlives `timeout`.
pub fn run<S: AsRef<OsStr>>(ns: Option<&str>, argv: &[S], timeout: Duration) -> Result<CmdOutput> {
    run_env(ns, argv, &[], timeout)
}

/// [`run`] with extra environment variables.
pub fn run_env<S: AsRef<OsStr>>(
    ns: Option<&str>,
    argv: &[S],
    env: &[(&str, &OsStr)],
    timeout: Duration,
) -> Result<CmdOutput> {
    let line = cmdline(ns, argv);
    let mut cmd = command(ns, argv)?;
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    die_with_parent(&mut cmd);
    let mut child = cmd.spawn().with_context(|| format!("spawning `{line}`"))?;
    let out = read_all(child.stdout.take());
    let err = read_all(child.stderr.take());
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child
            .try_wait()
            .with_context(|| format!("waiting for `{line}`"))?
        {
            break st;
        }
        if Instant::now() >= deadline {
            kill_group(child.id(), libc::SIGKILL);
            let _ = child.wait();
            let stdout = out.join().unwrap_or_default();
            let stderr = err.join().unwrap_or_default();
            bail!(
                "`{line}` timed out after {timeout:?}; stdout: {} stderr: {}",
                stdout.trim(),
                stderr.trim()
            );
        }
        thread::sleep(POLL_INTERVAL);
    };
    Ok(CmdOutput {
        cmdline: line,
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

/// Polls `cond` until it returns true or `timeout` passes. Returns whether it
/// became true.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(POLL_INTERVAL);
    }
}

/// A long-running process (dataplane, iperf3 server) that is stopped and
/// reaped when dropped. Its stdout and stderr go to a log file.
#[derive(Debug)]
pub struct BackgroundProc {
    pub name: String,
    child: Child,
    log: PathBuf,
}

impl BackgroundProc {
    /// Starts `argv` in namespace `ns`, logging to `log`.
    pub fn spawn<S: AsRef<OsStr>>(
        name: &str,
        ns: Option<&str>,
        argv: &[S],
        log: &Path,
    ) -> Result<BackgroundProc> {
        let child = spawn_logged(ns, argv, log, true)?;
        Ok(BackgroundProc {
            name: name.to_string(),
            child,
            log: log.to_path_buf(),
        })
    }

    /// Starts a process that outlives us (for `vxnet-testbed up`); dropping
    /// the value still stops it, so callers `std::mem::forget` it once it is
    /// known to run.
    pub fn spawn_detached<S: AsRef<OsStr>>(
        name: &str,
        ns: Option<&str>,
        argv: &[S],
        log: &Path,
    ) -> Result<BackgroundProc> {
        let child = spawn_logged(ns, argv, log, false)?;
        Ok(BackgroundProc {
            name: name.to_string(),
            child,
            log: log.to_path_buf(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `Some(status)` once the process has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The last `max` bytes of the process's log, for error messages.
    pub fn log_tail(&self, max: usize) -> String {
        log_tail(&self.log, max)
    }

    /// SIGTERM, then SIGKILL after a grace period; always reaps.
    pub fn stop(&mut self) {
        if self.exited().is_some() {
            // The leader is gone; anything it forked into its group goes too.
            kill_group(self.pid(), libc::SIGKILL);
            return;
        }
        kill_group(self.pid(), libc::SIGTERM);
        if !wait_until(TERM_GRACE, || self.exited().is_some()) {
            kill_group(self.pid(), libc::SIGKILL);
            let _ = self.child.wait();
        }
        kill_group(self.pid(), libc::SIGKILL);
    }
}

impl Drop for BackgroundProc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts a process whose output goes to `log`. With `tied`, it dies with us
/// (PDEATHSIG); without, it outlives us (for `vxnet-testbed up`) but still
/// leads its own process group.
pub fn spawn_logged<S: AsRef<OsStr>>(
    ns: Option<&str>,
    argv: &[S],
    log: &Path,
    tied: bool,
) -> Result<Child> {
    let line = cmdline(ns, argv);
    let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let err = out.try_clone()?;
    let mut cmd = command(ns, argv)?;
    cmd.stdout(out).stderr(err);
    if tied {
        die_with_parent(&mut cmd);
    } else {
        cmd.process_group(0);
    }
    cmd.spawn().with_context(|| format!("spawning `{line}`"))
}

/// The last `max` bytes of a log file (lossy UTF-8), or a note if unreadable.
pub fn log_tail(path: &Path, max: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let start = bytes.len().saturating_sub(max);
            String::from_utf8_lossy(bytes.get(start..).unwrap_or_default()).into_owned()
        }
        Err(e) => format!("<no log at {}: {e}>", path.display()),
    }
}

/// Sends `sig` to one process (not a group).
pub fn kill_pid(pid: u32, sig: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    if pid <= 1 {
        return;
    }
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// Whether a process with this pid exists.
pub fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Whether we run as root (every namespace operation needs it).
pub fn is_root() -> bool {
    // SAFETY: geteuid(2) cannot fail and has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_captures_output_and_status() {
        let out = run(
            None,
            &["sh", "-c", "echo hi; echo err >&2; exit 3"],
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(out.stdout.trim(), "hi");
        assert_eq!(out.stderr.trim(), "err");
        assert_eq!(out.status.code(), Some(3));
        let e = out.check().unwrap_err().to_string();
        assert!(e.contains("err"), "{e}");
    }

    #[test]
    fn run_kills_on_timeout() {
        let t = Instant::now();
        let r = run(None, &["sleep", "30"], Duration::from_millis(200));
        assert!(r.unwrap_err().to_string().contains("timed out"));
        assert!(t.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn background_proc_is_reaped_on_drop() {
        let dir = std::env::temp_dir().join(format!("vxtb-proc-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p =
            BackgroundProc::spawn("sleeper", None, &["sleep", "60"], &dir.join("s.log")).unwrap();
        let pid = p.pid();
        assert!(pid_alive(pid));
        drop(p);
        assert!(!pid_alive(pid), "process {pid} survived drop");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
