//! The local API server: newline-delimited JSON over a Unix socket, for
//! the dataplane's API and the control daemon's alike.
//!
//! This module owns the socket file and the connection threads, nothing
//! else. It reads request lines, decodes them into the API's request type
//! (refusing unknown fields: every request type denies them) and hands
//! them to a handler supplied by the caller; it never interprets a request
//! itself. Everything a client sends is untrusted: a
//! line is bounded by [`MAX_REQUEST_BYTES`], a connection idle for
//! [`IDLE_TIMEOUT`] is closed, and at most [`MAX_CONNECTIONS`] are served at
//! once, so a stuck or hostile client cannot pin memory or threads. When
//! every slot is taken, the connection idle the longest is closed to make
//! way (its client would lose it to the idle timeout anyway), so clients
//! that hold connections open without using them cannot lock out the CLI;
//! only [`MAX_CONNECTIONS`] requests in progress at once can.

use crate::call::Response;
use crate::error::ErrorCode;
use std::collections::HashMap;
use std::fs::{self, DirBuilder};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What the server calls for every decoded request of type `R`.
pub type Handler<R> = Arc<dyn Fn(R) -> Response + Send + Sync>;

/// A handler's answer: one response, or a stream of them (`vxnet dp
/// capture`, `vxnet dp trace --live`). A stream's lines are written as the
/// iterator yields them (`Some(response)`); when it ends, or the client goes
/// away, the iterator is dropped (and with it whatever feeds it) and the
/// connection is closed. A stream that has nothing to send yields `None`
/// now and then (every [`STREAM_IDLE_CHECK`] or so): the server then checks
/// whether the client hung up, so a killed client frees what the stream
/// holds at once instead of at the stream's end. The iterator must itself
/// be bounded in time and count: the server only adds the write timeout.
pub enum Reply {
    One(Response),
    Stream(Box<dyn Iterator<Item = Option<Response>> + Send>),
}

/// How often a stream with nothing to send should yield `None` so the
/// server can notice a client that went away.
pub const STREAM_IDLE_CHECK: Duration = Duration::from_millis(200);

impl From<Response> for Reply {
    fn from(r: Response) -> Reply {
        Reply::One(r)
    }
}

/// A handler that may answer with a stream.
pub type StreamHandler<R> = Arc<dyn Fn(R) -> Reply + Send + Sync>;

/// Longest request line the server reads; longer ones are refused.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// A connection that sends nothing for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// A client that does not read its answer for this long is dropped.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections served at once. Beyond it the connection idle the longest
/// is closed to make way; with none idle, the new one is answered with an
/// error and closed.
pub const MAX_CONNECTIONS: usize = 64;

/// A running API server. Dropping it stops accepting and removes the socket
/// file; connections already open are served until their client closes
/// them or they sit idle for [`IDLE_TIMEOUT`].
pub struct ServerHandle {
    path: PathBuf,
    /// (dev, ino) of the socket we bound, so that drop never removes a
    /// socket file that someone else has since put at the same path.
    identity: Option<(u64, u64)>,
    stop: Arc<AtomicBool>,
    listener: UnixListener,
    thread: Option<JoinHandle<()>>,
}

impl ServerHandle {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocked accept(): shutdown() on a listening socket makes
        // Linux return from accept; the connect is a second, portable nudge.
        let _ = socket2::SockRef::from(&self.listener).shutdown(std::net::Shutdown::Both);
        let _ = UnixStream::connect(&self.path);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Ok(meta) = fs::symlink_metadata(&self.path) {
            if Some((meta.dev(), meta.ino())) == self.identity {
                let _ = fs::remove_file(&self.path);
            }
        }
    }
}

/// Serves the API on the Unix socket at `path`, calling `handler` for every
/// request, each connection on its own thread.
///
/// Creates the parent directory (mode 0755) if needed. A socket file left
/// behind by a dead dataplane is replaced; if a live server answers on it,
/// or the path is not a socket, this refuses with `AddrInUse` rather than
/// stealing or deleting it. The socket is made mode 0660 so that access can
/// be granted through its group.
pub fn serve<R>(path: &Path, handler: Handler<R>) -> io::Result<ServerHandle>
where
    R: serde::de::DeserializeOwned + 'static,
{
    serve_streaming(path, Arc::new(move |r| Reply::One(handler(r))))
}

