//! Prometheus metrics: a collector over the workers' counters and a minimal
//! HTTP/1.1 server for `GET /metrics`.
//!
//! This module owns the metric names and the scrape endpoint. It keeps no
//! state of its own: every scrape calls the view closure, which sums the
//! workers' [`Stats`](vxnet_proto::stats::Stats) at that moment, so the
//! numbers are never stale and the data path pays nothing between scrapes.
//!
//! The HTTP side is deliberately tiny (no keep-alive, GET only, bounded
//! headers, read timeout): Prometheus needs nothing more, and a full HTTP
//! stack is not worth its dependencies here.

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{Encoder, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;
use vxnet_proto::replication::FloodCounts;
use vxnet_proto::stats::{Counter, Drop as DropReason, Snapshot};
use vxnet_proto::wire::Vni;

/// What one scrape shows: the workers' summed counters and a few gauges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsView {
    pub snapshot: Snapshot,
    /// Attached endpoints.
    pub endpoints: usize,
    /// VNIs with at least one endpoint or peer.
    pub vnis: usize,
    /// Worker threads.
    pub workers: usize,
    /// Head-end replication of each VNI.
    pub flooding: Vec<(Vni, FloodCounts)>,
}

impl MetricsView {
    /// All counters zero; handy before the dataplane has workers.
    pub fn empty() -> MetricsView {
        MetricsView {
            snapshot: Snapshot::sum(std::iter::empty()),
            endpoints: 0,
            vnis: 0,
            workers: 0,
            flooding: Vec::new(),
        }
    }
}

/// Produces a [`MetricsView`] on demand.
pub type ViewFn = Arc<dyn Fn() -> MetricsView + Send + Sync>;

const DROPS_NAME: &str = "vxnet_drops_total";
const DROPS_HELP: &str = "packets dropped, by pipeline stage and reason";
/// Per-VNI replication counters: `vxnet_flood_<what>_total{vni}`.
const FLOOD: [(&str, &str); 4] = [
    (
        "vxnet_flood_frames_total",
        "broadcast, multicast and unknown-unicast frames replicated to other hosts, by VNI",
    ),
    (
        "vxnet_flood_copies_total",
        "datagrams replicated frames became (one per VTEP), by VNI",
    ),
    (
        "vxnet_flood_rate_limited_total",
        "flooded frames dropped by the VNI's flood rate, by VNI",
    ),
    (
        "vxnet_flood_suppressed_total",
        "flooded frames kept on this host because the network turned flooding off, by VNI",
    ),
];

fn flood_values(c: &FloodCounts) -> [u64; 4] {
    [c.frames, c.copies, c.rate_limited, c.suppressed]
}

const GAUGES: [(&str, &str); 3] = [
    ("vxnet_endpoints", "attached endpoints"),
    ("vxnet_vnis", "VNIs in use on this host"),
    ("vxnet_workers", "dataplane worker threads"),
];

/// Prometheus name of a counter: `vxnet_<name>_total`.
pub fn counter_metric_name(c: Counter) -> String {
    format!("vxnet_{}_total", c.name())
}

/// A [`Collector`] that reads a fresh [`MetricsView`] on every collect.
pub struct StatsCollector {
    view: ViewFn,
    descs: Vec<Desc>,
}

impl StatsCollector {
    pub fn new(view: ViewFn) -> StatsCollector {
        let mut descs = Vec::new();
        // The names are fixed and valid, so Desc::new cannot fail here; a
        // failure would drop the desc rather than panic.
        for c in Counter::ALL {
            descs.extend(
                Desc::new(
                    counter_metric_name(*c),
                    c.help().into(),
                    vec![],
                    Default::default(),
                )
                .ok(),
            );
        }
        descs.extend(
            Desc::new(
                DROPS_NAME.into(),
                DROPS_HELP.into(),
                vec!["stage".into(), "reason".into()],
                Default::default(),
            )
            .ok(),
        );
        for (name, help) in FLOOD {
            descs.extend(
                Desc::new(
                    name.into(),
                    help.into(),
                    vec!["vni".into()],
                    Default::default(),
                )
                .ok(),
            );
        }
        for (name, help) in GAUGES {
            descs.extend(Desc::new(name.into(), help.into(), vec![], Default::default()).ok());
        }
        StatsCollector { view, descs }
    }

