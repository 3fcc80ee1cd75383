//! Forwarding a query to the host's upstream resolvers: the I/O half of
//! [`super::answer::Forward`], run in the daemon's own (host) network
//! namespace, so loopback resolvers such as systemd-resolved's 127.0.0.53
//! work.
//!
//! Docker asks its (at most 3) upstreams one after the other, giving each
//! 4 s, so one dead resolver costs every lookup 4 s and two make the stub
//! give up (glibc waits 5 s). Here the whole query has one deadline
//! ([`super::FORWARD_TIMEOUT`], 4 s) and the upstreams are hedged: the
//! next one is asked as soon as the previous one fails (a refused
//! connection, SERVFAIL or REFUSED, which Docker also skips), or after
//! [`HEDGE_DELAY`] without an answer, while the earlier ones may still
//! answer. The first good answer wins.
//!
//! Each attempt uses a fresh socket (a random source port) and a random
//! ID (RFC 5452 §9.2); a connected UDP socket takes datagrams from the
//! upstream's address only, and [`Forward::accept_reply`] checks the ID
//! and the question. A truncated UDP answer is asked again over TCP, and
//! a query that came over TCP goes over TCP.
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep_until};

use super::answer::{Forward, Transport, UpstreamReply};

/// How long an upstream may stay silent before the next one is asked too.
pub const HEDGE_DELAY: Duration = Duration::from_secs(1);

/// How a forwarded query ended.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// An upstream answered (any RCODE but SERVFAIL and REFUSED).
    Answered(UpstreamReply),
    /// No good answer before the deadline.
    TimedOut,
    /// Every upstream failed before the deadline.
    Failed,
}

/// Forwards `fwd` to `upstreams` (in order, hedged; see the module doc),
/// attempt `i` with query ID `ids[i]`, all within `timeout`.
pub(crate) async fn forward(
    fwd: Arc<Forward>,
    upstreams: &[SocketAddr],
    ids: &[u16],
    timeout: Duration,
) -> Outcome {
    let deadline = Instant::now() + timeout;
    let mut attempts = JoinSet::new();
    let mut next = 0;
    let mut next_at = Instant::now();
    loop {
        if next < upstreams.len() && next < ids.len() && Instant::now() >= next_at {
            attempts.spawn(attempt(Arc::clone(&fwd), upstreams[next], ids[next]));
            next += 1;
            next_at = Instant::now() + HEDGE_DELAY;
        }
        let more = next < upstreams.len() && next < ids.len();
        if !more && attempts.is_empty() {
            return Outcome::Failed;
        }
        tokio::select! {
            _ = sleep_until(deadline) => return Outcome::TimedOut,
            _ = sleep_until(next_at), if more => {}
            Some(done) = attempts.join_next() => match done {
                Ok(Ok(reply))
                    if !matches!(reply.rcode, ResponseCode::ServFail | ResponseCode::Refused) =>
                {
                    return Outcome::Answered(reply);
                }
                failed => {
                    if let Ok(Err(e)) = &failed {
                        tracing::debug!(error = %e, question = %fwd.question(), "dns: upstream attempt failed");
                    }
                    next_at = Instant::now();
                }
            },
        }
    }
}

/// One upstream, one question: UDP (then TCP if truncated) or TCP.
async fn attempt(fwd: Arc<Forward>, upstream: SocketAddr, id: u16) -> io::Result<UpstreamReply> {
    let query = fwd.upstream_query(id);
    if fwd.transport() == Transport::Tcp {
        return over_tcp(&fwd, upstream, id, &query).await;
    }
    let reply = over_udp(&fwd, upstream, id, &query).await?;
    if reply.truncated {
        // The upstream's datagram was too small for the answer; the
        // asker's may be larger. If not, the truncated answer goes back
        // and the asker retries over TCP itself.
        match over_tcp(&fwd, upstream, id, &query).await {
            Ok(full) if fwd.fits(full.bytes.len()) => return Ok(full),
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(error = %e, %upstream, "dns: TCP retry of a truncated answer failed")
            }
        }
    }
    Ok(reply)
}

fn mismatch() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        "reply does not match the query (ID or question)",
    )
}

async fn over_udp(
    fwd: &Forward,
    upstream: SocketAddr,
    id: u16,
    query: &[u8],
) -> io::Result<UpstreamReply> {
    let local: SocketAddr = if upstream.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = UdpSocket::bind(local).await?;
    sock.connect(upstream).await?;
    sock.send(query).await?;
    // Big enough for any datagram: an upstream may answer a non-EDNS
    // query with more than 512 octets (Docker reads these too).
    let mut buf = vec![0u8; 65_535];
    loop {
        let n = sock.recv(&mut buf).await?;
        if let Some(reply) = fwd.accept_reply(id, &buf[..n]) {
            return Ok(reply);
        }
        // A stale or forged datagram: keep waiting for the real one.
    }
}

async fn over_tcp(
    fwd: &Forward,
    upstream: SocketAddr,
    id: u16,
    query: &[u8],
) -> io::Result<UpstreamReply> {
    let len = u16::try_from(query.len()).map_err(|_| mismatch())?;
    let mut stream = TcpStream::connect(upstream).await?;
    let mut framed = Vec::with_capacity(2 + query.len());
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(query);
    stream.write_all(&framed).await?;
    let n = stream.read_u16().await?;
    let mut buf = vec![0u8; usize::from(n)];
    stream.read_exact(&mut buf).await?;
    fwd.accept_reply(id, &buf).ok_or_else(mismatch)
}
