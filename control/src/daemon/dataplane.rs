//! The daemon's seam to the local dataplane: a narrow trait over "send one
//! API request, get one answer", the real implementation over the
//! dataplane's Unix socket (reconnecting when the dataplane restarts), and
//! a typed [`DataplaneExt::call`] on top.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use vxnet_api::client::{Client, Server, transport_error};
use vxnet_api::dp::{Request, ShowReport};
use vxnet_api::{ApiResult, Call, Response};

/// How long one dataplane call may take before the daemon gives up on it.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Something that answers dataplane API requests.
pub trait DataplaneApi: Send {
    /// One request, one answer; an [`vxnet_api::ErrorCode::Unavailable`]
    /// error when the dataplane cannot be reached.
    fn send(&mut self, req: &Request) -> ApiResult<Response>;
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

    fn connect(&mut self) -> ApiResult<&mut Client> {
        if self.conn.is_none() {
            let mut c = Client::connect(Server::Dataplane, &self.path).map_err(transport_error)?;
            c.set_timeout(CALL_TIMEOUT).map_err(transport_error)?;
            self.conn = Some(c);
        }
        self.conn
            .as_mut()
            .ok_or_else(|| vxnet_api::ApiError::unavailable("no dataplane connection"))
    }
}

impl DataplaneApi for SocketDataplane {
    fn send(&mut self, req: &Request) -> ApiResult<Response> {
        if let Ok(r) = self.connect()?.send(req) {
            return Ok(r);
        }
        // A connection from before a dataplane restart fails on first use;
        // one fresh connection tells that apart from a dataplane that is down.
        self.conn = None;
        let r = self.connect()?.send(req).map_err(transport_error);
        if r.is_err() {
            self.conn = None;
        }
        r
    }
}

/// Typed calls on any [`DataplaneApi`].
pub trait DataplaneExt: DataplaneApi {
    /// The call's reply, or the dataplane's refusal.
    fn call<C: Call<Request = Request>>(&mut self, c: C) -> ApiResult<C::Reply> {
        self.send(&c.into_request())?
            .decode::<C>()
            .map_err(|e| e.context("the dataplane refused"))
    }

    fn show(&mut self) -> ApiResult<ShowReport> {
        self.call(vxnet_api::dp::Show {})
    }
}

impl<D: DataplaneApi + ?Sized> DataplaneExt for D {}

/// The address the dataplane sends VXLAN from, unless it listens on all.
pub fn dataplane_vtep(show: &ShowReport) -> Option<IpAddr> {
    (!show.local_vtep.is_unspecified()).then_some(show.local_vtep)
}
