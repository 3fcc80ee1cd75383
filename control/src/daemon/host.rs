//! The daemon's seam to the host: network namespaces, the resolv.conf that
//! is bind-mounted into them when a program starts there, and the
//! processes containers run. [`SystemHost`] does it with the dataplane's
//! netns and netlink modules and `/proc`; tests use a fake. Only the
//! reconciler calls it.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use vxnet_dataplane::sys::netlink::Netlink;
use vxnet_dataplane::sys::netns;

pub use vxnet_dataplane::sys::netns::{ETC_NETNS_DIR, NETNS_RUN_DIR as NETNS_DIR};

/// A container's command, as the daemon starts it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Spawn {
    /// Program and arguments; the program is looked up in `PATH`.
    pub command: Vec<String>,
    /// `K=V` added to the daemon's environment.
    pub env: Vec<String>,
    /// Its stdout and stderr go here (appended).
    pub log_path: PathBuf,
}

/// How a process ended, as far as this daemon can tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// Still running.
    Running,
    /// Ended with this status (or 128 + signal).
    Code(i32),
    /// Gone, but not our child (it ended while the daemon was down): the
    /// status is unknown.
    Unknown,
}

pub trait Host: Send {
    fn netns_exists(&self, name: &str) -> bool;
    /// Creates the namespace with its loopback up.
    fn netns_add(&self, name: &str) -> Result<(), String>;
    fn netns_del(&self, name: &str) -> Result<(), String>;
    /// Writes `/etc/netns/NAME/resolv.conf` from the host's.
    fn write_resolv_conf(&self, name: &str) -> Result<(), String>;
    /// Removes `/etc/netns/NAME` (no error if absent).
    fn remove_resolv_conf(&self, name: &str);
    /// Whether `pid` is a live (not zombie) process.
    fn process_alive(&self, pid: u32) -> bool;
    /// SIGKILLs the process group led by `pid` (containers run as leaders
    /// of their own group, so their children go too).
    fn kill_group(&self, pid: u32);
    /// SIGTERMs the process group led by `pid`.
    fn terminate_group(&self, pid: u32);
    /// Starts `spawn` in namespace `netns` as the leader of its own process
    /// group; the error says why it could not start (no such program, not
    /// executable, no namespace).
    fn spawn(&self, netns: &str, spawn: &Spawn) -> Result<u32, String>;
    /// Whether the process `pid` has ended, and how.
    fn exit(&self, pid: u32) -> Exit;
}

/// Where `program` is, looked up like `execvp` does: a name with a slash
/// as it is, else the first executable match in `PATH`. The error is
/// Docker's (`executable file not found in $PATH`).
pub fn find_program(program: &str, path: &str) -> Result<PathBuf, String> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.is_empty() {
        return Err("no command given".into());
    }
    if program.contains('/') {
        let p = PathBuf::from(program);
        return if executable(&p) {
            Ok(p)
        } else if p.exists() {
            Err(format!("exec: \"{program}\": permission denied"))
        } else {
            Err(format!("exec: \"{program}\": no such file or directory"))
        };
    }
    path.split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(program))
        .find(|p| executable(p))
        .ok_or_else(|| format!("exec: \"{program}\": executable file not found in $PATH"))
}

/// The real host.
pub struct SystemHost {
    /// Where `/etc/netns` is (a test may point it elsewhere).
    pub etc_netns: PathBuf,
    /// The host resolv.conf copied into containers.
    pub resolv_conf: PathBuf,
    /// Processes this daemon started, to collect their exit status.
    children: Mutex<HashMap<u32, Child>>,
    /// Called when one of them ends, so the reconciler sees it at once
    /// rather than at its next periodic pass.
    on_exit: Option<Arc<dyn Fn() + Send + Sync>>,
}

impl SystemHost {
    /// Calls `f` (from a waiter thread) whenever a started command ends.
    pub fn with_exit_notify(mut self, f: impl Fn() + Send + Sync + 'static) -> Self {
        self.on_exit = Some(Arc::new(f));
        self
    }
}

