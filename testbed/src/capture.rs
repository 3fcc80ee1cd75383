//! Underlay captures with `tshark`, and decoding them with the SAs a
//! dataplane exports (`vxnet dp sa --show-keys`), down to the inner frames.
//!
//! vxnet's encrypted packets are ESP in UDP on the VXLAN port, and the ESP
//! payload is itself a UDP datagram to 4789 carrying VXLAN. tshark must be
//! told two things:
//! - which datagrams on 4789 are ESP: `-d udp.port==4789,udpencap` does not
//!   do, since the inner UDP datagram would be decoded as ESP again; the
//!   small Lua dissector `testbed/tshark/vxnet.lua` ([`VXNET_LUA`]) sorts
//!   4789 by the first word as vxnet does (0 control, 0x08000000 VXLAN, else
//!   ESP) and calls the standard ESP or VXLAN dissector;
//! - the SA table (`uat:esp_sa`), where the AES-GCM key is the 16-byte key
//!   followed by the 4-byte salt.
//!
//! Wireshark's SA table has no extended-sequence-number setting, so it
//! computes the ICV without the high 32 bits and cannot verify it;
//! decryption (counter mode keyed by salt and IV) does not depend on that,
//! so the inner frames decode all the same.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::process::{self, BackgroundProc};
use crate::scenario::VXLAN_PORT;
use crate::topology::Testbed;
use crate::vxnet::SaInfo;

/// The Lua dissector that routes UDP 4789 to ESP, VXLAN or control.
pub const VXNET_LUA: &str = include_str!("../tshark/vxnet.lua");

/// The capture filter for ESP on the VXLAN port: UDP to 4789 whose first
/// payload word is not zero (zero marks a control message).
pub fn esp_filter(src: &str) -> String {
    format!("src host {src} and udp dst port {VXLAN_PORT} and udp[8:4] != 0")
}

/// One `-o uat:esp_sa:...` value for an exported SA, or `None` if the SA
/// was listed without keys.
pub fn esp_sa_uat(sa: &SaInfo) -> Option<String> {
    let (key, salt) = (sa.key.as_deref()?, sa.salt.as_deref()?);
    let proto = if sa.src.contains(':') { "IPv6" } else { "IPv4" };
    Some(format!(
        "uat:esp_sa:\"{proto}\",\"{}\",\"{}\",\"{}\",\"AES-GCM with 16 octet ICV [RFC4106]\",\"0x{key}{salt}\",\"NULL\",\"\"",
        sa.src, sa.dst, sa.spi
    ))
}

/// The tshark arguments that decode vxnet's ESP with `sas`, given the path
/// of [`VXNET_LUA`] (everything after `tshark -r FILE`).
pub fn decode_args(lua: &Path, sas: &[SaInfo]) -> Vec<String> {
    let mut a = vec![
        "-n".to_string(),
        "-X".to_string(),
        format!("lua_script:{}", lua.display()),
        "-o".to_string(),
        "esp.enable_encryption_decode:TRUE".to_string(),
    ];
    for uat in sas.iter().filter_map(esp_sa_uat) {
        a.extend(["-o".to_string(), uat]);
    }
    a
}

/// A running `tshark -w` capture.
#[derive(Debug)]
pub struct Capture {
    proc: BackgroundProc,
}

impl Capture {
    /// Whether tshark has exited (its `-c` packets captured, or failed).
    pub fn finished(&mut self) -> bool {
        self.proc.exited().is_some()
    }

    /// Waits until tshark has captured its `-c` packets and exited.
    pub fn wait(mut self, timeout: Duration) -> Result<()> {
        let done = process::wait_until(timeout, || self.proc.exited().is_some());
        if !done {
            bail!(
                "tshark did not capture its packets within {timeout:?}; log:\n{}",
                self.proc.log_tail(2000)
            );
        }
        Ok(())
    }
}

