//! `vxnet capture`: the dataplane's copies of inner frames and outer
//! datagrams, written as pcapng (one interface per view: `inner`,
//! Ethernet; `outer`, raw IP) through the `pcap-file` crate, to a file or
//! to stdout (`-w -`, for `tshark -i -`). Names (`--network`,
//! `--container`) are resolved by the control daemon; `--vni` and
//! `--endpoint` need only the dataplane.

use crate::dp::{CliError, parse_vni};
use clap::Args;
use pcap_file::DataLink;
use pcap_file::pcapng::PcapNgWriter;
use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketBlock;
use pcap_file::pcapng::blocks::interface_description::{
    InterfaceDescriptionBlock, InterfaceDescriptionOption,
};
use std::borrow::Cow;
use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use vxnet_api::Vni;
use vxnet_api::client::{Client, Server, transport_error};
use vxnet_api::dp::DEFAULT_SOCKET;
use vxnet_api::observe::{
    Capture, CaptureMsg, MAX_CAPTURE_BYTES, MAX_COUNT, MAX_DURATION_MS, MAX_SNAPLEN, MIN_SNAPLEN,
    View,
};

/// Filters shared by `vxnet capture` and `vxnet trace --live`.
#[derive(Debug, Args, Clone)]
pub struct Scope {
    #[command(flatten)]
    pub control: crate::swarm::ControlSocket,
    /// Path of the dataplane's API socket.
    #[arg(long, env = "VXNET_SOCKET", default_value = DEFAULT_SOCKET, value_name = "PATH")]
    pub socket: PathBuf,
    /// Only this overlay network (resolved by the control daemon).
    #[arg(long, value_name = "NET", conflicts_with = "vni")]
    pub network: Option<String>,
    /// Only this VNI.
    #[arg(long, value_parser = parse_vni)]
    pub vni: Option<Vni>,
    /// Only this container's endpoints on this host (resolved by the
    /// control daemon).
    #[arg(long, value_name = "NAME")]
    pub container: Option<String>,
    /// Stop after this many packets (`trace --live`: events; 1000 by
    /// default for both, at most 10,000,000).
    // Parsed through i64 with negative numbers allowed, so `-c -5` is
    // told the range rather than "unexpected argument '-5'".
    #[arg(short = 'c', long, value_name = "COUNT", allow_negative_numbers = true,
          value_parser = clap::builder::RangedI64ValueParser::<u64>::new().range(1..=MAX_COUNT as i64))]
    pub count: Option<u64>,
    /// Stop after this long (`10s`, `2m`; 1ms to 1h; 60s by default).
    #[arg(long, value_parser = parse_stream_duration, value_name = "DURATION",
          allow_hyphen_values = true)]
    pub duration: Option<Duration>,
}

impl Scope {
    /// The VNI `--network` or `--vni` names.
    pub fn vni(&self) -> Result<Option<Vni>, CliError> {
        match &self.network {
            Some(n) => {
                let v = self
                    .control
                    .call(vxnet_api::ctl::NetworkInspect { network: n.clone() })?;
                Ok(Some(v.network.vni))
            }
            None => Ok(self.vni),
        }
    }

    /// The addresses of `--container` (on `vni` if given), IPv4 and IPv6,
    /// on every network it is on. Refused for a container of another node,
    /// one that is not running, or one not on that network.
    pub fn addresses(&self, vni: Option<Vni>) -> Result<Vec<IpAddr>, CliError> {
        let Some(c) = &self.container else {
            return Ok(Vec::new());
        };
        let v = self.control.call(vxnet_api::ctl::ContainerInspect {
            container: c.clone(),
        })?;
        // The dataplane sees only this host's endpoints: say where the
        // container runs, as `vxnet trace` does. (From the container's
        // state: `node inspect` is a manager's, and this runs on workers.)
        if v.state == vxnet_api::ctl::ContainerState::Remote {
            return Err(CliError::Api(vxnet_api::ApiError::precondition(format!(
                "container {} runs on {}; run the command there",
                v.name, v.node
            ))));
        }
        if let Some(why) = v.not_running() {
            return Err(CliError::Api(vxnet_api::ApiError::precondition(why)));
        }
        let mut ips = Vec::new();
        for a in &v.networks {
            if let Some(vni) = vni {
                let net = self.control.call(vxnet_api::ctl::NetworkInspect {
                    network: a.network_id.clone(),
                })?;
                if net.network.vni != vni {
                    continue;
                }
            }
            ips.push(IpAddr::V4(a.ipv4));
            ips.extend(a.ipv6.map(IpAddr::V6));
        }
        if ips.is_empty() {
            let on = v
                .networks
                .iter()
                .map(|a| a.network.as_str())
                .collect::<Vec<_>>()
                .join(", ");
            let which = self.network.clone().unwrap_or_else(|| {
                vni.map_or_else(|| "the one given".into(), |v| format!("of VNI {v}"))
            });
            return Err(CliError::Api(vxnet_api::ApiError::not_found(format!(
                "container {} is not on network {which}; it is on: {on}",
                v.name
            ))));
        }
        Ok(ips)
    }

