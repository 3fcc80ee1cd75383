//! The client side of the daemon's socket, for the `vxnet` CLI and tests:
//! one request line out, one response line back.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use vxnet_dataplane::api::Response;

use super::api::CtlRequest;

/// Creating a container (namespace, TAPs) may take a few seconds on a busy
/// host; a daemon silent for this long is reported.
pub const TIMEOUT: Duration = Duration::from_secs(60);
/// Longest answer accepted.
pub const MAX_RESPONSE_BYTES: u64 = 16 * 1024 * 1024;

pub struct CtlClient {
    path: PathBuf,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl CtlClient {
    pub fn connect(path: impl AsRef<Path>) -> io::Result<CtlClient> {
        let path = path.as_ref();
        let stream = UnixStream::connect(path).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "cannot reach the control daemon at {}: is vxnet-control running? ({e})",
                    path.display()
                ),
            )
        })?;
        stream.set_read_timeout(Some(TIMEOUT))?;
        stream.set_write_timeout(Some(TIMEOUT))?;
        Ok(CtlClient {
            path: path.to_path_buf(),
            writer: stream.try_clone()?,
            reader: BufReader::new(stream),
        })
    }

    /// Sends one request and reads its answer (which may be a refusal).
    pub fn call(&mut self, req: &CtlRequest) -> io::Result<Response> {
        let mut line = serde_json::to_vec(req).map_err(io::Error::other)?;
        line.push(b'\n');
        self.writer.write_all(&line)?;
        self.writer.flush()?;
        let mut buf = Vec::new();
        let n = (&mut self.reader)
            .take(MAX_RESPONSE_BYTES)
            .read_until(b'\n', &mut buf)
            .map_err(|e| match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "the control daemon at {} did not answer within {}s",
                        self.path.display(),
                        TIMEOUT.as_secs()
                    ),
                ),
                _ => e,
            })?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "the control daemon at {} closed the connection without answering",
                    self.path.display()
                ),
            ));
        }
        serde_json::from_slice(&buf).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the control daemon's answer is not valid: {e}"),
            )
        })
    }

    /// [`CtlClient::call`], with a refusal turned into `Err(message)` and the
    /// result decoded as `T`.
    pub fn request<T: DeserializeOwned>(&mut self, req: &CtlRequest) -> Result<T, String> {
        let r = self.call(req).map_err(|e| e.to_string())?;
        if !r.ok {
            return Err(r.error.unwrap_or_else(|| "refused without a reason".into()));
        }
        serde_json::from_value(r.result.unwrap_or(serde_json::Value::Null))
            .map_err(|e| format!("the control daemon's answer is not understood: {e}"))
    }
}
