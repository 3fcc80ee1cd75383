//! The manager's side of a join: check the token, record the node, sign its
//! certificate, hand it the keyring and settings. The rules themselves
//! (token comparison, node validation) are [`crate::cluster`]'s.

use std::net::SocketAddr;

use rand_core::RngCore;

use super::ca::SwarmCa;
use super::rpc::{
    ClusterSettings, ErrorCode, INVALID_TOKEN_MESSAGE, JoinRequest, JoinResponse, RpcError,
    advertise_or_source,
};
use crate::cluster;
use crate::error::ControlError;
use crate::model::{Node, UnixTime};
use crate::store::{Store, StoreExt};

fn failed(e: ControlError) -> RpcError {
    let code = match e {
        ControlError::Store(_) | ControlError::NotInitialized => ErrorCode::Failed,
        _ => ErrorCode::BadRequest,
    };
    RpcError::new(code, e.to_string())
}

/// Admits a joining host: refuses a token that is not one of the swarm's
/// current ones ([`ErrorCode::InvalidToken`]) and an invalid request
/// ([`ErrorCode::BadRequest`]) before writing anything, then records the
/// node and signs its CSR. The caller serializes calls (the store's lock).
pub fn admit<S: Store + ?Sized>(
    store: &S,
    ca: &SwarmCa,
    req: &JoinRequest,
    from: SocketAddr,
    now: UnixTime,
    rng: &mut dyn RngCore,
) -> Result<JoinResponse, RpcError> {
    let c = cluster::cluster(store).map_err(failed)?;
    let role = cluster::token_role(&c, req.token.trim())
        .ok_or_else(|| RpcError::new(ErrorCode::InvalidToken, INVALID_TOKEN_MESSAGE))?;
    SwarmCa::check_csr(&req.csr_pem)
        .map_err(|e| RpcError::new(ErrorCode::BadRequest, e.to_string()))?;
    let node = cluster::add_node(
        store,
        &cluster::JoinRequest {
            hostname: req.hostname.clone(),
            role,
            advertise_addr: advertise_or_source(req, from),
            data_path_addr: req.data_path_addr,
            public_key: req.public_key,
        },
        now,
        rng,
    )
    .map_err(failed)?;
    let cert_pem = match ca.sign_csr(&req.csr_pem, &node.id, role, now) {
        Ok(c) => c,
        Err(e) => {
            // A node without a certificate could never connect: undo.
            let _ = store.delete::<Node>(&node.id);
            return Err(RpcError::new(ErrorCode::Failed, e.to_string()));
        }
    };
    Ok(JoinResponse {
        node,
        cert_pem,
        ca_cert_pem: ca.cert_pem().to_owned(),
        gossip_keys: c.gossip_keys,
        settings: ClusterSettings {
            cluster_id: c.id,
            data_path_port: c.data_path_port,
            default_pool: c.default_pool,
        },
    })
}
