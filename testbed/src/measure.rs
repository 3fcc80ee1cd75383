//! Traffic between namespaces: ping (reachability, RTT) and iperf3 (TCP
//! throughput), with parsers for their output kept pure and unit-tested.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::process::{self, BackgroundProc, CmdOutput};
use crate::topology::Testbed;

/// The iperf3 port used by the testbed.
pub const IPERF_PORT: u16 = 5201;

/// One ping run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PingResult {
    pub transmitted: u32,
    pub received: u32,
    /// Round-trip times of the replies, in milliseconds.
    pub rtts_ms: Vec<f64>,
}

impl PingResult {
    pub fn avg_ms(&self) -> Option<f64> {
        if self.rtts_ms.is_empty() {
            return None;
        }
        Some(self.rtts_ms.iter().sum::<f64>() / self.rtts_ms.len() as f64)
    }

    /// Mean absolute deviation as ping's "mdev" reports it (standard deviation).
    pub fn mdev_ms(&self) -> Option<f64> {
        let avg = self.avg_ms()?;
        let var =
            self.rtts_ms.iter().map(|r| (r - avg).powi(2)).sum::<f64>() / self.rtts_ms.len() as f64;
        Some(var.sqrt())
    }

    /// The 99th percentile (nearest rank).
    pub fn p99_ms(&self) -> Option<f64> {
        if self.rtts_ms.is_empty() {
            return None;
        }
        let mut v = self.rtts_ms.clone();
        v.sort_by(f64::total_cmp);
        let rank = ((v.len() as f64) * 0.99).ceil() as usize;
        v.get(rank.saturating_sub(1)).copied()
    }
}

/// Parses iputils ping output: the per-reply `time=X ms` lines and the
/// `N packets transmitted, M received` summary.
pub fn parse_ping(out: &str) -> Result<PingResult> {
    let mut r = PingResult::default();
    let mut summary = false;
    for line in out.lines() {
        if let Some(pos) = line.find("time=") {
            let rest = line.get(pos + 5..).unwrap_or("");
            let num: String = rest
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.')
                .collect();
            if let Ok(v) = num.parse::<f64>() {
                r.rtts_ms.push(v);
            }
        }
        if line.contains("packets transmitted") {
            summary = true;
            let nums: Vec<u32> = line
                .split(',')
                .filter_map(|part| part.split_whitespace().next()?.parse().ok())
                .collect();
            r.transmitted = nums.first().copied().unwrap_or(0);
            r.received = nums.get(1).copied().unwrap_or(0);
        }
    }
    if !summary {
        bail!("no ping summary in output: {out}");
    }
    Ok(r)
}

/// One iperf3 TCP run, from the client's `-J` report.
#[derive(Debug, Clone, Default, Serialize)]
pub struct IperfResult {
    pub sent_bytes: u64,
    pub received_bytes: u64,
    /// Throughput measured at the receiver, bits per second.
    pub bits_per_second: f64,
    pub retransmits: u64,
    pub seconds: f64,
}

impl IperfResult {
    pub fn gbit_per_second(&self) -> f64 {
        self.bits_per_second / 1e9
    }
}

/// Parses `iperf3 -c ... -J` output.
pub fn parse_iperf(json: &str) -> Result<IperfResult> {
    let v: serde_json::Value =
        serde_json::from_str(json).with_context(|| format!("iperf3 JSON: {json}"))?;
    if let Some(err) = v.get("error").and_then(|e| e.as_str()) {
        bail!("iperf3: {err}");
    }
    let end = v.get("end").context("iperf3 JSON has no `end`")?;
    let sent = end.get("sum_sent").context("no end.sum_sent")?;
    let recv = end.get("sum_received").context("no end.sum_received")?;
    let num = |o: &serde_json::Value, k: &str| o.get(k).and_then(|x| x.as_f64()).unwrap_or(0.0);
    Ok(IperfResult {
        sent_bytes: num(sent, "bytes") as u64,
        received_bytes: num(recv, "bytes") as u64,
        bits_per_second: num(recv, "bits_per_second"),
        retransmits: num(sent, "retransmits") as u64,
        seconds: num(recv, "seconds"),
    })
}

impl Testbed {
    /// Pings `dst` from `ns`: `count` echo requests, `interval` apart, each
    /// with `size` bytes of payload; `dont_fragment` sets `-M do`. Returns the
    /// parsed result whatever the loss (check `received`).
    pub fn ping(
        &self,
        ns: &str,
        dst: &str,
        count: u32,
        interval: Duration,
        size: Option<u32>,
        dont_fragment: bool,
    ) -> Result<PingResult> {
        let count_s = count.to_string();
        let interval_s = format!("{:.3}", interval.as_secs_f64());
        let mut argv = vec!["ping", "-n", "-c", &count_s, "-i", &interval_s, "-W", "2"];
        let size_s;
        if let Some(s) = size {
            size_s = s.to_string();
            argv.extend(["-s", &size_s]);
        }
        if dont_fragment {
            argv.extend(["-M", "do"]);
        }
        argv.push(dst);
        let timeout = interval * count + Duration::from_secs(15);
        let out = self.exec_timeout(ns, &argv, timeout)?;
        parse_ping(&out.stdout).with_context(|| format!("stderr: {}", out.stderr))
    }

