//! The daemon's seam to the local dataplane: a narrow trait over "send one
//! API request, get one answer", the real implementation over the
//! dataplane's Unix socket (reconnecting when the dataplane restarts), and
//! typed helpers for the calls the daemon makes.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::de::DeserializeOwned;
use vxnet_dataplane::api::{EndpointInfo, NetworkInfo, Request, Response, ShowReport};
use vxnet_dataplane::client::Client;

/// How long one dataplane call may take before the daemon gives up on it.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Something that answers dataplane API requests.
pub trait DataplaneApi: Send {
    /// One request, one answer; `Err` when the dataplane cannot be reached.
    fn call(&mut self, req: &Request) -> Result<Response, String>;
}

/// The dataplane at a socket path. Connects lazily and reconnects once per
/// call when the connection broke (the dataplane restarted).
pub struct SocketDataplane {
    path: PathBuf,
    conn: Option<Client>,
}

impl SocketDataplane {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            conn: None,
        }
    }

    fn connect(&mut self) -> Result<&mut Client, String> {
        if self.conn.is_none() {
            let mut c = Client::connect(&self.path).map_err(|e| e.to_string())?;
            c.set_timeout(CALL_TIMEOUT).map_err(|e| e.to_string())?;
            self.conn = Some(c);
        }
        self.conn
            .as_mut()
            .ok_or_else(|| "no dataplane connection".to_owned())
    }
}

impl DataplaneApi for SocketDataplane {
    fn call(&mut self, req: &Request) -> Result<Response, String> {
        if let Ok(r) = self.connect()?.call(req) {
            return Ok(r);
        }
        // A connection from before a dataplane restart fails on first use;
        // one fresh connection tells that apart from a dataplane that is down.
        self.conn = None;
        let r = self.connect()?.call(req).map_err(|e| e.to_string());
        if r.is_err() {
            self.conn = None;
        }
        r
    }
}

/// Typed calls on any [`DataplaneApi`].
pub trait DataplaneExt: DataplaneApi {
    /// The call's result decoded as `T`, or the dataplane's refusal.
    fn request<T: DeserializeOwned>(&mut self, req: &Request) -> Result<T, String> {
        let r = self.call(req)?;
        if !r.ok {
            return Err(format!(
                "the dataplane refused: {}",
                r.error.unwrap_or_else(|| "no reason given".into())
            ));
        }
        serde_json::from_value(r.result.unwrap_or(serde_json::Value::Null))
            .map_err(|e| format!("the dataplane's answer is not understood: {e}"))
    }

    /// The call succeeded; its result is ignored.
    fn command(&mut self, req: &Request) -> Result<(), String> {
        self.request::<serde_json::Value>(req).map(|_| ())
    }

    fn show(&mut self) -> Result<ShowReport, String> {
        self.request(&Request::Show)
    }

    fn endpoints(&mut self) -> Result<Vec<EndpointInfo>, String> {
        self.request(&Request::Endpoints)
    }

    fn networks(&mut self) -> Result<Vec<NetworkInfo>, String> {
        self.request(&Request::Networks)
    }
}

impl<D: DataplaneApi + ?Sized> DataplaneExt for D {}

/// The address the dataplane sends VXLAN from, unless it listens on all.
pub fn dataplane_vtep(show: &ShowReport) -> Option<IpAddr> {
    (!show.local_vtep.is_unspecified()).then_some(show.local_vtep)
}