    fn families(view: &MetricsView) -> prometheus::Result<Vec<MetricFamily>> {
        let mut out = Vec::new();
        for c in Counter::ALL {
            let m = IntCounter::with_opts(Opts::new(counter_metric_name(*c), c.help()))?;
            m.inc_by(view.snapshot.counter(*c));
            out.extend(m.collect());
        }
        let drops = IntCounterVec::new(Opts::new(DROPS_NAME, DROPS_HELP), &["stage", "reason"])?;
        for d in DropReason::ALL {
            // Every reason is exported, zeros included, so that rate() and
            // alerts see a series from the first scrape on.
            drops
                .get_metric_with_label_values(&[d.stage(), d.reason()])?
                .inc_by(view.snapshot.drop_count(*d));
        }
        out.extend(drops.collect());
        for (i, (name, help)) in FLOOD.into_iter().enumerate() {
            let m = IntCounterVec::new(Opts::new(name, help), &["vni"])?;
            for (vni, c) in &view.flooding {
                m.get_metric_with_label_values(&[&vni.to_string()])?
                    .inc_by(flood_values(c)[i]);
            }
            out.extend(m.collect());
        }
        let values = [view.endpoints, view.vnis, view.workers];
        for ((name, help), v) in GAUGES.into_iter().zip(values) {
            let g = IntGauge::new(name, help)?;
            g.set(i64::try_from(v).unwrap_or(i64::MAX));
            out.extend(g.collect());
        }
        Ok(out)
    }
}

impl Collector for StatsCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let view = (self.view)();
        match Self::families(&view) {
            Ok(f) => f,
            Err(e) => {
                tracing::error!(error = %e, "cannot build metrics");
                Vec::new()
            }
        }
    }
}

/// Renders the Prometheus text exposition of `registry`.
pub fn render(registry: &Registry) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    TextEncoder::new()
        .encode(&registry.gather(), &mut buf)
        .map_err(io::Error::other)?;
    Ok(buf)
}

/// Longest request head (request line plus headers) read from a scraper.
pub const MAX_HEAD_BYTES: usize = 8 * 1024;
/// A scraper that sends nothing for this long is disconnected.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Scrapes served at once; more are closed without an answer.
pub const MAX_SCRAPES: usize = 16;

/// A running metrics endpoint; dropping it stops the server.
pub struct MetricsHandle {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    listener: TcpListener,
    thread: Option<JoinHandle<()>>,
}

