//! Errors every API answers with: a machine-readable [`ErrorCode`] and a
//! message for the person at the terminal.
//!
//! Callers decide on the code, never on the message's English text (STYLE
//! §10). The CLI maps each code to its exit status
//! ([`ErrorCode::exit_status`]).

use serde::{Deserialize, Serialize};

/// What kind of failure an [`ApiError`] is. Modelled on gRPC's status codes
/// (the set swarmkit answers with), trimmed to what vxnet tells apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request is malformed or a value is out of range; nothing was
    /// done. Fix the request.
    InvalidArgument,
    /// A named object (network, container, node, endpoint) does not exist.
    NotFound,
    /// The object exists already, or a value (name, address, MAC, port) is
    /// taken.
    AlreadyExists,
    /// The system is not in a state that allows this: a network in use,
    /// a running container, not a manager, not in a swarm.
    FailedPrecondition,
    /// The caller may not do this (a worker asking manager-only things).
    PermissionDenied,
    /// A process this one depends on cannot be reached: the dataplane, the
    /// control daemon, the manager. Retrying later may work.
    Unavailable,
    /// The operation did not finish in time.
    Timeout,
    /// A bug or an unexpected failure of the host (a syscall, the store).
    Internal,
}

impl ErrorCode {
    /// The exit status the `vxnet` CLI uses for this code. 2 is also what
    /// clap uses for usage errors, so every "fix your command" case shares
    /// it.
    pub fn exit_status(self) -> u8 {
        match self {
            ErrorCode::InvalidArgument => 2,
            ErrorCode::NotFound => 3,
            ErrorCode::AlreadyExists | ErrorCode::FailedPrecondition => 4,
            ErrorCode::PermissionDenied => 5,
            ErrorCode::Unavailable | ErrorCode::Timeout => 6,
            ErrorCode::Internal => 1,
        }
    }
}

/// A refused or failed request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(deny_unknown_fields)]
#[error("{message}")]
pub struct ApiError {
    pub code: ErrorCode,
    /// What went wrong and, where possible, what to do about it.
    pub message: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidArgument, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }

    pub fn exists(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::AlreadyExists, message)
    }

    pub fn precondition(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::FailedPrecondition, message)
    }

    pub fn denied(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::PermissionDenied, message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unavailable, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }

    /// The same error with `context: ` in front of its message.
    pub fn context(self, context: impl std::fmt::Display) -> Self {
        ApiError {
            code: self.code,
            message: format!("{context}: {}", self.message),
        }
    }
}

/// Results of API handlers.
pub type ApiResult<T> = Result<T, ApiError>;
