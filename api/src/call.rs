//! The envelope every answer travels in, and [`Call`]: a request type that
//! names its reply type, so a client gets the reply decoded as what the
//! server promised and the server's handler must return exactly that.
//!
//! ```text
//! -> {"op":"fdb","vni":4096}
//! <- {"ok":true,"result":[...]}
//! <- {"ok":false,"error":{"code":"not_found","message":"no network with VNI 4096"}}
//! ```

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{ApiError, ApiResult, ErrorCode};

/// One request of an API, with the type of its successful reply.
pub trait Call: Sized {
    /// The API's request enum this call is one variant of.
    type Request: Serialize + DeserializeOwned;
    /// What a successful call answers.
    type Reply: Serialize + DeserializeOwned;
    fn into_request(self) -> Self::Request;
}

/// Implements [`Call`] for request structs: `calls!(Request; Variant(Type) -> Reply, ...)`.
#[macro_export]
macro_rules! calls {
    ($req:ty; $($variant:ident($ty:ty) -> $reply:ty),* $(,)?) => {
        $(impl $crate::call::Call for $ty {
            type Request = $req;
            type Reply = $reply;
            fn into_request(self) -> $req {
                <$req>::$variant(self)
            }
        })*
    };
}

/// The answer to any request, one JSON line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ApiError>,
}

impl Response {
    /// The envelope of a handler's result for call `C`; the type parameter
    /// makes the compiler check the handler answers `C::Reply`.
    pub fn of<C: Call>(r: ApiResult<C::Reply>) -> Response {
        match r {
            Ok(v) => Response::ok(v),
            Err(e) => Response::err(e),
        }
    }

    /// A successful answer carrying `result`.
    pub fn ok(result: impl Serialize) -> Response {
        match serde_json::to_value(result) {
            Ok(v) => Response {
                ok: true,
                result: Some(v),
                error: None,
            },
            Err(e) => Response::err(ApiError::internal(format!(
                "internal error encoding the result: {e}"
            ))),
        }
    }

    pub fn err(e: ApiError) -> Response {
        Response {
            ok: false,
            result: None,
            error: Some(e),
        }
    }

    /// A refusal with `code`.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Response {
        Response::err(ApiError::new(code, message))
    }

    /// Decodes the reply of call `C`, or returns the server's error.
    pub fn decode<C: Call>(self) -> ApiResult<C::Reply> {
        self.decode_as::<C::Reply>()
    }

    /// Decodes a successful answer as `T`.
    pub fn decode_as<T: DeserializeOwned>(self) -> ApiResult<T> {
        if !self.ok {
            return Err(self
                .error
                .unwrap_or_else(|| ApiError::internal("the server refused without saying why")));
        }
        serde_json::from_value(self.result.unwrap_or(serde_json::Value::Null)).map_err(|e| {
            ApiError::internal(format!(
                "the answer is not understood (mismatched versions?): {e}"
            ))
        })
    }
}