impl MetricsHandle {
    /// The bound address (useful after binding port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsHandle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // shutdown() wakes the accept() on Linux; the connect is a fallback.
        let _ = socket2::SockRef::from(&self.listener).shutdown(std::net::Shutdown::Both);
        let mut wake = self.addr;
        if wake.ip().is_unspecified() {
            wake.set_ip(match wake {
                SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        let _ = TcpStream::connect_timeout(&wake, Duration::from_millis(200));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Serves the dataplane's `GET /metrics` on `addr` in a background
/// thread: the workers' counters, build info and process metrics.
pub fn serve_metrics(addr: SocketAddr, view: ViewFn) -> io::Result<MetricsHandle> {
    let registry = Registry::new();
    registry
        .register(Box::new(StatsCollector::new(view)))
        .map_err(io::Error::other)?;
    register_common(&registry, "vxnet-dataplane")?;
    serve_registry(addr, registry)
}

/// Registers what every vxnet daemon exports besides its own metrics:
/// `vxnet_build_info{daemon,version}` (always 1) and the standard process
/// metrics (`process_cpu_seconds_total`, `process_resident_memory_bytes`,
/// `process_open_fds`, ... read from /proc on each scrape).
pub fn register_common(registry: &Registry, daemon: &str) -> io::Result<()> {
    let info = prometheus::IntGaugeVec::new(
        Opts::new(
            "vxnet_build_info",
            "the running daemon and its version (always 1)",
        ),
        &["daemon", "version"],
    )
    .map_err(io::Error::other)?;
    info.with_label_values(&[daemon, env!("CARGO_PKG_VERSION")])
        .set(1);
    registry
        .register(Box::new(info))
        .map_err(io::Error::other)?;
    registry
        .register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))
        .map_err(io::Error::other)
}

/// Serves `GET /metrics` of `registry` on `addr` in a background thread.
pub fn serve_registry(addr: SocketAddr, registry: Registry) -> io::Result<MetricsHandle> {
    let listener = TcpListener::bind(addr).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot listen on {addr} for metrics: {e}"),
        )
    })?;
    let addr = listener.local_addr()?;
    let stop = Arc::new(AtomicBool::new(false));
    let accept_listener = listener.try_clone()?;
    let accept_stop = stop.clone();
    let registry = Arc::new(registry);
    let thread = std::thread::Builder::new()
        .name("vxnet-metrics".into())
        .spawn(move || accept_loop(accept_listener, registry, accept_stop))?;
    tracing::info!(%addr, "metrics endpoint listening");
    Ok(MetricsHandle {
        addr,
        stop,
        listener,
        thread: Some(thread),
    })
}

fn accept_loop(listener: TcpListener, registry: Arc<Registry>, stop: Arc<AtomicBool>) {
    let active = Arc::new(AtomicUsize::new(0));
    loop {
        let accepted = listener.accept();
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                if e.kind() != io::ErrorKind::Interrupted {
                    tracing::warn!(error = %e, "metrics accept failed");
                    std::thread::yield_now();
                }
                continue;
            }
        };
        if active.fetch_add(1, Ordering::SeqCst) >= MAX_SCRAPES {
            active.fetch_sub(1, Ordering::SeqCst);
            continue;
        }
        let slot = Slot(active.clone());
        let registry = registry.clone();
        let spawned = std::thread::Builder::new()
            .name("vxnet-scrape".into())
            .spawn(move || {
                let _slot = slot;
                if let Err(e) = serve_scrape(stream, &registry) {
                    tracing::debug!(error = %e, "metrics connection ended");
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot spawn a metrics thread");
        }
    }
}

struct Slot(Arc<AtomicUsize>);

impl std::ops::Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Why a request head could not be read.
#[derive(Debug, PartialEq, Eq)]
enum HeadError {
    TooLarge,
    Incomplete,
}

/// Reads up to the blank line ending the request head.
fn read_head(stream: &mut impl Read) -> io::Result<Result<Vec<u8>, HeadError>> {
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        if head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
            return Ok(Ok(head));
        }
        if head.len() > MAX_HEAD_BYTES {
            return Ok(Err(HeadError::TooLarge));
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Ok(Err(HeadError::Incomplete));
        }
        head.extend_from_slice(chunk.get(..n).unwrap_or_default());
    }
}

