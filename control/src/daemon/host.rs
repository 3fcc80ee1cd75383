//! The daemon's seam to the host: network namespaces, the resolv.conf that
//! is bind-mounted into them when a program starts there (by the CLI, as
//! `ip netns exec` does), and the processes containers run. [`SystemHost`]
//! does it with the dataplane's netns and netlink modules and `/proc`;
//! tests use a fake.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use vxnet_dataplane::sys::netlink::Netlink;
use vxnet_dataplane::sys::netns;

pub use vxnet_dataplane::sys::netns::{ETC_NETNS_DIR, NETNS_RUN_DIR as NETNS_DIR};

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
}

/// The real host.
pub struct SystemHost {
    /// Where `/etc/netns` is (a test may point it elsewhere).
    pub etc_netns: PathBuf,
    /// The host resolv.conf copied into containers.
    pub resolv_conf: PathBuf,
}

impl Default for SystemHost {
    fn default() -> Self {
        Self {
            etc_netns: PathBuf::from(ETC_NETNS_DIR),
            resolv_conf: PathBuf::from("/etc/resolv.conf"),
        }
    }
}

/// The host's resolv.conf without loopback nameservers, which would point
/// into the container's own (empty) loopback.
pub fn container_resolv_conf(host: &str) -> String {
    let mut out = String::new();
    for line in host.lines() {
        let t = line.trim();
        let ns = t.strip_prefix("nameserver").map(str::trim);
        if ns.is_some_and(|a| a.starts_with("127.") || a == "::1") {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
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
        fs::write(&path, container_resolv_conf(&host))
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
        if pid <= 1 {
            return;
        }
        // The group when the command leads one (detached runs), else the
        // process itself (foreground runs share the CLI's group).
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{pid}"), &pid.to_string()])
            .output();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_drops_loopback_servers() {
        let host = "search example.org\nnameserver 127.0.0.53\nnameserver 192.0.2.53\nnameserver ::1\noptions edns0\n";
        assert_eq!(
            container_resolv_conf(host),
            "search example.org\nnameserver 192.0.2.53\noptions edns0\n"
        );
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
    fn own_process_is_alive() {
        let h = SystemHost::default();
        assert!(h.process_alive(std::process::id()));
        assert!(!h.process_alive(u32::MAX));
    }
}
