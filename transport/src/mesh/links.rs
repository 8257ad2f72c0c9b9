//! Site links over the swarm: inbound site streams answered with a hello, and samod's dialer that opens one sync
//! session per pair of peers (from the smaller peer).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use futures::future::BoxFuture;
use libp2p::PeerId;
use tokio::sync::mpsc;

use super::{Command, HELLOS_IN_FLIGHT_MAX, SwarmTask};
use crate::identity::device_of_peer;
use crate::link::{self, Gate, Hello, LinkCounters, LinkError, SITE_PROTOCOL};

/// Answers inbound site streams: hello, then hand the stream to samod as an accepted connection.
pub(super) async fn accept_links(
    mut incoming: libp2p_stream::IncomingStreams,
    acceptor: samod::AcceptorHandle,
    gate: Arc<dyn Gate>,
    counters: Arc<LinkCounters>,
    commands: mpsc::Sender<Command>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(HELLOS_IN_FLIGHT_MAX));
    while let Some((peer, stream)) = incoming.next().await {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let (gate, counters, commands, acceptor) = (
            gate.clone(),
            counters.clone(),
            commands.clone(),
            acceptor.clone(),
        );
        tokio::spawn(async move {
            let outcome = link::accept(stream, peer, &*gate).await;
            drop(slot);
            match outcome {
                Ok((hello, framed)) => {
                    let policy = link_policy(&*gate, peer, &hello);
                    let _ = commands.send(Command::Admitted { peer, hello }).await;
                    if acceptor
                        .accept(link::into_samod(framed, peer, counters, policy))
                        .is_err()
                    {
                        tracing::debug!(%peer, "document engine stopped; dropping link");
                    }
                }
                Err(e) => report_link_error(&commands, peer, &e).await,
            }
        });
    }
}

fn link_policy(gate: &dyn Gate, peer: PeerId, hello: &Hello) -> link::LinkPolicy {
    match device_of_peer(&peer) {
        Some(device) => gate.link_policy(device, hello),
        None => link::LinkPolicy::default(),
    }
}

async fn report_link_error(commands: &mpsc::Sender<Command>, peer: PeerId, e: &LinkError) {
    if e.is_refusal() {
        tracing::warn!(%peer, "site link refused: {e}");
        let _ = commands
            .send(Command::Refused {
                peer,
                reason: match e {
                    LinkError::TheyRefused { .. } => "they_refused".into(),
                    LinkError::NotADevice(_) | LinkError::Malformed(_) => "malformed_hello".into(),
                    _ => "not_enrolled".into(),
                },
            })
            .await;
    } else {
        tracing::debug!(%peer, "site link failed: {e}");
    }
}

/// samod's dialer for one admitted-or-not-yet peer: each connect opens a fresh site stream and says hello.
struct PeerDialer {
    peer: PeerId,
    control: libp2p_stream::Control,
    gate: Arc<dyn Gate>,
    counters: Arc<LinkCounters>,
    commands: mpsc::Sender<Command>,
}

impl samod::Dialer for PeerDialer {
    type Error = LinkError;

    fn url(&self) -> samod::Url {
        samod::Url::parse(&format!("libp2p://{}", self.peer))
            .expect("a peer id is a valid url host")
    }

    fn connect(&self) -> BoxFuture<'static, Result<samod::Transport, samod::DialError<LinkError>>> {
        let mut control = self.control.clone();
        let (peer, gate, counters, commands) = (
            self.peer,
            self.gate.clone(),
            self.counters.clone(),
            self.commands.clone(),
        );
        Box::pin(async move {
            let stream = control
                .open_stream(peer, SITE_PROTOCOL)
                .await
                .map_err(samod::DialError::transient)?;
            match link::open(stream, peer, &*gate).await {
                Ok((hello, framed)) => {
                    let policy = link_policy(&*gate, peer, &hello);
                    let _ = commands.send(Command::Admitted { peer, hello }).await;
                    Ok(link::into_samod(framed, peer, counters, policy))
                }
                Err(e) if e.is_refusal() => {
                    report_link_error(&commands, peer, &e).await;
                    Err(samod::DialError::PermanentFailure(e))
                }
                Err(e) => Err(samod::DialError::transient(e)),
            }
        })
    }
}

impl SwarmTask {
    pub(super) fn open_session(&mut self, peer: PeerId) {
        let dialer = PeerDialer {
            peer,
            control: self.control.clone(),
            gate: self.gate.clone(),
            counters: self.metrics.links.clone(),
            commands: self.commands.clone(),
        };
        let backoff = samod::BackoffConfig {
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(5),
            max_retries: None,
        };
        match self.repo.dial(backoff, Arc::new(dialer)) {
            Ok(handle) => {
                self.sessions.insert(peer, handle);
            }
            Err(_) => tracing::warn!("document engine stopped; no session for {peer}"),
        }
    }
}