    /// Pings until one reply arrives (ARP/ND and FDB warm-up), then requires
    /// `count` of `count` replies. A `size` also sets DF (`-M do`): MTU tests
    /// must not pass by fragmenting. Errors with the output if either fails.
    pub fn ping_ok(
        &self,
        ns: &str,
        dst: &str,
        count: u32,
        size: Option<u32>,
    ) -> Result<PingResult> {
        self.wait_reachable(ns, dst, Duration::from_secs(10))?;
        let r = self.ping(
            ns,
            dst,
            count,
            Duration::from_millis(20),
            size,
            size.is_some(),
        )?;
        if r.received != count {
            bail!(
                "ping {dst} from {ns} (size {size:?}): {}/{} replies",
                r.received,
                count
            );
        }
        Ok(r)
    }

    /// Polls with single pings until `dst` answers from `ns`.
    pub fn wait_reachable(&self, ns: &str, dst: &str, timeout: Duration) -> Result<()> {
        let mut last = String::new();
        let ok = process::wait_until(timeout, || {
            match self.exec_timeout(
                ns,
                &["ping", "-n", "-c", "1", "-W", "1", dst],
                Duration::from_secs(5),
            ) {
                Ok(out) if out.success() => true,
                Ok(out) => {
                    last = out.combined();
                    false
                }
                Err(e) => {
                    last = format!("{e:#}");
                    false
                }
            }
        });
        if !ok {
            bail!("{dst} not reachable from {ns} within {timeout:?}: {last}");
        }
        Ok(())
    }

    /// Runs one iperf3 TCP test: a server in `server_ns` bound to `server_ip`
    /// and a client in `client_ns` for `seconds`; `reverse` makes the server
    /// send. The server is stopped afterwards.
    pub fn iperf(
        &self,
        server_ns: &str,
        server_ip: &str,
        client_ns: &str,
        seconds: u32,
        reverse: bool,
    ) -> Result<IperfResult> {
        let _server = self.iperf_server(server_ns, server_ip)?;
        let extra: &[&str] = if reverse { &["-R"] } else { &[] };
        let out = self.iperf_client(client_ns, server_ip, seconds, extra)?;
        parse_iperf(&out.stdout).with_context(|| format!("iperf3 client stderr: {}", out.stderr))
    }

    /// Starts an iperf3 server in `server_ns` bound to `server_ip` and waits
    /// until it listens; dropping the returned process stops it.
    pub fn iperf_server(&self, server_ns: &str, server_ip: &str) -> Result<BackgroundProc> {
        let port = IPERF_PORT.to_string();
        let server = self.spawn_proc(
            server_ns,
            &format!("iperf3-server-{server_ns}"),
            &["iperf3", "-s", "-B", server_ip, "-p", &port],
        )?;
        let listening = process::wait_until(Duration::from_secs(10), || {
            self.exec_timeout(
                server_ns,
                &["ss", "-Hltn", &format!("sport = :{port}")],
                Duration::from_secs(5),
            )
            .is_ok_and(|o| !o.stdout.trim().is_empty())
        });
        if !listening {
            bail!("iperf3 server in {server_ns} did not listen on {port}");
        }
        Ok(server)
    }

    /// Runs `iperf3 -c server_ip -t seconds -J <extra>` in `client_ns`
    /// against a server from [`Testbed::iperf_server`]; returns its output
    /// (exit status not checked: the JSON says what went wrong).
    pub fn iperf_client(
        &self,
        client_ns: &str,
        server_ip: &str,
        seconds: u32,
        extra: &[&str],
    ) -> Result<CmdOutput> {
        let port = IPERF_PORT.to_string();
        let secs = seconds.to_string();
        let mut argv = vec![
            "iperf3",
            "-c",
            server_ip,
            "-p",
            &port,
            "-t",
            &secs,
            "-J",
            "--connect-timeout",
            "5000",
        ];
        argv.extend(extra);
        self.exec_timeout(
            client_ns,
            &argv,
            Duration::from_secs(u64::from(seconds) + 30),
        )
    }
}

/// Parses iperf3 `-J` output, failing on its `error` field.
pub fn iperf_json(json: &str) -> Result<serde_json::Value> {
    let v: serde_json::Value =
        serde_json::from_str(json).with_context(|| format!("iperf3 JSON: {json}"))?;
    if let Some(err) = v.get("error").and_then(|e| e.as_str()) {
        bail!("iperf3: {err}");
    }
    Ok(v)
}