impl Testbed {
    /// Starts `tshark` on `iface` in `ns`, writing up to `count` packets
    /// matching the BPF `filter` to `pcap` (libpcap format), and returns once
    /// it is capturing. It stops by itself after `count` packets or 60 s.
    pub fn capture(
        &self,
        ns: &str,
        iface: &str,
        filter: &str,
        count: u32,
        pcap: &Path,
    ) -> Result<Capture> {
        let name = format!("tshark-{ns}-{iface}");
        let log = self.log_path(&name);
        let count_s = count.to_string();
        let pcap_s = pcap.display().to_string();
        let argv = [
            "tshark",
            "-i",
            iface,
            "-n",
            "-q",
            "-F",
            "pcap",
            "-w",
            &pcap_s,
            "-f",
            filter,
            "-c",
            &count_s,
            "-a",
            "duration:60",
        ];
        let mut proc = self.spawn_proc(ns, &name, &argv)?;
        let mut exited = None;
        let started = process::wait_until(Duration::from_secs(20), || {
            if let Some(st) = proc.exited() {
                exited = Some(st);
                return true;
            }
            // "Capture started" comes once dumpcap has the filter attached;
            // tshark prints it even with -q.
            process::log_tail(&log, 4000).contains("Capture started")
        });
        if let Some(st) = exited {
            bail!(
                "tshark exited ({st}) before capturing: {}",
                proc.log_tail(2000)
            );
        }
        if !started {
            bail!("tshark did not start capturing: {}", proc.log_tail(2000));
        }
        Ok(Capture { proc })
    }

    /// Decodes `pcap` with tshark using the exported `sas`; returns one line
    /// per packet (tshark's summary, innermost protocol last).
    pub fn decode_esp(&self, pcap: &Path, sas: &[SaInfo]) -> Result<String> {
        let pcap_s = pcap.display().to_string();
        let lua = self.state_dir().join("vxnet.lua");
        std::fs::write(&lua, VXNET_LUA).with_context(|| format!("writing {}", lua.display()))?;
        let mut argv = vec!["tshark".to_string(), "-r".to_string(), pcap_s];
        argv.extend(decode_args(&lua, sas));
        let out = process::run(None, &argv, Duration::from_secs(60))?
            .check()
            .context("tshark decode")?;
        Ok(out.stdout)
    }

    /// The UDP payloads of the packets in `pcap`, hex, one per line (the
    /// input of `vxnet-testbed inject --from`).
    pub fn udp_payloads_hex(&self, pcap: &Path) -> Result<String> {
        let pcap_s = pcap.display().to_string();
        let out = process::run(
            None,
            &[
                "tshark",
                "-r",
                &pcap_s,
                "-n",
                "-T",
                "fields",
                "-e",
                "udp.payload",
            ],
            Duration::from_secs(60),
        )?
        .check()
        .context("tshark -e udp.payload")?;
        Ok(out.stdout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uat_from_exported_sa() {
        let sa = SaInfo {
            spi: "0x1234abcd".into(),
            direction: "out".into(),
            peer: "192.0.2.12".into(),
            vni: 4097,
            generation: 1,
            packets: 3,
            age_secs: 0.5,
            state: "active".into(),
            src: "192.0.2.11".into(),
            dst: "192.0.2.12".into(),
            key: Some("00112233445566778899aabbccddeeff".into()),
            salt: Some("01020304".into()),
        };
        assert_eq!(
            esp_sa_uat(&sa).unwrap(),
            "uat:esp_sa:\"IPv4\",\"192.0.2.11\",\"192.0.2.12\",\"0x1234abcd\",\
             \"AES-GCM with 16 octet ICV [RFC4106]\",\
             \"0x00112233445566778899aabbccddeeff01020304\",\"NULL\",\"\""
        );
        let args = decode_args(Path::new("/x/vxnet.lua"), std::slice::from_ref(&sa));
        assert!(args.contains(&"lua_script:/x/vxnet.lua".to_string()));
        assert_eq!(
            args.iter().filter(|a| a.starts_with("uat:esp_sa:")).count(),
            1
        );
        let no_keys = SaInfo {
            key: None,
            salt: None,
            ..sa
        };
        assert_eq!(esp_sa_uat(&no_keys), None);
        assert!(esp_filter("192.0.2.11").contains("udp[8:4] != 0"));
    }
}
