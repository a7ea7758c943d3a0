//! A data-protocol client: a small libp2p endpoint that sends [`Request`]s to one node and waits
//! for the [`Response`]s, many in flight at once. Used by `peerstore-node status`, by
//! peerstore-client and by the tests. It is not a ring member and answers no requests.

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use libp2p::identity::Keypair;
use libp2p::request_response::{self, OutboundRequestId};
use libp2p::swarm::SwarmEvent;
use tokio::sync::{mpsc, oneshot};

use crate::driver::{build_swarm, BehaviourEvent};
use crate::proto::{ErrorCode, NodeAddr, Request, Response};

/// Why a call did not produce an answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RpcError {
    #[error("cannot reach node {addr}: {reason}; check that it runs and the address is right")]
    Unreachable { addr: String, reason: String },
    #[error("the connection to the node was closed")]
    Closed,
}

type Reply = oneshot::Sender<Result<Response, RpcError>>;

/// A handle to the client endpoint. Cheap to clone; dropping every clone stops the endpoint.
#[derive(Clone)]
pub struct RpcClient {
    tx: mpsc::Sender<(Request, Reply)>,
    pub node: NodeAddr,
}

impl RpcClient {
    /// Starts an endpoint that talks to `node`. `timeout` bounds every request.
    pub fn start(node: NodeAddr, timeout: Duration) -> Result<RpcClient, RpcError> {
        let swarm = build_swarm(Keypair::generate_ed25519(), timeout, false).map_err(|e| {
            RpcError::Unreachable {
                addr: node.to_string(),
                reason: e.to_string(),
            }
        })?;
        let (tx, rx) = mpsc::channel(256);
        tokio::spawn(event_loop(swarm, node.clone(), rx));
        Ok(RpcClient { tx, node })
    }

    /// Sends one request and waits for its answer.
    pub async fn call(&self, request: Request) -> Result<Response, RpcError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send((request, tx))
            .await
            .map_err(|_| RpcError::Closed)?;
        rx.await.map_err(|_| RpcError::Closed)?
    }
}

async fn event_loop(
    mut swarm: libp2p::Swarm<crate::driver::Behaviour>,
    node: NodeAddr,
    mut rx: mpsc::Receiver<(Request, Reply)>,
) {
    let mut pending: HashMap<OutboundRequestId, Reply> = HashMap::new();
    let mut closed = false;
    loop {
        if closed && pending.is_empty() {
            return;
        }
        tokio::select! {
            cmd = rx.recv(), if !closed => match cmd {
                Some((request, reply)) => {
                    let id = swarm.behaviour_mut().data.send_request_with_addresses(
                        &node.peer,
                        request,
                        vec![node.addr.clone()],
                    );
                    pending.insert(id, reply);
                }
                None => closed = true,
            },
            ev = swarm.select_next_some() => {
                if let SwarmEvent::Behaviour(BehaviourEvent::Data(ev)) = ev {
                    match ev {
                        request_response::Event::Message {
                            message: request_response::Message::Response { request_id, response },
                            ..
                        } => {
                            if let Some(r) = pending.remove(&request_id) {
                                let _ = r.send(Ok(response));
                            }
                        }
                        request_response::Event::OutboundFailure { request_id, error, .. } => {
                            if let Some(r) = pending.remove(&request_id) {
                                let _ = r.send(Err(RpcError::Unreachable {
                                    addr: node.to_string(),
                                    reason: error.to_string(),
                                }));
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
    }
}

/// Turns an error response into a one-line message.
pub fn describe(resp: &Response) -> String {
    match resp {
        Response::Error { code, message } => match code {
            ErrorCode::Full => format!("node full: {message}"),
            _ => message.clone(),
        },
        other => format!("unexpected answer: {other:?}"),
    }
}
