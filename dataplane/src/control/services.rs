//! Service requests: `service_set`, `service_del`, `services`,
//! `conntrack`. A service is built (with its Maglev table) here, off the
//! packet path, and published in the forwarding table like any FDB change;
//! flow listings are read from the workers' conntrack tables between their
//! batches.
use super::Dataplane;
use crate::api::{BackendInfo, ConntrackEntry, ConntrackReport, ServiceInfo, ServiceSpec};
use crate::worker::Command;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, PoisonError};
use std::time::Duration;
use vxnet_proto::engine::Engine;
use vxnet_proto::lb::conntrack::FlowInfo;
use vxnet_proto::lb::service::{Backend, MAX_BACKENDS, Service};
use vxnet_proto::wire::Vni;

/// Flows `conntrack` lists when no limit is given.
const DEFAULT_LIMIT: usize = 1000;
/// How long a listing waits for a busy worker.
const WORKER_ANSWER: Duration = Duration::from_secs(2);

impl Dataplane {
    pub(super) fn service_set(&self, spec: ServiceSpec) -> Result<(), String> {
        let workers = self.stats.len();
        if workers > 1 {
            return Err(format!(
                "services need a dataplane with one worker (--workers 1); this one runs {workers}: \
                 conntrack is kept per worker, and a reply could reach another worker than its flow's"
            ));
        }
        if spec.backends.len() > MAX_BACKENDS {
            return Err(format!(
                "{} backends; a service has at most {MAX_BACKENDS}",
                spec.backends.len()
            ));
        }
        let backends = {
            let st = self.lock();
            let table = st.fdb.vni(spec.vni);
            spec.backends
                .iter()
                .map(|b| {
                    let known = table.and_then(|t| t.ips.get(&b.ip)).copied();
                    let mac = b.mac.or(known).ok_or_else(|| {
                        format!(
                            "backend {} has no known MAC on VNI {}: give it as IP,MAC, or attach or peer-add that endpoint first",
                            b.ip, spec.vni
                        )
                    })?;
                    Ok(Backend { ip: b.ip, mac })
                })
                .collect::<Result<Vec<_>, String>>()?
        };
        // The Maglev table is built outside the state lock.
        let service =
            Service::new(spec.vip, backends, self.cfg.maglev_size).map_err(|e| e.to_string())?;
        self.edit_fdb(|f| f.set_service(spec.vni, Arc::new(service)))
    }

    pub(super) fn service_del(&self, vni: Vni, vip: IpAddr) -> Result<(), String> {
        self.edit_fdb(|f| f.remove_service(vni, vip).map(|_| ()))
    }

    /// Services (of `only`, or all), with flows per backend.
    pub(super) fn services(&self, only: Option<Vni>) -> Result<Vec<ServiceInfo>, String> {
        let counts: Vec<HashMap<(u32, IpAddr, IpAddr), usize>> = self.ask_workers(|e| {
            let mut m = HashMap::new();
            for f in e.flows() {
                *m.entry((f.key.vni, f.key.dst, f.backend)).or_default() += 1;
            }
            m
        })?;
        let flows = |vni: Vni, vip: IpAddr, backend: IpAddr| -> usize {
            counts
                .iter()
                .filter_map(|m| m.get(&(vni.get(), vip, backend)))
                .sum()
        };
        let st = self.lock();
        let mut out = Vec::new();
        for (vni, t) in st.fdb.vnis().filter(|(v, _)| only.is_none_or(|o| o == *v)) {
            for s in t.services.values() {
                out.push(ServiceInfo {
                    vni,
                    vip: s.vip(),
                    mac: s.mac(),
                    table_size: s.table_size(),
                    backends: s
                        .backends()
                        .iter()
                        .map(|b| BackendInfo {
                            ip: b.ip,
                            mac: b.mac,
                            flows: flows(vni, s.vip(), b.ip),
                        })
                        .collect(),
                });
            }
        }
        out.sort_by_key(|s| (s.vni, s.vip));
        Ok(out)
    }