    pub fn duration_ms(&self) -> Option<u64> {
        self.duration.map(|d| d.as_millis() as u64)
    }

    pub fn dataplane(&self) -> Result<Client, CliError> {
        Client::connect(Server::Dataplane, &self.socket).map_err(|e| transport_error(e).into())
    }
}

/// [`parse_duration`], at least a millisecond (the dataplane counts
/// whole milliseconds) and at most an hour (`MAX_DURATION_MS`).
fn parse_stream_duration(s: &str) -> Result<Duration, String> {
    if s.trim().starts_with('-') {
        return Err(format!("{} is not in 1ms..=1h", s.trim()));
    }
    let d = parse_duration(s)?;
    if d < Duration::from_millis(1) {
        return Err(format!(
            "{} is shorter than the shortest duration, 1ms",
            s.trim()
        ));
    }
    if d > Duration::from_millis(MAX_DURATION_MS) {
        return Err(format!(
            "{} is longer than the longest duration, 1h",
            s.trim()
        ));
    }
    Ok(d)
}

/// `--max-bytes`: a number of bytes, or one with a binary multiple
/// (`64K`, `64M`, `1G`, also `64MiB`), 1 to `MAX_CAPTURE_BYTES` (1 GiB).
fn parse_max_bytes(s: &str) -> Result<u64, String> {
    let s = s.trim();
    if s.starts_with('-') {
        return Err(format!(
            "{s} is outside 1 byte to 1G ({MAX_CAPTURE_BYTES} bytes)"
        ));
    }
    let n = parse_size::Config::new()
        .with_binary()
        .parse_size(s)
        .map_err(|e| format!("{s:?} is not a size such as 1000000, 64M or 1G ({e})"))?;
    if n == 0 || n > MAX_CAPTURE_BYTES {
        return Err(format!(
            "{s} is outside 1 byte to 1G ({MAX_CAPTURE_BYTES} bytes)"
        ));
    }
    Ok(n)
}

/// `10s`, `500ms`, `2m`, `1h`, or a number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if let Ok(n) = s.parse::<u64>() {
        return Ok(Duration::from_secs(n));
    }
    humantime::parse_duration(s)
        .map_err(|e| format!("{s:?} is not a duration such as 10s or 2m ({e})"))
}

#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  vxnet capture --network test-net --both -c 100 -w /tmp/test-net.pcapng
  vxnet capture --container alpine1 --inner --duration 10s -w - | tshark -i -
  vxnet capture --vni 4096 --outer -w outer.pcapng      # needs only the dataplane")]
pub struct CaptureArgs {
    #[command(flatten)]
    pub scope: Scope,
    /// Only this local endpoint (by address; needs only the dataplane).
    #[arg(long, value_name = "IP")]
    pub endpoint: Vec<IpAddr>,
    /// Frames as the containers see them (decrypted on an encrypted network).
    #[arg(long)]
    pub inner: bool,
    /// Datagrams as on the underlay (VXLAN, or ESP on an encrypted network).
    #[arg(long)]
    pub outer: bool,
    /// Both views (the default).
    #[arg(long)]
    pub both: bool,
    /// Stop after this many bytes of packets (`1000000`, `64M`, `1G`:
    /// binary multiples; 64M by default, at most 1G).
    #[arg(long, value_name = "BYTES", value_parser = parse_max_bytes, allow_negative_numbers = true)]
    pub max_bytes: Option<u64>,
    /// Bytes kept of each packet (65535 by default, 64 to 262144).
    #[arg(long, value_name = "BYTES", allow_negative_numbers = true,
          value_parser = clap::value_parser!(u32).range(i64::from(MIN_SNAPLEN)..=i64::from(MAX_SNAPLEN)))]
    pub snaplen: Option<u32>,
    /// The pcapng file to write; `-` writes to stdout.
    #[arg(short = 'w', long = "write", value_name = "FILE")]
    pub file: String,
}

