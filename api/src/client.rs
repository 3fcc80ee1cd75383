//! The client side of a local API (the dataplane's or the control
//! daemon's): one Unix-socket connection that sends requests and reads
//! [`Response`]s, one line each.
//!
//! Errors are worded for the person at the terminal: a failed connect says
//! where it looked and what to check, a silent server is reported as a
//! timeout rather than a hang. Transport failures come back as
//! [`ErrorCode::Unavailable`] or [`ErrorCode::Timeout`], so callers tell
//! them from refusals by code.

use crate::call::{Call, Response};
use crate::error::{ApiError, ApiResult, ErrorCode};
use serde::Serialize;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long [`Client::call`] waits for an answer by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Which server a [`Client`] talks to, for its error messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Server {
    /// `vxnet-dataplane`'s API socket.
    Dataplane,
    /// `vxnet-control`'s API socket.
    Control,
}

impl Server {
    fn name(self) -> &'static str {
        match self {
            Server::Dataplane => "the dataplane",
            Server::Control => "the control daemon",
        }
    }

    fn binary(self) -> &'static str {
        match self {
            Server::Dataplane => "vxnet-dataplane",
            Server::Control => "vxnet-control",
        }
    }
}
/// Longest response line accepted (FDB listings of large networks are big,
/// but a runaway peer must not make the client eat all memory).
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

pub struct Client {
    server: Server,
    path: PathBuf,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    timeout: Duration,
}

impl Client {
    /// Connects to `server`'s API socket at `path`.
    pub fn connect(server: Server, path: impl AsRef<Path>) -> io::Result<Client> {
        let path = path.as_ref();
        let stream = UnixStream::connect(path).map_err(|e| {
            let hint = match e.kind() {
                io::ErrorKind::PermissionDenied => {
                    " (run as root or as a member of the socket's group)"
                }
                _ => "",
            };
            io::Error::new(
                e.kind(),
                format!(
                    "cannot reach {} at {}: is {} running? ({}){hint}",
                    server.name(),
                    path.display(),
                    server.binary(),
                    os_message(&e)
                ),
            )
        })?;
        let writer = stream.try_clone()?;
        let mut c = Client {
            server,
            path: path.to_path_buf(),
            reader: BufReader::new(stream),
            writer,
            timeout: DEFAULT_TIMEOUT,
        };
        c.set_timeout(DEFAULT_TIMEOUT)?;
        Ok(c)
    }

    /// Sets how long a call may wait to send its request and for the answer.
    pub fn set_timeout(&mut self, timeout: Duration) -> io::Result<()> {
        self.writer.set_write_timeout(Some(timeout))?;
        self.writer.set_read_timeout(Some(timeout))?;
        self.timeout = timeout;
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sends `call` and decodes its reply; transport failures are
    /// [`ErrorCode::Unavailable`] (or [`ErrorCode::Timeout`]).
    pub fn call<C: Call>(&mut self, call: C) -> ApiResult<C::Reply> {
        self.send(&call.into_request())
            .map_err(transport_error)?
            .decode::<C>()
    }

    /// Sends one request of any API and waits for its response. An `Ok`
    /// may still be a refusal: check [`Response::ok`].
    pub fn send(&mut self, req: &impl Serialize) -> io::Result<Response> {
        let mut line = serde_json::to_vec(req).map_err(io::Error::other)?;
        line.push(b'\n');
        let sent = self
            .writer
            .write_all(&line)
            .and_then(|()| self.writer.flush());
        match sent {
            Ok(()) => self.read_response(),
            // A server that refuses us (busy, oversize) answers and closes
            // before reading; its answer is still in our receive buffer.
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => self
                .read_response()
                .map_err(|_| self.io_context(e, "sending the request")),
            Err(e) => Err(self.io_context(e, "sending the request")),
        }
    }

    /// Sends `call`, whose answer is a stream, and returns its lines as
    /// they come, each decoded as `C::Reply`, until the server closes the
    /// connection. Reads wait without a timeout (the server bounds the
    /// stream); a refusal is the first and only line.
    pub fn stream<C: Call>(
        mut self,
        call: C,
    ) -> ApiResult<impl Iterator<Item = ApiResult<C::Reply>>> {
        let mut line = serde_json::to_vec(&call.into_request())
            .map_err(|e| ApiError::internal(e.to_string()))?;
        line.push(b'\n');
        self.writer
            .write_all(&line)
            .and_then(|()| self.writer.flush())
            .map_err(|e| transport_error(self.io_context(e, "sending the request")))?;
        self.writer
            .set_read_timeout(None)
            .map_err(transport_error)?;
        let mut done = false;
        Ok(std::iter::from_fn(move || {
            if done {
                return None;
            }
            match self.read_response() {
                Ok(r) => {
                    done = !r.ok;
                    Some(r.decode::<C>())
                }
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => None,
                Err(e) => {
                    done = true;
                    Some(Err(transport_error(e)))
                }
            }
        }))
    }

    fn read_response(&mut self) -> io::Result<Response> {
        let mut buf = Vec::new();
        let n = (&mut self.reader)
            .take(MAX_RESPONSE_BYTES as u64 + 1)
            .read_until(b'\n', &mut buf)
            .map_err(|e| self.io_context(e, "waiting for the answer"))?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "{} at {} closed the connection without answering",
                    self.server.name(),
                    self.path.display()
                ),
            ));
        }
        if buf.last() != Some(&b'\n') && buf.len() > MAX_RESPONSE_BYTES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "the answer of {} is longer than {MAX_RESPONSE_BYTES} bytes",
                    self.server.name()
                ),
            ));
        }
        serde_json::from_slice(&buf).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the answer of {} is not valid: {e}", self.server.name()),
            )
        })
    }

    fn io_context(&self, e: io::Error, doing: &str) -> io::Error {
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "{} at {} did not respond within {}s while {doing}",
                    self.server.name(),
                    self.path.display(),
                    self.timeout.as_secs_f32()
                ),
            ),
            _ => io::Error::new(
                e.kind(),
                format!(
                    "lost the connection to {} at {} while {doing}: {}",
                    self.server.name(),
                    self.path.display(),
                    os_message(&e)
                ),
            ),
        }
    }
}

