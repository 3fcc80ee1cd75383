//! `capture` and `live_trace`: installs taps in every worker (see
//! `crate::observe`) and streams what they send back, bounded in count,
//! bytes and time; the end, or a client that goes away, takes the taps
//! out again.
use super::{Dataplane, R};
use crate::observe::{
    CaptureFilter, CaptureTap, LiveFilter, LiveTap, QUEUE, StreamState, vteps_of,
};
use crate::worker::{Command, Commander};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use vxnet_api::observe::{
    Capture, CaptureMsg, LiveMsg, LiveTrace, MAX_CAPTURE_BYTES, MAX_COUNT, MAX_DURATION_MS,
    MAX_SNAPLEN, MIN_SNAPLEN, StreamEnd,
};
use vxnet_api::server::{Reply, STREAM_IDLE_CHECK};
use vxnet_api::{ApiError, ErrorCode};
use vxnet_api::{Response, Vni};
use vxnet_proto::engine::live::LiveSampler;
use vxnet_proto::fdb::PortId;
use vxnet_proto::wire::MacAddr;

const DEFAULT_COUNT: u64 = 1000;
const DEFAULT_DURATION_MS: u64 = 60_000;
const DEFAULT_MAX_BYTES: u64 = 64 << 20;
const DEFAULT_SAMPLE: u32 = 64;

impl Dataplane {
    /// Answers a request that may stream (the others through `handle`).
    pub fn handle_reply(&self, req: vxnet_api::dp::Request) -> Reply {
        use vxnet_api::dp::Request;
        let r = match req {
            Request::Capture(c) => self.capture(c),
            Request::LiveTrace(l) => self.live_trace(l),
            other => return Reply::One(self.handle(other)),
        };
        r.unwrap_or_else(|e| Reply::One(Response::err(e)))
    }

    fn commanders(&self) -> Vec<Commander> {
        self.workers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|w| w.commander())
            .collect()
    }

    fn capture(&self, c: Capture) -> R<Reply> {
        let (count, duration) = bounds(c.count, c.duration_ms)?;
        let max_bytes = c.max_bytes.unwrap_or(DEFAULT_MAX_BYTES);
        if max_bytes == 0 || max_bytes > MAX_CAPTURE_BYTES {
            return Err(ApiError::invalid(format!(
                "max_bytes {max_bytes} is outside 1..={MAX_CAPTURE_BYTES}"
            )));
        }
        let snaplen = c.snaplen.unwrap_or(65_535);
        if !(MIN_SNAPLEN..=MAX_SNAPLEN).contains(&snaplen) {
            return Err(ApiError::invalid(format!(
                "snaplen {snaplen} is outside {MIN_SNAPLEN}..={MAX_SNAPLEN}"
            )));
        }
        if !c.inner && !c.outer {
            return Err(ApiError::invalid(
                "capture the inner view, the outer view or both",
            ));
        }
        let filter = {
            let st = self.lock();
            if let Some(v) = c.vni {
                known_vni(&st, v)?;
            }
            let (ports, macs) = local_endpoints(&st, &c.endpoints, c.vni)?;
            CaptureFilter {
                vni: c.vni,
                ports,
                macs,
                vteps: c.vni.map(|v| vteps_of(&st.fdb, v)).unwrap_or_default(),
                inner: c.inner,
                outer: c.outer,
                snaplen: snaplen as usize,
            }
        };
        let slot = Slot::take(&self.capturing, "a capture", duration)?;
        let local = SocketAddr::new(self.cfg.local_vtep, self.cfg.port);
        let mut stream = Stream::start(
            slot,
            self.commanders(),
            |tx, state| {
                Command::Capture(Some(Box::new(CaptureTap {
                    filter: filter.clone(),
                    tx,
                    state,
                    local,
                })))
            },
            |w: &Commander| w.send(Command::Capture(None)),
            count,
        );
        let local_vtep = self.cfg.local_vtep;
        let mut bytes = 0u64;
        Ok(Reply::Stream(Box::new(std::iter::from_fn(move || {
            if !stream.started {
                stream.started = true;
                return Some(Some(Response::ok(CaptureMsg::Start { local_vtep })));
            }
            if bytes >= max_bytes && !stream.ended {
                return Some(Some(Response::ok(CaptureMsg::End(stream.end("bytes")))));
            }
            Some(match stream.next_item()? {
                Next::Item(r) => {
                    bytes += r.data.0.len() as u64;
                    Some(Response::ok(CaptureMsg::Record(r)))
                }
                Next::Idle => None,
                Next::End(end) => Some(Response::ok(CaptureMsg::End(end))),
            })
        }))))
    }

    fn live_trace(&self, l: LiveTrace) -> R<Reply> {
        let (count, duration) = bounds(l.count, l.duration_ms)?;
        let every = l.sample.unwrap_or(DEFAULT_SAMPLE);
        let every = if l.drops { 0 } else { every };
        let ports = {
            let st = self.lock();
            if let Some(v) = l.vni {
                known_vni(&st, v)?;
            }
            local_endpoints(&st, &l.endpoints, l.vni)?.0
        };
        let slot = Slot::take(&self.live_tracing, "a live trace", duration)?;
        let host: IpAddr = self.cfg.local_vtep;
        let filter = LiveFilter {
            vni: l.vni,
            endpoints: l.endpoints,
            ports,
            addr: l.addr,
            port: l.port,
            proto: l.proto,
            drops: l.drops,
        };
        let mut stream = Stream::start(
            slot,
            self.commanders(),
            |tx, state| {
                Command::Live(Some(Box::new(LiveTap {
                    sampler: LiveSampler::new(every),
                    filter: filter.clone(),
                    tx,
                    state,
                    host,
                })))
            },
            |w: &Commander| w.send(Command::Live(None)),
            count,
        );
        Ok(Reply::Stream(Box::new(std::iter::from_fn(move || {
            if !stream.started {
                stream.started = true;
                return Some(Some(Response::ok(LiveMsg::Start { local_vtep: host })));
            }
            Some(match stream.next_item()? {
                Next::Item(e) => Some(Response::ok(LiveMsg::Event(e))),
                Next::Idle => None,
                Next::End(end) => Some(Response::ok(LiveMsg::End(end))),
            })
        }))))
    }
}