/// Runs `vxnet capture`; the summary goes to stderr.
pub fn run(args: &CaptureArgs) -> Result<u8, CliError> {
    let s = &args.scope;
    let mut sink = Sink::open(&args.file)?;
    let vni = s.vni()?;
    let mut endpoints = s.addresses(vni)?;
    endpoints.extend(&args.endpoint);
    let neither = !args.inner && !args.outer;
    let req = Capture {
        vni,
        endpoints,
        inner: args.inner || args.both || neither,
        outer: args.outer || args.both || neither,
        count: s.count,
        duration_ms: s.duration_ms(),
        max_bytes: args.max_bytes,
        snaplen: args.snaplen,
    };
    let views: Vec<View> = [(req.inner, View::Inner), (req.outer, View::Outer)]
        .into_iter()
        .filter_map(|(on, v)| on.then_some(v))
        .collect();
    let snaplen = req.snaplen.unwrap_or(65_535);
    let mut stream = s.dataplane()?.stream(req)?;
    // A refused request changes nothing: the file, opened above, is
    // emptied only once the dataplane has accepted the capture.
    let local_vtep = match stream.next() {
        Some(Ok(CaptureMsg::Start { local_vtep })) => local_vtep,
        Some(Err(e)) => return Err(e.into()),
        Some(Ok(_)) | None => {
            return Err(CliError::Failed(
                "the dataplane did not start the capture; are the CLI and the dataplane the same version?"
                    .into(),
            ));
        }
    };
    let records = Arc::new(AtomicU64::new(0));
    let writing = Arc::new(Mutex::new(()));
    on_interrupt(Arc::clone(&records), Arc::clone(&writing));
    let header = writing.lock().unwrap_or_else(|e| e.into_inner());
    let out = sink.start()?;
    let mut w = pcapng(out, &views, snaplen)?;
    w.get_mut().flush().map_err(write_error)?;
    drop(header);
    eprintln!(
        "capturing on {local_vtep} ({} view{})",
        views_name(&views),
        if views.len() > 1 { "s" } else { "" }
    );
    for msg in stream {
        match msg? {
            CaptureMsg::Start { .. } => {}
            CaptureMsg::Record(r) => {
                let Some(iface) = views.iter().position(|v| *v == r.view) else {
                    continue;
                };
                let block = EnhancedPacketBlock {
                    interface_id: iface as u32,
                    timestamp: Duration::from_nanos(r.ts_ns),
                    original_len: r.orig_len,
                    data: Cow::Borrowed(&r.data.0),
                    options: vec![],
                };
                // A SIGINT waits for the block being written: the file
                // ends on a whole block.
                let _writing = writing.lock().unwrap_or_else(|e| e.into_inner());
                w.write_pcapng_block(block).map_err(pcap_error)?;
                // Streaming readers (`tshark -i -`) see each packet at once.
                w.get_mut().flush().map_err(write_error)?;
                records.fetch_add(1, Ordering::SeqCst);
            }
            CaptureMsg::End(end) => {
                let dropped = match end.dropped {
                    0 => String::new(),
                    n => format!(", {n} dropped by the dataplane (reader too slow)"),
                };
                eprintln!(
                    "{}{dropped}; stopped by {}",
                    packets(records.load(Ordering::SeqCst)),
                    end.why
                );
            }
        }
    }
    Ok(0)
}

/// Where the capture goes: stdout (`-`), or a file opened for writing
/// (not yet truncated) before the dataplane is asked, so that a path that
/// cannot be written is refused first and a refused capture changes
/// nothing. A file this command created is removed again if the capture
/// does not start.
struct Sink {
    name: String,
    file: Option<std::fs::File>,
    created: bool,
}

