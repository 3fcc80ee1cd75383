//! The state file `vxnet-testbed up` leaves for `exec` and `down`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::topology::{Host, STATE_ROOT};

/// File name under [`STATE_ROOT`].
pub const STATE_FILE: &str = "current.json";

/// A testbed left running by `up`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UpState {
    pub prefix: String,
    pub underlay_ns: String,
    pub hosts: Vec<UpHost>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UpHost {
    pub host: Host,
    /// The dataplane's API socket, if one was started.
    pub socket: Option<PathBuf>,
    pub dataplane_pid: Option<u32>,
    /// The control daemon's socket, with `--swarm`.
    #[serde(default)]
    pub control_socket: Option<PathBuf>,
    #[serde(default)]
    pub control_pid: Option<u32>,
}

impl UpState {
    pub fn path() -> PathBuf {
        Path::new(STATE_ROOT).join(STATE_FILE)
    }

    pub fn load() -> Result<Option<UpState>> {
        let p = Self::path();
        match std::fs::read(&p) {
            Ok(bytes) => Ok(Some(
                serde_json::from_slice(&bytes)
                    .with_context(|| format!("parsing {}", p.display()))?,
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
        }
    }

    pub fn save(&self) -> Result<()> {
        std::fs::create_dir_all(STATE_ROOT)?;
        std::fs::write(Self::path(), serde_json::to_vec_pretty(self)?)?;
        Ok(())
    }

    /// Finds a host by "host1", "1" or namespace name.
    pub fn host(&self, name: &str) -> Option<&UpHost> {
        self.hosts
            .iter()
            .find(|h| h.host.name == name || h.host.index.to_string() == name || h.host.ns == name)
    }
}
