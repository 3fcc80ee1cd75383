//! The `mgmt_frame` target: the byte stream of a connection to the
//! management port (TCP 2377, inside TLS), as the manager reads requests
//! from it and as a node reads a manager's replies, and the same bytes as a
//! join token pasted on the command line.
//!
//! `read_frame` is async; it runs on a current-thread tokio runtime built
//! once, over the input as an `AsyncRead`.
use std::sync::OnceLock;

use tokio::runtime::Runtime;
use vxnet_control::cluster::parse_token;
use vxnet_control::mgmt::ca::SwarmCa;
use vxnet_control::mgmt::rpc::{
    FrameError, MAX_FRAME, Request, Response, RpcError, read_frame, write_frame,
};
use vxnet_control::mgmt::token::{DIGEST_HEX_LEN, JoinToken};

use crate::alloc_probe;

/// The largest allocation reading a refused length may make: bookkeeping,
/// nothing near a body.
const REFUSAL_ALLOC_LIMIT: usize = 64 << 10;

/// A reply as a node reads it.
type Reply = Result<Response, RpcError>;

/// How far one `mgmt_frame` input got (for the seed test).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MgmtReached {
    /// Requests decoded, one per frame.
    pub requests: usize,
    /// Of those, `join`s; `node_list`s; calls from a node.
    pub joins: usize,
    pub node_lists: usize,
    pub node_calls: usize,
    /// A join request's CSR passed the manager's check.
    pub csr_ok: bool,
    /// A join token parsed (a join request's, or the whole input).
    pub token_ok: bool,
    /// Replies decoded (the same bytes, read by a node).
    pub replies: usize,
    /// The stream ended at a length over `MAX_FRAME`.
    pub too_large: bool,
    /// The stream ended at a frame that is not a request.
    pub malformed: bool,
}

fn runtime() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a current-thread runtime")
    })
}

/// A connection's bytes: frames read one after another until one fails, as
/// the manager's server does (and a node's client, for replies). A length
/// over `MAX_FRAME` is refused after its 4 bytes, before a body is
/// allocated; every request and reply decoded survives a serde and a
/// framing round trip; a node call's name is its tag; a join request's
/// token and CSR go through the joiner's and the manager's checks without
/// panicking; a token that parses prints back as itself.
pub fn mgmt_frame(data: &[u8]) -> MgmtReached {
    let mut reached = MgmtReached::default();
    let end = read_frames::<Request>(data, &mut reached, |req, reached| {
        reached.requests += 1;
        check_request(req, reached);
    });
    reached.too_large = matches!(end, FrameError::TooLarge(_));
    reached.malformed = matches!(end, FrameError::Json(_));
    read_frames::<Reply>(data, &mut reached, |_, reached| reached.replies += 1);
    if let Ok(text) = std::str::from_utf8(data) {
        reached.token_ok |= check_token(text);
    }
    reached
}

/// Reads frames of `T` from `data` until one fails; returns that error.
fn read_frames<T>(
    data: &[u8],
    reached: &mut MgmtReached,
    mut each: impl FnMut(&T, &mut MgmtReached),
) -> FrameError
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let rt = runtime();
    let mut stream = data;
    loop {
        let left = stream.len();
        alloc_probe::reset();
        let result = rt.block_on(read_frame::<T, _>(&mut stream));
        let consumed = left - stream.len();
        match result {
            Ok(msg) => {
                let len = u32::from_be_bytes(data[data.len() - left..][..4].try_into().expect("4"));
                assert_eq!(consumed, 4 + len as usize);
                assert!(len as usize <= MAX_FRAME);
                round_trip(&msg, rt);
                each(&msg, reached);
            }
            Err(FrameError::TooLarge(n)) => {
                assert!(n > MAX_FRAME);
                assert_eq!(consumed, 4, "only the length is read");
                let len = u32::from_be_bytes(data[data.len() - left..][..4].try_into().expect("4"));
                assert_eq!(n, len as usize);
                if let Some(peak) = alloc_probe::peak() {
                    assert!(peak < REFUSAL_ALLOC_LIMIT, "{peak} bytes allocated");
                }
                return FrameError::TooLarge(n);
            }
            Err(FrameError::Closed) => {
                assert!(left < 4, "closed with {left} bytes left");
                return FrameError::Closed;
            }
            Err(e) => return e,
        }
    }
}

/// `msg` prints as JSON that parses back to it, and frames and unframes
/// to itself.
fn round_trip<T>(msg: &T, rt: &Runtime)
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let json = serde_json::to_vec(msg).expect("a decoded message serializes");
    let again: T = serde_json::from_slice(&json).expect("what we print parses");
    assert_eq!(&again, msg);
    let mut frame = Vec::new();
    match rt.block_on(write_frame(&mut frame, msg)) {
        Ok(()) => {
            let back: T = rt
                .block_on(read_frame(&mut frame.as_slice()))
                .expect("what we frame unframes");
            assert_eq!(&back, msg);
        }
        // Defaults spelled out can make the JSON longer than what came in.
        Err(FrameError::TooLarge(n)) => assert!(n > MAX_FRAME && json.len() == n),
        Err(e) => panic!("write_frame into a Vec failed: {e}"),
    }
}

fn check_request(req: &Request, reached: &mut MgmtReached) {
    match req {
        Request::Join(j) => {
            reached.joins += 1;
            reached.token_ok |= check_token(&j.token);
            reached.csr_ok |= SwarmCa::check_csr(&j.csr_pem).is_ok();
        }
        Request::NodeList => reached.node_lists += 1,
        Request::Node(call) => {
            reached.node_calls += 1;
            let v = serde_json::to_value(call).expect("a call serializes");
            assert_eq!(v["call"], call.name(), "a call's name is its tag");
        }
    }
}

/// The joiner's parse of a pasted token: what parses prints back as the
/// trimmed input and parses again to itself. Returns whether it parsed.
fn check_token(text: &str) -> bool {
    let Ok(t) = JoinToken::parse(text) else {
        return false;
    };
    let printed = t.to_string();
    assert_eq!(printed, text.trim());
    assert_eq!(JoinToken::parse(&printed).as_ref(), Ok(&t));
    assert_eq!(t.digest().len(), DIGEST_HEX_LEN);
    assert_eq!(
        parse_token(&printed),
        Some((t.digest(), t.secret())),
        "the manager splits it the same way"
    );
    true
}