/// The answer to one request head: (status line, content type, body).
fn route(head: &[u8], registry: &Registry) -> (&'static str, &'static str, Vec<u8>) {
    const TEXT: &str = "text/plain; charset=utf-8";
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return ("400 Bad Request", TEXT, b"bad request\n".to_vec());
    };
    if !version.starts_with("HTTP/1.") {
        return ("400 Bad Request", TEXT, b"bad request\n".to_vec());
    }
    let path = target.split('?').next().unwrap_or_default();
    if method != "GET" {
        return (
            "405 Method Not Allowed",
            TEXT,
            b"only GET is supported\n".to_vec(),
        );
    }
    match path {
        "/metrics" => match render(registry) {
            Ok(body) => ("200 OK", "text/plain; version=0.0.4; charset=utf-8", body),
            Err(e) => (
                "500 Internal Server Error",
                TEXT,
                format!("cannot render metrics: {e}\n").into_bytes(),
            ),
        },
        "/" => (
            "200 OK",
            "text/html; charset=utf-8",
            b"<html><head><title>vxnet</title></head><body>\
              <h1>vxnet</h1><p><a href=\"/metrics\">/metrics</a></p></body></html>\n"
                .to_vec(),
        ),
        _ => ("404 Not Found", TEXT, b"not found; try /metrics\n".to_vec()),
    }
}

fn serve_scrape(mut stream: TcpStream, registry: &Registry) -> io::Result<()> {
    stream.set_read_timeout(Some(READ_TIMEOUT))?;
    stream.set_write_timeout(Some(READ_TIMEOUT))?;
    let (status, ctype, body) = match read_head(&mut stream)? {
        Ok(head) => route(&head, registry),
        Err(HeadError::TooLarge) => (
            "431 Request Header Fields Too Large",
            "text/plain; charset=utf-8",
            b"request head too large\n".to_vec(),
        ),
        Err(HeadError::Incomplete) => return Ok(()),
    };
    let mut extra = "";
    if status.starts_with("405") {
        extra = "Allow: GET\r\n";
    }
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(&body)?;
    stream.flush()?;
    if !status.starts_with("200") {
        linger(&mut stream);
    }
    Ok(())
}

