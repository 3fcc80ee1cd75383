//! Service requests: `service_set`, `service_del`, `services`,
//! `conntrack`. A service is built (with its Maglev table) here, off the
//! packet path, and published in the forwarding table like any FDB change;
//! flow listings are read from the workers' conntrack tables between their
//! batches.
use super::{Dataplane, R};
use crate::worker::Command;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, PoisonError};
use std::time::Duration;
use vxnet_api::dp::{
    self, BackendInfo, ConntrackEntry, ConntrackReport, FlowProto, FlowState, ServiceInfo,
    ServiceSet,
};
use vxnet_api::{ApiError, ErrorCode};
use vxnet_proto::engine::Engine;
use vxnet_proto::lb::conntrack::{FlowInfo, FlowKind, State};
use vxnet_proto::lb::service::{Backend, MAX_BACKENDS, Service};
use vxnet_proto::wire::Vni;

/// Flows `conntrack` lists when no limit is given.
const DEFAULT_LIMIT: usize = 1000;
/// How long a listing waits for a busy worker.
const WORKER_ANSWER: Duration = Duration::from_secs(2);

impl Dataplane {
    pub(super) fn service_set(&self, spec: ServiceSet) -> R<()> {
        let workers = self.stats.len();
        if workers > 1 {
            return Err(ApiError::precondition(format!(
                "services need a dataplane with one worker (--workers 1); this one runs {workers}: \
                 conntrack is kept per worker, and a reply could reach another worker than its flow's"
            )));
        }
        if spec.backends.len() > MAX_BACKENDS {
            return Err(ApiError::invalid(format!(
                "{} backends; a service has at most {MAX_BACKENDS}",
                spec.backends.len()
            )));
        }
        let backends = {
            let st = self.lock();
            let table = st.fdb.vni(spec.vni);
            spec.backends
                .iter()
                .map(|b| {
                    let known = table.and_then(|t| t.ips.get(&b.ip)).copied();
                    let mac = b.mac.or(known).ok_or_else(|| {
                        ApiError::invalid(format!(
                            "backend {} has no known MAC on VNI {}: give it as IP,MAC, or attach or peer-add that endpoint first",
                            b.ip, spec.vni
                        ))
                    })?;
                    Ok(Backend { ip: b.ip, mac })
                })
                .collect::<R<Vec<_>>>()?
        };
        // The Maglev table is built outside the state lock.
        let service = Service::new(spec.vip, backends, self.cfg.maglev_size)
            .map_err(|e| ApiError::invalid(e.to_string()))?;
        self.edit_fdb(|f| f.set_service(spec.vni, Arc::new(service)))?;
        self.lock()
            .service_owners
            .insert((spec.vni, spec.vip), spec.owner);
        Ok(())
    }

    pub(super) fn service_del(&self, vni: Vni, vip: IpAddr) -> R<()> {
        self.edit_fdb(|f| f.remove_service(vni, vip).map(|_| ()))?;
        self.lock().service_owners.remove(&(vni, vip));
        Ok(())
    }

    /// Services (of `only`, or all), with flows per backend.
    pub(super) fn services(&self, only: Option<Vni>) -> R<Vec<ServiceInfo>> {
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
                    owner: st
                        .service_owners
                        .get(&(vni, s.vip()))
                        .copied()
                        .unwrap_or_default(),
                });
            }
        }
        out.sort_by_key(|s| (s.vni, s.vip));
        Ok(out)
    }

    /// Tracked flows (of `only`, or all), the first `limit` in order.
    pub(super) fn conntrack(&self, only: Option<Vni>, limit: Option<usize>) -> R<ConntrackReport> {
        let mut all: Vec<FlowInfo> = self
            .ask_workers(move |e| {
                e.flows()
                    .filter(|f| only.is_none_or(|o| o.get() == f.reply_vni))
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
    ) -> R<Vec<T>> {
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
                rx.recv_timeout(WORKER_ANSWER).map_err(|_| {
                    ApiError::new(
                        ErrorCode::Timeout,
                        "a worker did not answer in time; try again",
                    )
                })
            })
            .collect()
    }
}