/// An I/O failure as the API error a caller sees.
pub fn transport_error(e: io::Error) -> ApiError {
    let code = match e.kind() {
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => ErrorCode::Timeout,
        _ => ErrorCode::Unavailable,
    };
    ApiError::new(code, e.to_string())
}

/// The OS's description of an error without Rust's " (os error N)" suffix.
fn os_message(e: &io::Error) -> String {
    let s = e.to_string();
    match s.rfind(" (os error ") {
        Some(i) if s.ends_with(')') => s[..i].to_string(),
        _ => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dp::Stats;
    use crate::testutil::TempDir;
    use std::os::unix::net::UnixListener;

    #[test]
    fn connect_error_says_what_to_do() {
        let dir = TempDir::new("cli-nosock");
        let path = dir.path().join("dataplane.sock");
        let err = Client::connect(Server::Dataplane, &path).err().unwrap();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert_eq!(
            err.to_string(),
            format!(
                "cannot reach the dataplane at {}: is vxnet-dataplane running? (No such file or directory)",
                path.display()
            )
        );
    }

    #[test]
    fn silent_server_times_out() {
        let dir = TempDir::new("cli-silent");
        let path = dir.path().join("dp.sock");
        // Accepted by the kernel backlog, never answered.
        let _l = UnixListener::bind(&path).unwrap();
        let mut c = Client::connect(Server::Dataplane, &path).unwrap();
        c.set_timeout(Duration::from_millis(100)).unwrap();
        let err = c.call(Stats {}).err().unwrap();
        assert_eq!(err.code, ErrorCode::Timeout);
        assert!(err.message.contains("did not respond"), "{err}");
    }

    #[test]
    fn closed_connection_is_reported() {
        let dir = TempDir::new("cli-closed");
        let path = dir.path().join("dp.sock");
        let l = UnixListener::bind(&path).unwrap();
        let t = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut line = String::new();
            BufReader::new(&mut s).read_line(&mut line).unwrap();
            line
        });
        let mut c = Client::connect(Server::Dataplane, &path).unwrap();
        let err = c.send(&crate::dp::Request::Stats(Stats {})).err().unwrap();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!(t.join().unwrap(), "{\"op\":\"stats\"}\n");
    }

    #[test]
    fn os_message_strips_code() {
        let e = io::Error::from_raw_os_error(libc::ECONNREFUSED);
        assert_eq!(os_message(&e), "Connection refused");
    }
}