/// Closing a TCP socket with unread input sends a reset, which can destroy
/// the answer before the client reads it. After an error answer (where the
/// client may still be sending), half-close and discard a bounded amount of
/// input first.
fn linger(stream: &mut TcpStream) {
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let _ = io::copy(&mut (&*stream).take(256 * 1024), &mut io::sink());
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn view() -> MetricsView {
        let stats = vxnet_proto::stats::Stats::default();
        stats.add(Counter::TapRxFrames, 42);
        stats.drop_n(DropReason::WireUnknownVni, 7);
        MetricsView {
            snapshot: Snapshot::sum([&stats]),
            endpoints: 3,
            vnis: 2,
            workers: 4,
            flooding: vec![(
                Vni::new(4096).unwrap(),
                FloodCounts {
                    frames: 5,
                    copies: 10,
                    rate_limited: 1,
                    suppressed: 0,
                },
            )],
        }
    }

    fn start() -> MetricsHandle {
        serve_metrics((Ipv4Addr::LOCALHOST, 0).into(), Arc::new(view)).unwrap()
    }

    fn get(h: &MetricsHandle, raw: &[u8]) -> (String, String) {
        let mut s = TcpStream::connect(h.local_addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(raw).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let (head, body) = out.split_once("\r\n\r\n").unwrap();
        (head.to_string(), body.to_string())
    }

    /// Every sample line is `name{labels} value` with a valid metric name
    /// and a number; comment lines are HELP or TYPE.
    fn assert_exposition_format(text: &str) {
        for line in text.lines() {
            if let Some(c) = line.strip_prefix("# ") {
                assert!(c.starts_with("HELP ") || c.starts_with("TYPE "), "{line}");
                continue;
            }
            let (series, value) = line.rsplit_once(' ').unwrap();
            assert!(value.parse::<f64>().is_ok(), "value in {line}");
            let name_end = series.find('{').unwrap_or(series.len());
            let name = &series[..name_end];
            assert!(
                !name.is_empty()
                    && name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
                    && !name.starts_with(|c: char| c.is_ascii_digit()),
                "name in {line}"
            );
            if name_end < series.len() {
                let labels = &series[name_end..];
                assert!(labels.ends_with('}'), "labels in {line}");
                for pair in labels[1..labels.len() - 1].split(',') {
                    let (k, v) = pair.split_once('=').unwrap();
                    assert!(k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
                    assert!(v.starts_with('"') && v.ends_with('"'), "{line}");
                }
            }
        }
    }

    #[test]
    fn scrape_shows_counters_drops_and_gauges() {
        let h = start();
        let (head, body) = get(&h, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
        assert!(head.contains("Content-Type: text/plain; version=0.0.4"));
        assert!(body.contains("\nvxnet_tap_rx_frames_total 42\n"), "{body}");
        assert!(body.contains("# HELP vxnet_tap_rx_frames_total frames read from TAPs\n"));
        assert!(body.contains("# TYPE vxnet_tap_rx_frames_total counter\n"));
        assert!(
            body.contains("vxnet_drops_total{reason=\"unknown_vni\",stage=\"wire\"} 7\n"),
            "{body}"
        );
        assert!(body.contains("vxnet_drops_total{reason=\"runt\",stage=\"tap\"} 0\n"));
        assert!(body.contains("\nvxnet_endpoints 3\n"));
        assert!(body.contains("\nvxnet_workers 4\n"));
        assert!(body.contains("# TYPE vxnet_vnis gauge\n"));
        assert!(
            body.contains("vxnet_flood_copies_total{vni=\"4096\"} 10\n"),
            "{body}"
        );
        assert!(body.contains("vxnet_flood_rate_limited_total{vni=\"4096\"} 1\n"));
        for c in Counter::ALL {
            assert!(body.contains(&format!("\n{} ", counter_metric_name(*c))));
        }
        assert_exposition_format(&body);
    }

    #[test]
    fn each_scrape_reads_a_fresh_view() {
        let n = Arc::new(AtomicUsize::new(0));
        let n2 = n.clone();
        let h = serve_metrics(
            (Ipv4Addr::LOCALHOST, 0).into(),
            Arc::new(move || {
                let mut v = MetricsView::empty();
                v.endpoints = n2.fetch_add(1, Ordering::SeqCst) + 1;
                v
            }),
        )
        .unwrap();
        let (_, b1) = get(&h, b"GET /metrics HTTP/1.0\r\n\r\n");
        let (_, b2) = get(&h, b"GET /metrics?x=1 HTTP/1.1\r\n\r\n");
        assert!(b1.contains("\nvxnet_endpoints 1\n"), "{b1}");
        assert!(b2.contains("\nvxnet_endpoints 2\n"), "{b2}");
    }

    #[test]
    fn other_paths_and_bad_requests() {
        let h = start();
        let (head, body) = get(&h, b"GET / HTTP/1.1\r\n\r\n");
        assert!(head.starts_with("HTTP/1.1 200"));
        assert!(body.contains("/metrics"));
        let (head, _) = get(&h, b"GET /nope HTTP/1.1\r\n\r\n");
        assert!(head.starts_with("HTTP/1.1 404"), "{head}");
        let (head, _) = get(&h, b"POST /metrics HTTP/1.1\r\n\r\n");
        assert!(head.starts_with("HTTP/1.1 405"), "{head}");
        assert!(head.contains("Allow: GET"));
        let (head, _) = get(&h, b"garbage\r\n\r\n");
        assert!(head.starts_with("HTTP/1.1 400"), "{head}");
        let (head, _) = get(&h, b"GET /metrics SMTP/2\r\n\r\n");
        assert!(head.starts_with("HTTP/1.1 400"), "{head}");
        let mut huge = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
        huge.resize(MAX_HEAD_BYTES + 2048, b'a');
        let (head, _) = get(&h, &huge);
        assert!(head.starts_with("HTTP/1.1 431"), "{head}");
    }

    #[test]
    fn drop_stops_the_server() {
        let h = start();
        let addr = h.local_addr();
        drop(h);
        assert!(TcpStream::connect(addr).is_err());
    }
}
