//! Streams from the dataplane: `capture` (inner frames and outer datagrams,
//! written to pcapng by the CLI) and `live_trace` (real packets'
//! verdicts). Both answer with a stream of lines on the request's
//! connection (see `server::Reply::Stream`): a `start`, records or events,
//! and an `end` that says how many there were and how many the dataplane
//! dropped because the reader was too slow (the workers never wait for
//! it). Both are bounded in count and time; off, they cost nothing.

use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use vxnet_proto::wire::Vni;

use crate::trace::{Bytes, TraceProto, TraceStage, TraceVerdict};

/// Most records or events one stream gives.
pub const MAX_COUNT: u64 = 10_000_000;
/// Longest a stream runs (one hour).
pub const MAX_DURATION_MS: u64 = 3_600_000;
/// Most bytes of packets one capture gives (1 GiB).
pub const MAX_CAPTURE_BYTES: u64 = 1 << 30;
/// Fewest bytes a capture keeps of each packet: an outer IPv6 + UDP +
/// VXLAN header and the inner Ethernet header fit.
pub const MIN_SNAPLEN: u32 = 64;
/// Most bytes a capture keeps of each packet (tcpdump's largest).
pub const MAX_SNAPLEN: u32 = 262_144;

/// Which copy of a packet a capture record is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum View {
    /// The Ethernet frame as the container sees it (decrypted).
    Inner,
    /// The IP/UDP datagram as on the underlay (VXLAN or ESP).
    Outer,
}

/// Whether the dataplane read or wrote it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Read: from a container's TAP, or from the underlay.
    Rx,
    /// Written: to a container's TAP, or to the underlay.
    Tx,
}

/// `capture`: copies of the packets of `vni` (or all), of the local
/// endpoints with `endpoints` addresses (or all), in the inner view, the
/// outer view or both, until `count` records, `max_bytes` bytes or
/// `duration_ms` (defaults 1000 records, 64 MB, 60 s).
///
/// The outer view of an encrypted network cannot look inside ESP: its
/// datagrams are those exchanged with the VTEPs that have endpoints on
/// the network (the VNI is inside the ciphertext).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capture {
    #[serde(default)]
    pub vni: Option<Vni>,
    #[serde(default)]
    pub endpoints: Vec<IpAddr>,
    #[serde(default)]
    pub inner: bool,
    #[serde(default)]
    pub outer: bool,
    #[serde(default)]
    pub count: Option<u64>,
    #[serde(default)]
    pub duration_ms: Option<u64>,
    #[serde(default)]
    pub max_bytes: Option<u64>,
    /// Bytes kept of each packet (65535; `MIN_SNAPLEN..=MAX_SNAPLEN`).
    #[serde(default)]
    pub snaplen: Option<u32>,
}

/// One copied packet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptureRecord {
    pub view: View,
    pub dir: Direction,
    /// Nanoseconds since the Unix epoch.
    pub ts_ns: u64,
    /// The packet's length before `snaplen` cut it.
    pub orig_len: u32,
    /// An Ethernet frame (inner) or an IP packet (outer: the IP and UDP
    /// headers are rebuilt from the addresses and ports the socket used;
    /// the kernel adds the real ones).
    pub data: Bytes,
}

/// How a stream ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamEnd {
    /// Records or events sent.
    pub sent: u64,
    /// Dropped because the reader was slower than the packets (the
    /// dataplane never waits for it).
    pub dropped: u64,
    /// Which bound ended it (count, bytes, duration).
    pub why: String,
}

/// One line of a capture's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum CaptureMsg {
    /// First: the capture runs on this host.
    Start {
        local_vtep: IpAddr,
    },
    Record(CaptureRecord),
    End(StreamEnd),
}

/// `live_trace`: verdicts of real packets, filtered: on `vni`, from or to
/// `addr`, from or to transport `port`, of `proto`; `drops` only drops.
/// Every dropped packet that matches is reported; of the others, one in
/// `sample` (64; 0 for drops only). Bounded by `count` (1000) and
/// `duration_ms` (60 s).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LiveTrace {
    #[serde(default)]
    pub vni: Option<Vni>,
    /// `--container`: the addresses of its endpoints on this host; a
    /// packet matches if it comes from or goes to one of them (or was
    /// read from or written to their TAPs). Each must be a local
    /// endpoint's (`not_found` otherwise).
    #[serde(default)]
    pub endpoints: Vec<IpAddr>,
    /// Also from or to this address.
    #[serde(default)]
    pub addr: Option<IpAddr>,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub proto: Option<TraceProto>,
    #[serde(default)]
    pub drops: bool,
    #[serde(default)]
    pub sample: Option<u32>,
    #[serde(default)]
    pub count: Option<u64>,
    #[serde(default)]
    pub duration_ms: Option<u64>,
}

/// An inner flow's addresses (`proto` by IP protocol number name).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Flow {
    pub proto: String,
    pub src: IpAddr,
    pub dst: IpAddr,
    #[serde(default)]
    pub sport: Option<u16>,
    #[serde(default)]
    pub dport: Option<u16>,
}

/// One real packet's verdict.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LiveEvent {
    pub ts_ns: u64,
    /// The host's VTEP.
    pub host: IpAddr,
    /// Where it ended on this host.
    pub stage: TraceStage,
    pub verdict: TraceVerdict,
    /// A drop's `stage/reason`, as the counters name it.
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub flow: Option<Flow>,
    #[serde(default)]
    pub vni: Option<Vni>,
    /// The outer source and destination VTEPs (received or sent).
    #[serde(default)]
    pub outer_src: Option<IpAddr>,
    #[serde(default)]
    pub outer_dst: Option<IpAddr>,
}

/// One line of a live trace's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum LiveMsg {
    Start { local_vtep: IpAddr },
    Event(LiveEvent),
    End(StreamEnd),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_tagged() {
        let m = CaptureMsg::Record(CaptureRecord {
            view: View::Outer,
            dir: Direction::Tx,
            ts_ns: 5,
            orig_len: 2,
            data: Bytes(vec![1, 2]),
        });
        let s = serde_json::to_string(&m).unwrap();
        assert_eq!(
            s,
            r#"{"record":{"view":"outer","dir":"tx","ts_ns":5,"orig_len":2,"data":"AQI="}}"#
        );
        assert_eq!(serde_json::from_str::<CaptureMsg>(&s).unwrap(), m);
        let l: LiveTrace = serde_json::from_str(r#"{"drops":true,"proto":"udp"}"#).unwrap();
        assert!(l.drops && l.proto == Some(TraceProto::Udp));
        assert!(serde_json::from_str::<LiveTrace>(r#"{"drop":true}"#).is_err());
    }
}