/// [`serve`] for an API some of whose requests answer with a stream.
pub fn serve_streaming<R>(path: &Path, handler: StreamHandler<R>) -> io::Result<ServerHandle>
where
    R: serde::de::DeserializeOwned + 'static,
{
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .map_err(|e| annotate(e, format!("cannot create {}", dir.display())))?;
    }
    remove_stale_socket(path)?;
    let listener = UnixListener::bind(path)
        .map_err(|e| annotate(e, format!("cannot bind {}", path.display())))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o660))?;
    let identity = fs::symlink_metadata(path).ok().map(|m| (m.dev(), m.ino()));

    let stop = Arc::new(AtomicBool::new(false));
    let accept_listener = listener.try_clone()?;
    let accept_stop = stop.clone();
    let thread = std::thread::Builder::new()
        .name("vxnet-api".into())
        .spawn(move || accept_loop(accept_listener, handler, accept_stop))?;
    tracing::info!(socket = %path.display(), "API server listening");
    Ok(ServerHandle {
        path: path.to_path_buf(),
        identity,
        stop,
        listener,
        thread: Some(thread),
    })
}

fn annotate(e: io::Error, what: String) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// Removes a socket file nobody answers on; refuses if a server is alive on
/// it or if the path is something other than a socket.
fn remove_stale_socket(path: &Path) -> io::Result<()> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!(
                "{} exists and is not a socket; remove it or choose another --socket",
                path.display()
            ),
        ));
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!(
                "another process is already serving on {}; stop it first",
                path.display()
            ),
        )),
        // Nothing listens: the file is left over from a process that died.
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            tracing::info!(socket = %path.display(), "removing stale API socket");
            fs::remove_file(path)
        }
        Err(e) => Err(annotate(
            e,
            format!("cannot tell whether {} is in use", path.display()),
        )),
    }
}

fn accept_loop<R: serde::de::DeserializeOwned + 'static>(
    listener: UnixListener,
    handler: StreamHandler<R>,
    stop: Arc<AtomicBool>,
) {
    let table = Arc::new(Mutex::new(Connections::default()));
    loop {
        let accepted = listener.accept();
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                // EMFILE and friends: keep serving the connections we have;
                // the next accept is retried once the client backlog moves.
                tracing::warn!(error = %e, "API accept failed");
                std::thread::yield_now();
                continue;
            }
        };
        let Some(slot) = Connections::admit(&table, &stream) else {
            refuse_busy(stream);
            continue;
        };
        let handler = handler.clone();
        let spawned = std::thread::Builder::new()
            .name("vxnet-api-conn".into())
            .spawn(move || {
                if let Err(e) = serve_connection(stream, &*handler, &slot) {
                    tracing::debug!(error = %e, "API connection ended");
                }
            });
        if let Err(e) = spawned {
            // The closure (and with it the slot) was dropped: the table is right.
            tracing::warn!(error = %e, "cannot spawn an API connection thread");
        }
    }
}

/// The connections being served: a handle on each to close it, and since
/// when it has been waiting for its next request (`None` while one is
/// being answered).
#[derive(Default)]
struct Connections {
    next: u64,
    open: HashMap<u64, (UnixStream, Option<Instant>)>,
}

impl Connections {
    /// A slot for `stream`, after closing the connection idle the longest
    /// if every slot is taken; `None` when all are answering requests.
    /// (A closed one leaves the table at once; its thread ends as soon as
    /// its blocked read returns, so threads exceed the cap only for that
    /// moment.)
    fn admit(table: &Arc<Mutex<Connections>>, stream: &UnixStream) -> Option<ConnectionSlot> {
        let handle = stream.try_clone().ok()?;
        let mut t = table.lock().unwrap_or_else(|e| e.into_inner());
        if t.open.len() >= MAX_CONNECTIONS {
            let (&oldest, _) = t
                .open
                .iter()
                .filter_map(|(id, (_, idle))| idle.map(|since| (id, since)))
                .min_by_key(|(_, since)| *since)?;
            if let Some((s, _)) = t.open.remove(&oldest) {
                tracing::debug!("API connections all taken: closing the one idle longest");
                let _ = s.shutdown(std::net::Shutdown::Both);
            }
        }
        t.next += 1;
        let id = t.next;
        t.open.insert(id, (handle, Some(Instant::now())));
        Some(ConnectionSlot {
            table: table.clone(),
            id,
        })
    }
}