/// The TAPs and MACs of the local endpoints with addresses `ips` (on
/// `vni` if given); `not_found` for an address no local endpoint has.
fn local_endpoints(
    st: &super::State,
    ips: &[IpAddr],
    vni: Option<Vni>,
) -> R<(Vec<PortId>, Vec<MacAddr>)> {
    let mut ports = Vec::new();
    let mut macs = Vec::new();
    for ip in ips {
        let e = st
            .endpoints
            .values()
            .find(|e| {
                e.info.ips.iter().any(|n| n.addr() == *ip) && vni.is_none_or(|v| v == e.info.vni)
            })
            .ok_or_else(|| {
                ApiError::not_found(format!(
                    "no local endpoint has address {ip}; see `vxnet dp endpoints`"
                ))
            })?;
        if !ports.contains(&e.port) {
            ports.push(e.port);
            macs.push(e.info.mac);
        }
    }
    Ok((ports, macs))
}

/// The count and duration a stream is bounded by.
fn bounds(count: Option<u64>, duration_ms: Option<u64>) -> R<(u64, Duration)> {
    let count = count.unwrap_or(DEFAULT_COUNT);
    let ms = duration_ms.unwrap_or(DEFAULT_DURATION_MS);
    if count == 0 || count > MAX_COUNT {
        return Err(ApiError::invalid(format!(
            "count {count} is outside 1..={MAX_COUNT}"
        )));
    }
    if ms == 0 {
        return Err(ApiError::invalid(
            "duration 0 ms is too short; the shortest is 1 ms",
        ));
    }
    if ms > MAX_DURATION_MS {
        return Err(ApiError::invalid(format!(
            "duration {ms} ms is too long; the longest is {MAX_DURATION_MS} ms (an hour)"
        )));
    }
    Ok((count, Duration::from_millis(ms)))
}

/// Refuses a VNI this dataplane has no network, FDB entry or endpoint
/// for: a stream on it would wait out its whole duration for nothing.
fn known_vni(st: &super::State, vni: Vni) -> R<()> {
    let known = st.networks.contains_key(&vni)
        || st.fdb.vni(vni).is_some()
        || st.endpoints.values().any(|e| e.info.vni == vni);
    if known {
        return Ok(());
    }
    Err(ApiError::not_found(format!(
        "VNI {vni} is not on this dataplane (no network, FDB entry or endpoint); see `vxnet dp network ls`"
    )))
}