fn entry(f: FlowInfo) -> Option<ConntrackEntry> {
    Some(ConntrackEntry {
        vni: Vni::new(f.reply_vni)?,
        kind: match f.kind {
            FlowKind::Vip => dp::FlowKind::Vip,
            FlowKind::Published => dp::FlowKind::Published,
            FlowKind::Return => dp::FlowKind::Return,
        },
        proto: match f.key.proto {
            6 => FlowProto::Tcp,
            17 => FlowProto::Udp,
            _ => return None,
        },
        client: f.key.src,
        client_port: f.key.sport,
        vip: f.key.dst,
        port: f.key.dport,
        backend: f.backend,
        backend_port: f.backend_port,
        state: match f.state {
            State::SynSent => FlowState::SynSent,
            State::Established => FlowState::Established,
            State::Closing => FlowState::Closing,
            State::Closed => FlowState::Closed,
            State::UdpUnreplied => FlowState::Unreplied,
            State::UdpReplied => FlowState::Replied,
            State::UdpAssured => FlowState::Assured,
        },
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
    use crate::control::Config;
    use vxnet_api::dp::{BackendSpec, Owner, PeerAdd, Request, ServiceDel};
    use vxnet_api::{Response, dp};
    use vxnet_proto::wire::MacAddr;

    /// A dataplane on loopback (an ephemeral port), no TAP, no root.
    fn dataplane(workers: usize) -> Dataplane {
        Dataplane::start(Config {
            workers,
            ..Config::loopback_for_tests()
        })
        .unwrap()
    }

    fn vni() -> Vni {
        Vni::new(4096).unwrap()
    }

    /// The refusal's code and message, or `Ok`.
    fn outcome(r: Response) -> Result<(), (ErrorCode, String)> {
        match r.error {
            None => Ok(()),
            Some(e) => Err((e.code, e.message)),
        }
    }

    fn set(
        dp: &Dataplane,
        vip: &str,
        backends: &[(&str, Option<&str>)],
    ) -> Result<(), (ErrorCode, String)> {
        let spec = ServiceSet {
            vni: vni(),
            vip: vip.parse().unwrap(),
            backends: backends
                .iter()
                .map(|(ip, mac)| BackendSpec {
                    ip: ip.parse().unwrap(),
                    mac: mac.map(|m| m.parse::<MacAddr>().unwrap()),
                })
                .collect(),
            owner: Owner::Control,
        };
        outcome(dp.handle(Request::ServiceSet(spec)))
    }

    fn peer(mac: &str, ip: &str) -> Request {
        Request::PeerAdd(PeerAdd {
            vni: vni(),
            mac: mac.parse().unwrap(),
            ips: vec![ip.parse().unwrap()],
            vtep: "127.0.0.2".parse().unwrap(),
            owner: Owner::User,
        })
    }

    fn del(vip: &str) -> Request {
        Request::ServiceDel(ServiceDel {
            vni: vni(),
            vip: vip.parse().unwrap(),
        })
    }

    #[test]
    fn services_are_validated_listed_and_removed() {
        let dp = dataplane(1);
        outcome(dp.handle(peer("02:42:0a:00:00:03", "10.0.0.3"))).unwrap();
        // Refusals say what to fix, carry a code, and change nothing.
        for (vip, backends, code, want) in [
            (
                "10.0.0.3",
                vec![],
                ErrorCode::AlreadyExists,
                "already used on VNI 4096",
            ),
            (
                "10.0.0.100",
                vec![("10.0.0.9", None)],
                ErrorCode::InvalidArgument,
                "no known MAC",
            ),
            (
                "10.0.0.100",
                vec![("10.0.0.3", Some("02:42:0a:00:00:09"))],
                ErrorCode::InvalidArgument,
                "knows 10.0.0.3 at 02:42:0a:00:00:03",
            ),
            (
                "10.0.0.100",
                vec![("10.0.0.3", None), ("10.0.0.3", None)],
                ErrorCode::InvalidArgument,
                "listed twice",
            ),
            (
                "10.0.0.100",
                vec![("fd00::3", Some("02:42:0a:00:00:03"))],
                ErrorCode::InvalidArgument,
                "address families",
            ),
            (
                "255.255.255.255",
                vec![],
                ErrorCode::InvalidArgument,
                "not a unicast address",
            ),
        ] {
            let (c, e) = set(&dp, vip, &backends).unwrap_err();
            assert!(e.contains(want), "{vip} {backends:?}: {e}");
            assert_eq!(c, code, "{e}");
        }
        assert!(dp.services(None).unwrap().is_empty());
        // The MAC comes from the FDB when not given.
        set(
            &dp,
            "10.0.0.100",
            &[("10.0.0.3", None), ("10.0.0.4", Some("02:42:0a:00:00:04"))],
        )
        .unwrap();
        let list = Response::of::<dp::Services>(dp.services(None))
            .decode::<dp::Services>()
            .unwrap();
        assert_eq!(list.len(), 1);
        let s = &list[0];
        assert_eq!(s.mac.to_string(), "06:56:0a:00:00:64");
        assert_eq!((s.table_size, s.owner), (251, Owner::Control));
        let macs: Vec<String> = s.backends.iter().map(|b| b.mac.to_string()).collect();
        assert_eq!(macs, ["02:42:0a:00:00:03", "02:42:0a:00:00:04"]);
        assert!(s.backends.iter().all(|b| b.flows == 0));
        // An endpoint may not take the VIP now.
        let (c, e) = outcome(dp.handle(peer("02:42:0a:00:00:05", "10.0.0.100"))).unwrap_err();
        assert!(e.contains("VIP") && c == ErrorCode::AlreadyExists, "{e}");
        let ct = dp.conntrack(None, None).unwrap();
        assert_eq!((ct.total, ct.entries.len()), (0, 0));
        outcome(dp.handle(del("10.0.0.100"))).unwrap();
        let (c, e) = outcome(dp.handle(del("10.0.0.100"))).unwrap_err();
        assert_eq!(c, ErrorCode::NotFound);
        assert!(e.contains("no service has VIP 10.0.0.100"), "{e}");
        dp.shutdown();
    }

    /// A network with a service is not deleted under it: refused with what
    /// to remove first, and the service stays; once it is gone, the
    /// network goes.
    #[test]
    fn a_network_with_services_is_not_deleted() {
        let dp = dataplane(1);
        outcome(dp.handle(peer("02:42:0a:00:00:03", "10.0.0.3"))).unwrap();
        set(&dp, "10.0.0.100", &[("10.0.0.3", None)]).unwrap();
        let net_del = || dp.handle(Request::NetworkDel(dp::NetworkDel { vni: vni() }));
        let (c, e) = outcome(net_del()).unwrap_err();
        assert_eq!(c, ErrorCode::FailedPrecondition, "{e}");
        assert!(e.contains("service del --vni 4096 --vip 10.0.0.100"), "{e}");
        assert_eq!(dp.services(None).unwrap().len(), 1);
        outcome(dp.handle(del("10.0.0.100"))).unwrap();
        outcome(net_del()).unwrap();
        assert!(dp.services(None).unwrap().is_empty());
        dp.shutdown();
    }

    #[test]
    fn more_than_one_worker_is_refused() {
        let dp = dataplane(2);
        let (c, e) = set(&dp, "10.0.0.100", &[]).unwrap_err();
        assert!(e.contains("--workers 1"), "{e}");
        assert_eq!(c, ErrorCode::FailedPrecondition);
        assert!(dp.services(None).unwrap().is_empty());
        dp.shutdown();
    }
}