/// One connection's entry in [`Connections`]; leaves the table when the
/// connection's thread ends, however it ends.
struct ConnectionSlot {
    table: Arc<Mutex<Connections>>,
    id: u64,
}

impl ConnectionSlot {
    /// Marks the connection waiting for its next request: evictable.
    fn set_idle(&self) {
        let mut t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, since)) = t.open.get_mut(&self.id) {
            *since = Some(Instant::now());
        }
    }

    /// Marks the connection answering a request, unless it was evicted
    /// first: then `false`, and the request must not be handled. (It may
    /// have been read just before the eviction closed the socket; the
    /// client, which gets no answer, may send it again, so handling it
    /// too could apply it twice.)
    fn set_busy(&self) -> bool {
        let mut t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        match t.open.get_mut(&self.id) {
            Some((_, since)) => {
                *since = None;
                true
            }
            None => false,
        }
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        t.open.remove(&self.id);
    }
}

fn refuse_busy(mut stream: UnixStream) {
    let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
    let resp = Response::error(
        ErrorCode::Unavailable,
        format!(
            "this server is serving {MAX_CONNECTIONS} API connections already; try again later"
        ),
    );
    let _ = write_response(&mut stream, &resp);
}

fn write_response(w: &mut impl Write, resp: &Response) -> io::Result<()> {
    let mut line = serde_json::to_vec(resp).map_err(io::Error::other)?;
    line.push(b'\n');
    w.write_all(&line)?;
    w.flush()
}

/// Reads request lines until the client closes, idles out or misbehaves.
fn serve_connection<R: serde::de::DeserializeOwned>(
    stream: UnixStream,
    handler: &dyn Fn(R) -> Reply,
    slot: &ConnectionSlot,
) -> io::Result<()> {
    stream.set_read_timeout(Some(IDLE_TIMEOUT))?;
    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        line.clear();
        slot.set_idle();
        // One byte more than allowed tells an over-long line from one that
        // is exactly at the limit.
        let n = (&mut reader)
            .take(MAX_REQUEST_BYTES as u64 + 1)
            .read_until(b'\n', &mut line)?;
        if n == 0 {
            return Ok(());
        }
        if !slot.set_busy() {
            return Ok(());
        }
        let complete = line.last() == Some(&b'\n');
        if !complete && line.len() > MAX_REQUEST_BYTES {
            let resp = Response::error(
                ErrorCode::InvalidArgument,
                format!("request longer than {MAX_REQUEST_BYTES} bytes; closing the connection"),
            );
            return write_response(&mut writer, &resp);
        }
        let text = match std::str::from_utf8(&line) {
            Ok(t) => t.trim(),
            Err(_) => {
                write_response(
                    &mut writer,
                    &Response::error(ErrorCode::InvalidArgument, "bad request: not UTF-8"),
                )?;
                continue;
            }
        };
        if text.is_empty() {
            if complete {
                continue;
            }
            return Ok(());
        }
        let reply = match serde_json::from_str::<R>(text) {
            Ok(req) => call_handler(handler, req),
            Err(e) => Reply::One(Response::error(
                ErrorCode::InvalidArgument,
                format!("bad request: {e}"),
            )),
        };
        let resp = match reply {
            Reply::One(resp) => resp,
            Reply::Stream(items) => {
                for item in items {
                    match item {
                        Some(resp) => write_response(&mut writer, &resp)?,
                        None if hung_up(&writer) => return Ok(()),
                        None => {}
                    }
                }
                return Ok(());
            }
        };
        write_response(&mut writer, &resp)?;
        if !complete {
            // The client closed after a last line without a newline.
            return Ok(());
        }
    }
}

/// Whether the client closed its end (or the socket failed), without
/// waiting: a client streaming an answer sends nothing more, so a read
/// that sees the end of the stream means it is gone.
fn hung_up(stream: &UnixStream) -> bool {
    if stream.set_nonblocking(true).is_err() {
        return true;
    }
    let mut byte = [std::mem::MaybeUninit::<u8>::uninit()];
    let gone = match socket2::SockRef::from(stream).peek(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != io::ErrorKind::WouldBlock,
    };
    stream.set_nonblocking(false).is_err() || gone
}