    /// Tracked flows (of `only`, or all), the first `limit` in order.
    pub(super) fn conntrack(
        &self,
        only: Option<Vni>,
        limit: Option<usize>,
    ) -> Result<ConntrackReport, String> {
        let mut all: Vec<FlowInfo> = self
            .ask_workers(move |e| {
                e.flows()
                    .filter(|f| only.is_none_or(|o| o.get() == f.key.vni))
                    .collect::<Vec<_>>()
            })?
            .into_iter()
            .flatten()
            .collect();
        all.sort_by_key(|f| {
            (
                f.key.vni,
                f.key.dst,
                f.key.dport,
                f.key.src,
                f.key.sport,
                f.key.proto,
            )
        });
        let total = all.len();
        let entries = all
            .into_iter()
            .take(limit.unwrap_or(DEFAULT_LIMIT))
            .filter_map(entry)
            .collect();
        Ok(ConntrackReport { total, entries })
    }

    /// Runs `f` on every worker's engine between its batches and collects
    /// the answers.
    fn ask_workers<T: Send + 'static>(
        &self,
        f: impl Fn(&Engine) -> T + Send + Sync + 'static,
    ) -> Result<Vec<T>, String> {
        let f = Arc::new(f);
        let workers = self.workers.lock().unwrap_or_else(PoisonError::into_inner);
        let (tx, rx) = crossbeam_channel::bounded(workers.len());
        for w in workers.iter() {
            let (f, tx) = (Arc::clone(&f), tx.clone());
            w.send(Command::Inspect(Box::new(move |e| {
                let _ = tx.send(f(e));
            })));
        }
        (0..workers.len())
            .map(|_| {
                rx.recv_timeout(WORKER_ANSWER)
                    .map_err(|_| "a worker did not answer in time; try again".to_string())
            })
            .collect()
    }
}