/// Whether a stream of one kind runs (its deadline, if one does), and a
/// signal for when it stops.
pub(super) type SlotState = Arc<(Mutex<Option<Instant>>, Condvar)>;

/// How long a new stream waits for a running one to go: a client that
/// went away (Ctrl-C) is noticed at the next item or idle check, so its
/// stream may still hold the slot for up to [`STREAM_IDLE_CHECK`].
const SLOT_GRACE: Duration = Duration::from_millis(STREAM_IDLE_CHECK.as_millis() as u64 + 150);

/// One running stream of a kind, until `deadline`; freed when the
/// stream goes.
struct Slot {
    state: SlotState,
    deadline: Instant,
}

impl Slot {
    /// Takes the slot for a stream of at most `duration`, waiting up to
    /// [`SLOT_GRACE`] for a running one to go; refused if it does not,
    /// saying when it ends at the latest.
    fn take(state: &SlotState, what: &str, duration: Duration) -> R<Slot> {
        let (running, freed) = &**state;
        let running = running.lock().unwrap_or_else(|e| e.into_inner());
        let (mut running, _) = freed
            .wait_timeout_while(running, SLOT_GRACE, |r| r.is_some())
            .unwrap_or_else(|e| e.into_inner());
        if let Some(deadline) = *running {
            let left = deadline.saturating_duration_since(Instant::now());
            return Err(ApiError::new(
                ErrorCode::FailedPrecondition,
                format!(
                    "{what} is already running on this dataplane; it ends within {} s at the latest \
                     (sooner at its count, or when its client stops); try again then",
                    left.as_secs() + 1
                ),
            ));
        }
        let deadline = Instant::now() + duration;
        *running = Some(deadline);
        Ok(Slot {
            state: Arc::clone(state),
            deadline,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let (running, freed) = &*self.state;
        *running.lock().unwrap_or_else(|e| e.into_inner()) = None;
        freed.notify_all();
    }
}

/// What a stream has next.
enum Next<T> {
    Item(T),
    /// Nothing for [`STREAM_IDLE_CHECK`]: the server looks whether the
    /// client is still there (a killed client frees the slot at once).
    Idle,
    End(StreamEnd),
}

/// The API side of a stream: takes what the workers send until a bound
/// is reached; on drop (the end, or a client gone) the taps leave.
struct Stream<T, F: Fn(&Commander)> {
    rx: Receiver<T>,
    state: Arc<StreamState>,
    workers: Vec<Commander>,
    stop: F,
    /// Held while the stream runs; its deadline ends the stream.
    slot: Slot,
    count: u64,
    left: u64,
    started: bool,
    ended: bool,
}

impl<T, F: Fn(&Commander)> Stream<T, F> {
    /// Installs a tap on every worker (`tap` makes each one's command from
    /// its end of a shared bounded queue and the shared state) and streams
    /// what they send until the slot's deadline or `count` items; `stop`
    /// takes the taps out again when the stream ends or is dropped.
    fn start(
        slot: Slot,
        workers: Vec<Commander>,
        tap: impl Fn(Sender<T>, Arc<StreamState>) -> Command,
        stop: F,
        count: u64,
    ) -> Self {
        let (tx, rx) = crossbeam_channel::bounded(QUEUE);
        let state = Arc::new(StreamState::default());
        for w in &workers {
            w.send(tap(tx.clone(), Arc::clone(&state)));
        }
        Stream {
            rx,
            state,
            workers,
            stop,
            slot,
            count,
            left: count,
            started: false,
            ended: false,
        }
    }

    /// The next item, a pause, the end, or `None` after the end.
    fn next_item(&mut self) -> Option<Next<T>> {
        if self.ended {
            return None;
        }
        if self.left == 0 {
            return Some(Next::End(self.end("count")));
        }
        let wait = self.slot.deadline.saturating_duration_since(Instant::now());
        match self.rx.recv_timeout(wait.min(STREAM_IDLE_CHECK)) {
            Ok(item) => {
                self.left -= 1;
                Some(Next::Item(item))
            }
            Err(RecvTimeoutError::Timeout) if Instant::now() < self.slot.deadline => {
                Some(Next::Idle)
            }
            Err(_) => Some(Next::End(self.end("duration"))),
        }
    }

    fn end(&mut self, why: &str) -> StreamEnd {
        self.ended = true;
        self.halt();
        StreamEnd {
            sent: self.count - self.left,
            dropped: self.state.dropped.load(Ordering::Relaxed),
            why: why.to_owned(),
        }
    }

    fn halt(&mut self) {
        if !self.state.done.swap(true, Ordering::SeqCst) {
            for w in &self.workers {
                (self.stop)(w);
            }
        }
    }
}

impl<T, F: Fn(&Commander)> Drop for Stream<T, F> {
    fn drop(&mut self) {
        self.halt();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::Config;
    use vxnet_api::dp::Request;

    /// A capture outside its bounds is refused with the bound named, and
    /// starts nothing (before, a `snaplen` outside them was clamped).
    #[test]
    fn captures_outside_their_bounds_are_refused() {
        let dp = Dataplane::start(Config::loopback_for_tests()).unwrap();
        let base = Capture {
            inner: true,
            ..Capture::default()
        };
        for (bad, says) in [
            (
                Capture {
                    snaplen: Some(MIN_SNAPLEN - 1),
                    ..base.clone()
                },
                "snaplen 63 is outside 64..=262144",
            ),
            (
                Capture {
                    snaplen: Some(MAX_SNAPLEN + 1),
                    ..base.clone()
                },
                "snaplen 262145",
            ),
            (
                Capture {
                    max_bytes: Some(0),
                    ..base.clone()
                },
                "max_bytes 0",
            ),
            (
                Capture {
                    count: Some(MAX_COUNT + 1),
                    ..base.clone()
                },
                "count 10000001",
            ),
        ] {
            match dp.handle_reply(Request::Capture(bad)) {
                Reply::One(r) => {
                    let e = r.error.expect("refused");
                    assert_eq!(e.code, ErrorCode::InvalidArgument);
                    assert!(e.message.contains(says), "{}", e.message);
                }
                Reply::Stream(_) => panic!("{says}: started"),
            }
        }
        let ok = Capture {
            snaplen: Some(MIN_SNAPLEN),
            duration_ms: Some(1),
            ..base
        };
        assert!(matches!(
            dp.handle_reply(Request::Capture(ok)),
            Reply::Stream(_)
        ));
    }

    /// A second capture while one runs is refused, saying when the first
    /// ends at the latest; once the first is dropped, the slot is free.
    #[test]
    fn a_second_capture_is_told_when_the_first_ends() {
        let dp = Dataplane::start(Config::loopback_for_tests()).unwrap();
        let capture = |ms| {
            dp.handle_reply(Request::Capture(Capture {
                inner: true,
                duration_ms: Some(ms),
                ..Capture::default()
            }))
        };
        let first = capture(30_000);
        assert!(matches!(first, Reply::Stream(_)));
        let Reply::One(r) = capture(1_000) else {
            panic!("a second capture started")
        };
        let e = r.error.expect("refused");
        assert_eq!(e.code, ErrorCode::FailedPrecondition);
        let secs: u64 = e
            .message
            .split("ends within ")
            .nth(1)
            .and_then(|t| t.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no time left in {:?}", e.message));
        assert!((1..=30).contains(&secs), "{}", e.message);
        drop(first);
        assert!(matches!(capture(1_000), Reply::Stream(_)));
    }

    /// A stream whose client has just gone may hold the slot until the
    /// server notices; a new one waits for it instead of being refused.
    #[test]
    fn a_new_capture_waits_for_one_that_is_going() {
        let dp = Dataplane::start(Config::loopback_for_tests()).unwrap();
        let capture = || {
            dp.handle_reply(Request::Capture(Capture {
                inner: true,
                duration_ms: Some(30_000),
                ..Capture::default()
            }))
        };
        let first = capture();
        assert!(matches!(first, Reply::Stream(_)));
        std::thread::scope(|s| {
            s.spawn(move || {
                std::thread::sleep(SLOT_GRACE / 4);
                drop(first);
            });
            assert!(matches!(capture(), Reply::Stream(_)));
        });
    }
}