/// A panicking handler answers an error instead of silently killing the
/// connection, so the client learns something went wrong.
fn call_handler<R>(handler: &dyn Fn(R) -> Reply, req: R) -> Reply {
    match catch_unwind(AssertUnwindSafe(|| handler(req))) {
        Ok(reply) => reply,
        Err(_) => {
            tracing::error!("API request handler panicked");
            Reply::One(Response::error(
                ErrorCode::Internal,
                "internal error while handling the request",
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::{Client, Server};
    use crate::dp::{Endpoints, Fdb, Request, Stats};
    use crate::testutil::TempDir;
    use std::io::Read;
    use std::sync::Mutex;

    fn echo_handler() -> Handler<Request> {
        Arc::new(|req: Request| match req {
            Request::Stats(_) => Response::ok("stats!"),
            Request::Fdb(Fdb { vni }) => Response::ok(vni.map(|v| v.get())),
            other => Response::error(ErrorCode::Internal, format!("unsupported: {other:?}")),
        })
    }

    fn connect(path: &Path) -> Client {
        Client::connect(Server::Dataplane, path).unwrap()
    }

    fn roundtrip_raw(stream: &mut UnixStream, line: &[u8]) -> Response {
        stream.write_all(line).unwrap();
        let mut r = BufReader::new(stream.try_clone().unwrap());
        let mut out = String::new();
        r.read_line(&mut out).unwrap();
        serde_json::from_str(&out).unwrap()
    }

    #[test]
    fn roundtrip_and_several_requests_per_connection() {
        let dir = TempDir::new("srv-rt");
        let path = dir.path().join("sub/dp.sock");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        let handler: Handler<Request> = Arc::new(move |req: Request| {
            seen2.lock().unwrap().push(req.clone());
            Response::ok(format!("{req:?}"))
        });
        let srv = serve(&path, handler).unwrap();
        let meta = fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o660);
        assert_eq!(
            fs::metadata(path.parent().unwrap())
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o755
        );

        let mut c = connect(&path);
        let r1 = c.send(&Request::Stats(Stats {})).unwrap();
        let r2 = c.send(&Request::Endpoints(Endpoints {})).unwrap();
        assert!(r1.ok && r2.ok);
        assert_eq!(r1.result.unwrap(), "Stats(Stats)");
        assert_eq!(r2.result.unwrap(), "Endpoints(Endpoints)");
        assert_eq!(
            *seen.lock().unwrap(),
            vec![Request::Stats(Stats {}), Request::Endpoints(Endpoints {})]
        );
        drop(srv);
        assert!(!path.exists(), "socket file removed on drop");
    }

    /// Sets its flag when dropped: the stream's iterator is gone.
    struct Dropped(Arc<AtomicBool>);

    impl Drop for Dropped {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    #[test]
    fn idle_stream_is_dropped_once_its_client_hangs_up() {
        let dir = TempDir::new("srv-hup");
        let path = dir.path().join("dp.sock");
        let dropped = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&dropped);
        let handler: StreamHandler<Request> = Arc::new(move |_| {
            let guard = Dropped(Arc::clone(&flag));
            let end = std::time::Instant::now() + Duration::from_secs(60);
            let mut started = false;
            Reply::Stream(Box::new(std::iter::from_fn(move || {
                let _keep = &guard;
                if !started {
                    started = true;
                    return Some(Some(Response::ok("start")));
                }
                std::thread::sleep(STREAM_IDLE_CHECK);
                (std::time::Instant::now() < end).then_some(None)
            })))
        });
        let _srv = serve_streaming(&path, handler).unwrap();
        let mut s = UnixStream::connect(&path).unwrap();
        let r = roundtrip_raw(&mut s, b"{\"op\":\"stats\"}\n");
        assert_eq!(r.result.unwrap(), "start");
        assert!(!dropped.load(Ordering::SeqCst), "the stream still runs");
        drop(s);
        let give_up = std::time::Instant::now() + Duration::from_secs(10);
        while !dropped.load(Ordering::SeqCst) {
            assert!(
                std::time::Instant::now() < give_up,
                "the stream outlived its client"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn malformed_json_names_the_problem_and_keeps_the_connection() {
        let dir = TempDir::new("srv-bad");
        let path = dir.path().join("dp.sock");
        let _srv = serve(&path, echo_handler()).unwrap();
        let mut s = UnixStream::connect(&path).unwrap();
        let r = roundtrip_raw(&mut s, b"{\"op\":\"fdb\",\"vni\":0}\n");
        assert!(!r.ok);
        let e = r.error.unwrap();
        assert_eq!(e.code, ErrorCode::InvalidArgument);
        assert!(e.message.starts_with("bad request: "), "{e}");
        assert!(e.message.contains("VNI 0"), "{e}");
        let r = roundtrip_raw(&mut s, b"not json\n");
        assert!(r.error.unwrap().message.starts_with("bad request: "));
        // A field the request does not have is refused, not dropped.
        let r = roundtrip_raw(&mut s, b"{\"op\":\"fdb\",\"vni\":7,\"vin\":8}\n");
        let e = r.error.unwrap();
        assert!(e.message.contains("unknown field"), "{e}");
        // Blank lines are skipped; the connection still works.
        let r = roundtrip_raw(&mut s, b"\n{\"op\":\"fdb\",\"vni\":7}\n");
        assert_eq!(r.result.unwrap(), 7);
    }

    #[test]
    fn oversize_line_is_refused_and_closed() {
        let dir = TempDir::new("srv-big");
        let path = dir.path().join("dp.sock");
        let _srv = serve(&path, echo_handler()).unwrap();
        let mut s = UnixStream::connect(&path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let big = vec![b'x'; MAX_REQUEST_BYTES + 10];
        // The server may close while we are still writing; that is fine.
        let _ = s.write_all(&big);
        let mut out = String::new();
        let _ = BufReader::new(&s).read_to_string(&mut out);
        let first = out.lines().next().unwrap();
        let r: Response = serde_json::from_str(first).unwrap();
        assert!(r.error.unwrap().message.contains("longer than"));
        // And the connection is closed: a read after the answer gives EOF.
        let mut rest = Vec::new();
        assert_eq!(s.read_to_end(&mut rest).unwrap_or(0), 0);
    }

    #[test]
    fn line_at_the_limit_is_accepted() {
        let dir = TempDir::new("srv-limit");
        let path = dir.path().join("dp.sock");
        let _srv = serve(&path, echo_handler()).unwrap();
        let mut s = UnixStream::connect(&path).unwrap();
        let mut line = b"{\"op\":\"stats\"}".to_vec();
        line.resize(MAX_REQUEST_BYTES - 1, b' ');
        line.push(b'\n');
        let r = roundtrip_raw(&mut s, &line);
        assert_eq!(r.result.unwrap(), "stats!");
    }

    #[test]
    fn stale_socket_is_replaced() {
        let dir = TempDir::new("srv-stale");
        let path = dir.path().join("dp.sock");
        // A bound socket whose listener is gone: what a crash leaves.
        drop(UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let _srv = serve(&path, echo_handler()).unwrap();
        let mut c = connect(&path);
        assert!(c.send(&Request::Stats(Stats {})).unwrap().ok);
    }

    #[test]
    fn live_socket_is_not_stolen() {
        let dir = TempDir::new("srv-live");
        let path = dir.path().join("dp.sock");
        let first = serve(&path, echo_handler()).unwrap();
        let err = serve(&path, echo_handler()).err().unwrap();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        assert!(err.to_string().contains("already serving"), "{err}");
        // The first server still answers.
        let mut c = connect(&path);
        assert!(c.send(&Request::Stats(Stats {})).unwrap().ok);
        drop(first);
    }

    #[test]
    fn non_socket_file_is_left_alone() {
        let dir = TempDir::new("srv-file");
        let path = dir.path().join("dp.sock");
        fs::write(&path, b"precious").unwrap();
        let err = serve(&path, echo_handler()).err().unwrap();
        assert!(err.to_string().contains("not a socket"), "{err}");
        assert_eq!(fs::read(&path).unwrap(), b"precious");
    }

    #[test]
    fn panicking_handler_answers_an_error() {
        let dir = TempDir::new("srv-panic");
        let path = dir.path().join("dp.sock");
        let _srv = serve(
            &path,
            Arc::new(|_req: Request| -> Response { panic!("boom") }),
        )
        .unwrap();
        let mut c = connect(&path);
        let r = c.send(&Request::Stats(Stats {})).unwrap();
        assert!(r.error.unwrap().message.contains("internal error"));
    }

    #[test]
    fn connections_are_served_concurrently() {
        let dir = TempDir::new("srv-conc");
        let path = dir.path().join("dp.sock");
        let _srv = serve(&path, echo_handler()).unwrap();
        // An idle first connection must not block a second one.
        let _idle = UnixStream::connect(&path).unwrap();
        let mut c = connect(&path);
        assert!(c.send(&Request::Stats(Stats {})).unwrap().ok);
    }

    /// Clients that hold every slot without using it (each made one
    /// call, then went quiet) do not lock others out: a new client is
    /// served, one held connection is closed for it, and the others stay
    /// usable. (Which one is [`an_evicted_connection_handles_nothing_more`]'s
    /// to check: here a server thread may mark its connection idle only
    /// after its client has its answer.)
    #[test]
    fn idle_connections_make_way_for_new_clients() {
        let dir = TempDir::new("srv-idle");
        let path = dir.path().join("dp.sock");
        let _srv = serve(&path, echo_handler()).unwrap();
        let mut held = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            let mut c = connect(&path);
            assert!(c.send(&Request::Stats(Stats {})).unwrap().ok);
            held.push(c);
        }
        // Poll: until the held connections' threads have marked them
        // idle, all may still count as answering.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut newcomer = connect(&path);
            if newcomer.send(&Request::Stats(Stats {})).is_ok_and(|r| r.ok) {
                break;
            }
            assert!(Instant::now() < deadline, "no idle connection made way");
            std::thread::yield_now();
        }
        let closed = held
            .iter_mut()
            .map(|c| c.send(&Request::Stats(Stats {})))
            .filter(Result::is_err)
            .count();
        assert_eq!(closed, 1, "one held connection made way");
    }

    /// The connection idle the longest is the one closed; a request read
    /// just before its connection was evicted is not handled: its client
    /// gets no answer and may send it again.
    #[test]
    fn an_evicted_connection_handles_nothing_more() {
        let (a, _b) = UnixStream::pair().unwrap();
        let table = Arc::new(Mutex::new(Connections::default()));
        let slot = Connections::admit(&table, &a).unwrap();
        slot.set_idle();
        // A second idle one, idle since later: not the one to close.
        let since = Instant::now();
        while Instant::now() <= since {
            std::hint::spin_loop();
        }
        let (c, _d) = UnixStream::pair().unwrap();
        let later = Connections::admit(&table, &c).unwrap();
        later.set_idle();
        // Every other slot busy.
        let mut others = Vec::new();
        for _ in 2..MAX_CONNECTIONS {
            let (x, _y) = UnixStream::pair().unwrap();
            let s = Connections::admit(&table, &x).unwrap();
            assert!(s.set_busy());
            others.push((s, x));
        }
        let (n, _m) = UnixStream::pair().unwrap();
        let newcomer = Connections::admit(&table, &n);
        assert!(
            newcomer.as_ref().is_some_and(ConnectionSlot::set_busy),
            "the idle one made way"
        );
        assert!(!slot.set_busy(), "the evicted connection handles nothing");
        assert!(later.set_busy(), "the one idle the longest was closed");
        assert!(Connections::admit(&table, &n).is_none(), "none idle now");
    }

    /// With every slot answering a request, a new client is refused with
    /// an answer that says so; a freed slot is usable again.
    #[test]
    fn busy_connections_beyond_the_cap_are_refused_politely() {
        let dir = TempDir::new("srv-cap");
        let path = dir.path().join("dp.sock");
        let entered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let release = Arc::new(AtomicBool::new(false));
        let (e2, r2) = (entered.clone(), release.clone());
        let handler: Handler<Request> = Arc::new(move |req: Request| {
            if matches!(req, Request::Fdb(_)) {
                e2.fetch_add(1, Ordering::SeqCst);
                // Bounded: the test releases it, or it gives up after 20 s.
                let deadline = Instant::now() + Duration::from_secs(20);
                while !r2.load(Ordering::SeqCst) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            Response::ok("done")
        });
        let _srv = serve(&path, handler).unwrap();
        let mut busy = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            let mut s = UnixStream::connect(&path).unwrap();
            s.write_all(b"{\"op\":\"fdb\"}\n").unwrap();
            busy.push(s);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while entered.load(Ordering::SeqCst) < MAX_CONNECTIONS {
            assert!(
                Instant::now() < deadline,
                "requests never reached the handler"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        let mut extra = connect(&path);
        let r = extra.send(&Request::Stats(Stats {})).unwrap();
        assert!(r.error.unwrap().message.contains("try again later"));
        // A finished request frees nothing (its connection stays open) but
        // makes its connection idle, so the next client gets in.
        release.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut c = connect(&path);
            if c.send(&Request::Stats(Stats {})).is_ok_and(|r| r.ok) {
                break;
            }
            assert!(Instant::now() < deadline, "no slot came free");
            std::thread::yield_now();
        }
    }
}