impl Sink {
    fn open(name: &str) -> Result<Sink, CliError> {
        let mut sink = Sink {
            name: name.to_string(),
            file: None,
            created: false,
        };
        if name == "-" {
            return Ok(sink);
        }
        if name.is_empty() {
            return Err(CliError::Usage(
                "-w needs a file name, or - for stdout".into(),
            ));
        }
        let path = std::path::Path::new(name);
        if path.is_dir() {
            return Err(CliError::Failed(format!(
                "{name} is a directory; give a file name such as {}",
                path.join("capture.pcapng").display()
            )));
        }
        if let (Ok(_), Err(_)) = (path.symlink_metadata(), path.metadata()) {
            let to = std::fs::read_link(path).unwrap_or_default();
            return Err(CliError::Failed(format!(
                "{name} is a symbolic link to {}, which does not exist",
                to.display()
            )));
        }
        let cannot = |e: std::io::Error| CliError::Failed(format!("cannot write {name}: {e}"));
        let mut open = std::fs::OpenOptions::new();
        open.write(true);
        sink.file = Some(match open.open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let f = open.create_new(true).open(path).map_err(cannot)?;
                sink.created = true;
                f
            }
            Err(e) => return Err(cannot(e)),
        });
        Ok(sink)
    }

    /// The capture has started: the file, emptied, or stdout.
    fn start(&mut self) -> Result<Box<dyn Write>, CliError> {
        let Some(f) = self.file.take() else {
            return Ok(Box::new(std::io::stdout().lock()));
        };
        let regular = f.metadata().is_ok_and(|m| m.is_file());
        if regular {
            f.set_len(0)
                .map_err(|e| CliError::Failed(format!("cannot write {}: {e}", self.name)))?;
        }
        Ok(Box::new(f))
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        // Still held: the capture never started.
        if self.created && self.file.take().is_some() {
            let _ = std::fs::remove_file(&self.name);
        }
    }
}

/// On SIGINT (Ctrl-C) or SIGTERM: wait for the packet being written
/// (every block is flushed as written and pcapng has no trailer, so the
/// file is then complete), say so, and exit 130 as a shell does for an
/// interrupted command. Closing the connection ends the dataplane's
/// capture.
fn on_interrupt(records: Arc<AtomicU64>, writing: Arc<Mutex<()>>) {
    let r = ctrlc::set_handler(move || {
        let _held = writing.lock().unwrap_or_else(|e| e.into_inner());
        eprintln!("{}; interrupted", packets(records.load(Ordering::SeqCst)));
        std::process::exit(130);
    });
    if let Err(e) = r {
        eprintln!("warning: Ctrl-C will not print a summary ({e})");
    }
}

/// "1 packet captured", "2 packets captured".
fn packets(n: u64) -> String {
    format!("{n} packet{} captured", if n == 1 { "" } else { "s" })
}

fn write_error(e: std::io::Error) -> CliError {
    CliError::Failed(format!("cannot write the capture: {e}"))
}

/// pcap-file's I/O error says "Error reading bytes" also when writing:
/// name the I/O error itself.
fn pcap_error(e: pcap_file::PcapError) -> CliError {
    match e {
        pcap_file::PcapError::IoError(e) => write_error(e),
        other => CliError::Failed(format!("cannot write the capture: {other}")),
    }
}

fn views_name(views: &[View]) -> String {
    views
        .iter()
        .map(|v| match v {
            View::Inner => "inner",
            View::Outer => "outer",
        })
        .collect::<Vec<_>>()
        .join(" and ")
}