fn entry(f: FlowInfo) -> Option<ConntrackEntry> {
    Some(ConntrackEntry {
        vni: Vni::new(f.key.vni)?,
        proto: match f.key.proto {
            6 => "tcp".into(),
            17 => "udp".into(),
            p => p.to_string(),
        },
        client: f.key.src,
        client_port: f.key.sport,
        vip: f.key.dst,
        port: f.key.dport,
        backend: f.backend,
        state: f.state.name().into(),
        age_secs: f.age.as_secs_f64(),
        idle_secs: f.idle.as_secs_f64(),
        expires_secs: f.expires_in.as_secs_f64(),
        packets_out: f.packets[0],
        packets_in: f.packets[1],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{BackendSpec, Peer, Request};
    use crate::control::Config;
    use crate::worker::PollMode;
    use vxnet_proto::crypto::OsRng;
    use vxnet_proto::crypto::keys::StaticKeypair;
    use vxnet_proto::lb::conntrack::ConntrackConfig;
    use vxnet_proto::wire::MacAddr;

    /// A dataplane on loopback (an ephemeral port), no TAP, no root.
    fn dataplane(workers: usize) -> Dataplane {
        Dataplane::start(Config {
            local_vtep: "127.0.0.1".parse().unwrap(),
            port: 0,
            workers,
            src_ports: 1,
            poll: PollMode::Interrupt,
            spin: Duration::ZERO,
            default_mtu: 1450,
            keypair: Arc::new(StaticKeypair::generate(&mut OsRng)),
            rekey_interval: Duration::from_secs(3600),
            allow_key_export: false,
            conntrack: ConntrackConfig {
                capacity: 1024,
                ..ConntrackConfig::default()
            },
            maglev_size: 251,
        })
        .unwrap()
    }

    fn vni() -> Vni {
        Vni::new(4096).unwrap()
    }

    fn set(dp: &Dataplane, vip: &str, backends: &[(&str, Option<&str>)]) -> Result<(), String> {
        let spec = ServiceSpec {
            vni: vni(),
            vip: vip.parse().unwrap(),
            backends: backends
                .iter()
                .map(|(ip, mac)| BackendSpec {
                    ip: ip.parse().unwrap(),
                    mac: mac.map(|m| m.parse::<MacAddr>().unwrap()),
                })
                .collect(),
        };
        let r = dp.handle(Request::ServiceSet(spec));
        if r.ok {
            Ok(())
        } else {
            Err(r.error.unwrap_or_default())
        }
    }

    #[test]
    fn services_are_validated_listed_and_removed() {
        let dp = dataplane(1);
        let peer = Peer {
            vni: vni(),
            mac: "02:42:0a:00:00:03".parse().unwrap(),
            ips: vec!["10.0.0.3".parse().unwrap()],
            vtep: "127.0.0.2".parse().unwrap(),
        };
        assert!(dp.handle(Request::PeerAdd(peer)).ok);
        // Refusals say what to fix, and change nothing.
        for (vip, backends, want) in [
            ("10.0.0.3", vec![], "already used on VNI 4096"),
            ("10.0.0.100", vec![("10.0.0.9", None)], "no known MAC"),
            (
                "10.0.0.100",
                vec![("10.0.0.3", Some("02:42:0a:00:00:09"))],
                "knows 10.0.0.3 at 02:42:0a:00:00:03",
            ),
            (
                "10.0.0.100",
                vec![("10.0.0.3", None), ("10.0.0.3", None)],
                "listed twice",
            ),
            (
                "10.0.0.100",
                vec![("fd00::3", Some("02:42:0a:00:00:03"))],
                "address families",
            ),
            ("255.255.255.255", vec![], "not a unicast address"),
        ] {
            let e = set(&dp, vip, &backends).unwrap_err();
            assert!(e.contains(want), "{vip} {backends:?}: {e}");
        }
        assert!(dp.services(None).unwrap().is_empty());
        // The MAC comes from the FDB when not given.
        set(
            &dp,
            "10.0.0.100",
            &[("10.0.0.3", None), ("10.0.0.4", Some("02:42:0a:00:00:04"))],
        )
        .unwrap();
        let list = dp.services(None).unwrap();
        assert_eq!(list.len(), 1);
        let s = &list[0];
        assert_eq!(s.mac.to_string(), "06:56:0a:00:00:64");
        assert_eq!(s.table_size, 251);
        let macs: Vec<String> = s.backends.iter().map(|b| b.mac.to_string()).collect();
        assert_eq!(macs, ["02:42:0a:00:00:03", "02:42:0a:00:00:04"]);
        assert!(s.backends.iter().all(|b| b.flows == 0));
        // An endpoint may not take the VIP now.
        let clash = Peer {
            vni: vni(),
            mac: "02:42:0a:00:00:05".parse().unwrap(),
            ips: vec!["10.0.0.100".parse().unwrap()],
            vtep: "127.0.0.2".parse().unwrap(),
        };
        let r = dp.handle(Request::PeerAdd(clash));
        assert!(!r.ok && r.error.unwrap_or_default().contains("VIP"));
        let ct = dp.conntrack(None, None).unwrap();
        assert_eq!((ct.total, ct.entries.len()), (0, 0));
        assert!(
            dp.handle(Request::ServiceDel {
                vni: vni(),
                vip: "10.0.0.100".parse().unwrap()
            })
            .ok
        );
        let r = dp.handle(Request::ServiceDel {
            vni: vni(),
            vip: "10.0.0.100".parse().unwrap(),
        });
        assert!(
            r.error
                .unwrap_or_default()
                .contains("no service has VIP 10.0.0.100")
        );
        dp.shutdown();
    }

    #[test]
    fn more_than_one_worker_is_refused() {
        let dp = dataplane(2);
        let e = set(&dp, "10.0.0.100", &[]).unwrap_err();
        assert!(e.contains("--workers 1"), "{e}");
        assert!(dp.services(None).unwrap().is_empty());
        dp.shutdown();
    }
}