/// Blocks until `pid` (our child) has ended, leaving it to be reaped by
/// `try_wait` (`WNOWAIT`), then calls `notify`.
fn watch_exit(pid: u32, notify: Arc<dyn Fn() + Send + Sync>) {
    use nix::sys::wait::{Id, WaitPidFlag, waitid};
    let spawned = std::thread::Builder::new()
        .name(format!("vxnet-wait-{pid}"))
        .stack_size(64 * 1024)
        .spawn(move || {
            let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT;
            let child = nix::unistd::Pid::from_raw(pid as i32);
            // Ended, or already reaped: either way, look now.
            while let Err(nix::errno::Errno::EINTR) = waitid(Id::Pid(child), flags) {}
            notify();
        });
    if let Err(e) = spawned {
        // The periodic pass still notices the exit.
        tracing::warn!(pid, error = %e, "cannot watch a command for its exit");
    }
}

impl Default for SystemHost {
    fn default() -> Self {
        Self {
            etc_netns: PathBuf::from(ETC_NETNS_DIR),
            resolv_conf: PathBuf::from("/etc/resolv.conf"),
            children: Mutex::default(),
            on_exit: None,
        }
    }
}

fn signal_group(sig: &str, pid: u32) {
    if pid <= 1 {
        return;
    }
    // The group when the command leads one (detached runs), else the
    // process itself (foreground runs share the CLI's group).
    let _ = Command::new("kill")
        .args([sig, "--", &format!("-{pid}"), &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

impl Host for SystemHost {
    fn netns_exists(&self, name: &str) -> bool {
        Path::new(NETNS_DIR).join(name).exists()
    }

    fn netns_add(&self, name: &str) -> Result<(), String> {
        let path = netns::add(name).map_err(|e| e.to_string())?;
        if let Err(e) = Netlink::open_in(&path).and_then(|mut nl| nl.set_up("lo")) {
            let _ = netns::delete(name);
            return Err(format!(
                "cannot bring up lo in network namespace '{name}': {e}"
            ));
        }
        Ok(())
    }

    fn netns_del(&self, name: &str) -> Result<(), String> {
        netns::delete(name).map_err(|e| e.to_string())
    }

    fn write_resolv_conf(&self, name: &str) -> Result<(), String> {
        let dir = self.etc_netns.join(name);
        fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let host = fs::read_to_string(&self.resolv_conf).unwrap_or_default();
        let path = dir.join("resolv.conf");
        // The embedded DNS server at 127.0.0.11, with the host's search
        // and options lines (Docker's).
        fs::write(&path, crate::dns::resolv_conf(&host))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))
    }

    fn remove_resolv_conf(&self, name: &str) {
        let _ = fs::remove_dir_all(self.etc_netns.join(name));
    }

    fn process_alive(&self, pid: u32) -> bool {
        // Field 3 of /proc/PID/stat is the state; the command name before it
        // is in parentheses and may contain spaces, so split after the last ')'.
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            return false;
        };
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next());
        !matches!(state, None | Some("Z") | Some("X"))
    }

    fn kill_group(&self, pid: u32) {
        signal_group("-KILL", pid);
    }

    fn terminate_group(&self, pid: u32) {
        signal_group("-TERM", pid);
    }

    fn spawn(&self, netns: &str, spec: &Spawn) -> Result<u32, String> {
        use std::os::unix::process::CommandExt;
        let Some((program, args)) = spec.command.split_first() else {
            return Err("no command given".into());
        };
        // A clear message for the common mistakes before anything starts;
        // exec itself reports the rest (`exec_in` makes spawn fail with it).
        let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into());
        find_program(program, &path)?;
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&spec.log_path)
            .map_err(|e| format!("cannot open the log {}: {e}", spec.log_path.display()))?;
        let log2 = log
            .try_clone()
            .map_err(|e| format!("cannot open the log: {e}"))?;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .process_group(0);
        for kv in &spec.env {
            if let Some((k, v)) = kv.split_once('=') {
                cmd.env(k, v);
            }
        }
        netns::exec_in(&mut cmd, netns).map_err(|e| e.to_string())?;
        // The daemon's threads block SIGTERM, SIGINT and SIGHUP (it waits
        // for them on one thread), and a blocked mask survives exec: the
        // command must get them, or `container stop` waits out its grace
        // and kills.
        vxnet_dataplane::sys::signal::start_unblocked(&mut cmd);
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {program}: {e}"))?;
        let pid = child.id();
        self.children
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(pid, child);
        if let Some(f) = &self.on_exit {
            watch_exit(pid, Arc::clone(f));
        }
        Ok(pid)
    }

    fn exit(&self, pid: u32) -> Exit {
        let mut children = self.children.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(child) = children.get_mut(&pid) {
            return match child.try_wait() {
                Ok(None) => Exit::Running,
                Ok(Some(st)) => {
                    children.remove(&pid);
                    use std::os::unix::process::ExitStatusExt;
                    Exit::Code(st.code().unwrap_or_else(|| 128 + st.signal().unwrap_or(0)))
                }
                Err(_) => Exit::Unknown,
            };
        }
        drop(children);
        if self.process_alive(pid) {
            Exit::Running
        } else {
            Exit::Unknown
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_are_found_like_execvp_does() {
        assert!(find_program("sh", "/nonexistent:/bin:/usr/bin").is_ok());
        let e = find_program("no-such-program-vxnet", "/bin:/usr/bin").unwrap_err();
        assert_eq!(
            e,
            "exec: \"no-such-program-vxnet\": executable file not found in $PATH"
        );
        let e = find_program("/nonexistent/binary", "/bin").unwrap_err();
        assert!(e.contains("no such file or directory"), "{e}");
        // Not executable.
        let f = std::env::temp_dir().join(format!("vxnet-noexec-{}", std::process::id()));
        fs::write(&f, b"#!/bin/sh\n").unwrap();
        let e = find_program(&f.display().to_string(), "/bin").unwrap_err();
        let _ = fs::remove_file(&f);
        assert!(e.contains("permission denied"), "{e}");
    }

    #[test]
    fn namespaces_come_with_lo_up_and_go() {
        if !vxnet_dataplane::sys::netns::testutil::root_or_skip("namespaces_come_with_lo_up_and_go")
        {
            return;
        }
        let h = SystemHost::default();
        let name = format!("vxt-{}-host", std::process::id());
        h.netns_add(&name).unwrap();
        let lo =
            Netlink::open_in(&Path::new(NETNS_DIR).join(&name)).and_then(|mut nl| nl.link("lo"));
        let exists = h.netns_exists(&name);
        let twice = h.netns_add(&name);
        h.netns_del(&name).unwrap();
        assert!(lo.unwrap().up);
        assert!(exists);
        assert!(twice.unwrap_err().contains("already exists"));
        assert!(!h.netns_exists(&name));
        assert!(h.netns_del(&name).is_err());
    }

    #[test]
    fn an_ended_command_is_announced_and_its_status_kept() {
        if !vxnet_dataplane::sys::netns::testutil::root_or_skip(
            "an_ended_command_is_announced_and_its_status_kept",
        ) {
            return;
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let tx = Mutex::new(tx);
        let h = SystemHost::default().with_exit_notify(move || {
            let _ = tx.lock().unwrap().send(());
        });
        let name = format!("vxt-{}-exit", std::process::id());
        h.netns_add(&name).unwrap();
        let log = std::env::temp_dir().join(format!("{name}.log"));
        let started = h.spawn(
            &name,
            &Spawn {
                command: vec!["sh".into(), "-c".into(), "sleep 0.2; exit 3".into()],
                env: vec![],
                log_path: log.clone(),
            },
        );
        let told = rx.recv_timeout(std::time::Duration::from_secs(10));
        let exit = started.as_ref().map(|pid| h.exit(*pid));
        h.netns_del(&name).unwrap();
        let _ = fs::remove_file(&log);
        assert!(told.is_ok(), "no exit notice");
        // The waiter left the status to be collected.
        assert_eq!(exit.unwrap(), Exit::Code(3));
    }

    #[test]
    fn own_process_is_alive() {
        let h = SystemHost::default();
        assert!(h.process_alive(std::process::id()));
        assert!(!h.process_alive(u32::MAX));
    }
}