/// A pcapng writer with one interface per view, nanosecond timestamps.
fn pcapng<W: Write>(out: W, views: &[View], snaplen: u32) -> Result<PcapNgWriter<W>, CliError> {
    let mut w = PcapNgWriter::new(out).map_err(pcap_error)?;
    for v in views {
        let (linktype, name) = match v {
            View::Inner => (DataLink::ETHERNET, "inner"),
            View::Outer => (DataLink::RAW, "outer"),
        };
        w.write_pcapng_block(InterfaceDescriptionBlock {
            linktype,
            snaplen,
            options: vec![
                InterfaceDescriptionOption::IfName(Cow::Borrowed(name)),
                InterfaceDescriptionOption::IfTsResol(9),
            ],
        })
        .map_err(pcap_error)?;
    }
    Ok(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pcapng_has_one_interface_per_view_and_reads_back() {
        let mut buf = Vec::new();
        {
            let mut w = pcapng(&mut buf, &[View::Inner, View::Outer], 65_535).unwrap();
            w.write_pcapng_block(EnhancedPacketBlock {
                interface_id: 1,
                timestamp: Duration::from_nanos(1_700_000_000_123_456_789),
                original_len: 3,
                data: Cow::Borrowed(&[0x45, 0, 0]),
                options: vec![],
            })
            .unwrap();
        }
        let mut r = pcap_file::pcapng::PcapNgReader::new(&buf[..]).unwrap();
        let mut ifaces = 0;
        let mut packets = 0;
        while let Some(b) = r.next_block() {
            match b.unwrap() {
                pcap_file::pcapng::Block::InterfaceDescription(i) => {
                    ifaces += 1;
                    assert!(
                        i.options
                            .contains(&InterfaceDescriptionOption::IfTsResol(9))
                    );
                }
                pcap_file::pcapng::Block::EnhancedPacket(p) => {
                    packets += 1;
                    assert_eq!(p.interface_id, 1);
                    assert_eq!(p.timestamp, Duration::from_nanos(1_700_000_000_123_456_789));
                }
                _ => {}
            }
        }
        assert_eq!((ifaces, packets), (2, 1));
        assert_eq!(
            parse_duration("1500ms").unwrap(),
            Duration::from_millis(1500)
        );
        assert_eq!(parse_duration("7").unwrap(), Duration::from_secs(7));
        assert!(parse_duration("soon").is_err());
        let short = parse_stream_duration("500us").unwrap_err();
        assert!(short.contains("500us") && short.contains("1ms"), "{short}");
        assert_eq!(
            parse_stream_duration("1ms").unwrap(),
            Duration::from_millis(1)
        );
        assert_eq!(
            parse_stream_duration("1h").unwrap(),
            Duration::from_secs(3600)
        );
        assert_eq!(parse_max_bytes("64M"), Ok(64 << 20));
        assert_eq!(parse_max_bytes("64MiB"), Ok(64 << 20));
        assert_eq!(parse_max_bytes("1G"), Ok(MAX_CAPTURE_BYTES));
        assert_eq!(parse_max_bytes("150"), Ok(150));
        for bad in ["0", "2G", "lots", "", "-5"] {
            assert!(parse_max_bytes(bad).is_err(), "{bad}");
        }
        let long = parse_stream_duration("61m").unwrap_err();
        assert!(long.contains("61m") && long.contains("1h"), "{long}");
    }

    /// The file is checked before the dataplane is asked and emptied only
    /// once the capture starts; one the command created goes again if it
    /// does not.
    #[test]
    fn sink_refuses_what_cannot_be_written_and_leaves_no_trace() {
        let dir = std::env::temp_dir().join(format!("vxnet-capture-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let name = |p: &std::path::Path| p.to_str().unwrap().to_string();
        let refusal = |p: &str| match Sink::open(p) {
            Err(CliError::Failed(m) | CliError::Usage(m)) => m,
            Err(other) => panic!("{p}: {other:?}"),
            Ok(_) => panic!("{p} was not refused"),
        };
        assert!(refusal("").contains("-w needs a file name"));
        let e = refusal(&name(&dir.join("nope/x.pcapng")));
        assert!(e.contains("nope") && e.contains("No such file"), "{e}");
        assert!(refusal(&name(&dir)).contains("is a directory"));
        let link = dir.join("dangling");
        std::os::unix::fs::symlink(dir.join("gone"), &link).unwrap();
        assert!(refusal(&name(&link)).contains("which does not exist"));
        // A new file that never gets a capture is removed again.
        let fresh = dir.join("fresh.pcapng");
        drop(Sink::open(&name(&fresh)).unwrap());
        assert!(!fresh.exists());
        // An existing file keeps its content until the capture starts.
        let old = dir.join("old.pcapng");
        std::fs::write(&old, "precious").unwrap();
        drop(Sink::open(&name(&old)).unwrap());
        assert_eq!(std::fs::read_to_string(&old).unwrap(), "precious");
        let mut sink = Sink::open(&name(&old)).unwrap();
        sink.start().unwrap().write_all(b"new").unwrap();
        drop(sink);
        assert_eq!(std::fs::read_to_string(&old).unwrap(), "new");
        // A created file that got its capture stays.
        let mut sink = Sink::open(&name(&fresh)).unwrap();
        drop(sink.start().unwrap());
        drop(sink);
        assert!(fresh.exists());
        assert!(Sink::open("-").is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(packets(1), "1 packet captured");
        assert_eq!(packets(2), "2 packets captured");
    }
}