/// A UDP run's `(packets, lost_packets)` as the receiver counted them
/// (`end.sum_received`, else `end.sum`).
pub fn iperf_udp_loss(v: &serde_json::Value) -> Result<(u64, u64)> {
    let end = v.get("end").context("iperf3 JSON has no `end`")?;
    let sum = end
        .get("sum_received")
        .filter(|s| s.get("lost_packets").is_some())
        .or_else(|| end.get("sum"))
        .context("no end.sum_received or end.sum")?;
    let num = |k: &str| sum.get(k).and_then(serde_json::Value::as_u64);
    match (num("packets"), num("lost_packets")) {
        (Some(p), Some(l)) => Ok((p, l)),
        _ => bail!("no packets/lost_packets in {sum}"),
    }
}

/// Bytes per reporting interval (`intervals[].sum.bytes`).
pub fn iperf_interval_bytes(v: &serde_json::Value) -> Vec<u64> {
    v.get("intervals")
        .and_then(|i| i.as_array())
        .map(|a| {
            a.iter()
                .map(|i| {
                    i.get("sum")
                        .and_then(|s| s.get("bytes"))
                        .and_then(serde_json::Value::as_u64)
                        .unwrap_or(0)
                })
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PING: &str = "PING 10.44.0.3 (10.44.0.3) 56(84) bytes of data.
64 bytes from 10.44.0.3: icmp_seq=1 ttl=64 time=0.101 ms
64 bytes from 10.44.0.3: icmp_seq=2 ttl=64 time=0.050 ms
64 bytes from 10.44.0.3: icmp_seq=3 ttl=64 time=1.20 ms

--- 10.44.0.3 ping statistics ---
4 packets transmitted, 3 received, 25% packet loss, time 2003ms
rtt min/avg/max/mdev = 0.050/0.450/1.200/0.530 ms
";

    #[test]
    fn ping_parse() {
        let r = parse_ping(PING).unwrap();
        assert_eq!(r.transmitted, 4);
        assert_eq!(r.received, 3);
        assert_eq!(r.rtts_ms, vec![0.101, 0.050, 1.20]);
        let avg = r.avg_ms().unwrap();
        assert!((avg - 0.45033).abs() < 1e-3, "{avg}");
        assert_eq!(r.p99_ms(), Some(1.20));
        assert!(r.mdev_ms().unwrap() > 0.5);
    }

    #[test]
    fn ping_parse_total_loss_and_garbage() {
        let r = parse_ping(
            "--- x ping statistics ---\n5 packets transmitted, 0 received, +5 errors, 100% packet loss\n",
        )
        .unwrap();
        assert_eq!((r.transmitted, r.received), (5, 0));
        assert_eq!(r.avg_ms(), None);
        assert_eq!(r.p99_ms(), None);
        assert!(parse_ping("ping: connect: Network is unreachable").is_err());
    }

    #[test]
    fn iperf_parse() {
        let j = r#"{"start":{},"intervals":[],"end":{
            "sum_sent":{"seconds":10.0,"bytes":12500000000,"bits_per_second":1.0e10,"retransmits":42},
            "sum_received":{"seconds":10.04,"bytes":12400000000,"bits_per_second":9.88e9}}}"#;
        let r = parse_iperf(j).unwrap();
        assert_eq!(r.sent_bytes, 12_500_000_000);
        assert_eq!(r.received_bytes, 12_400_000_000);
        assert_eq!(r.retransmits, 42);
        assert!((r.gbit_per_second() - 9.88).abs() < 1e-9);
        assert!(
            parse_iperf(r#"{"start":{},"end":{},"error":"unable to connect"}"#)
                .unwrap_err()
                .to_string()
                .contains("unable to connect")
        );
        assert!(parse_iperf("not json").is_err());
    }

    #[test]
    fn iperf_udp_and_intervals() {
        let j = iperf_json(
            r#"{"intervals":[{"sum":{"bytes":100}},{"sum":{"bytes":0}},{"sum":{"bytes":7}}],
                "end":{"sum":{"packets":10,"lost_packets":0},
                       "sum_received":{"packets":1000,"lost_packets":3}}}"#,
        )
        .unwrap();
        assert_eq!(iperf_udp_loss(&j).unwrap(), (1000, 3));
        assert_eq!(iperf_interval_bytes(&j), vec![100, 0, 7]);
        let old = iperf_json(r#"{"end":{"sum":{"packets":10,"lost_packets":2}}}"#).unwrap();
        assert_eq!(iperf_udp_loss(&old).unwrap(), (10, 2));
        assert!(iperf_udp_loss(&iperf_json(r#"{"end":{}}"#).unwrap()).is_err());
        assert!(iperf_json(r#"{"error":"busy"}"#).is_err());
        assert!(iperf_interval_bytes(&iperf_json("{}").unwrap()).is_empty());
    }
}
