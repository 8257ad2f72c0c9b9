//! One site link: a libp2p stream that starts with the hello exchange and then carries samod's sync messages.
//!
//! The peer with the smaller PeerId opens the stream (it is samod's dialer); the other side accepts it. Before
//! either side hands the stream to samod, each sends a [`Hello`] carrying its enrollment certificate, and each asks
//! its [`Gate`] whether to admit the other. A refused peer gets one [`Verdict::Refused`] frame saying why, and the
//! stream is closed before any document byte moves. Every frame is length-delimited and bounded
//! ([`FRAME_BYTES_MAX`]); a frame over the bound closes the link.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD_NO_PAD as B64;
use futures::{SinkExt as _, StreamExt as _, TryStreamExt as _};
use libp2p::{PeerId, StreamProtocol};
use popmesh_crdt::DeviceId;
use prometheus_client::metrics::counter::Counter;
use serde::{Deserialize, Serialize};
use tokio_util::codec::{Framed, LengthDelimitedCodec};
use tokio_util::compat::{Compat, FuturesAsyncReadCompatExt as _};

use crate::identity::device_of_peer;
use crate::outbox::{FRAGMENT_BYTES, Outbox, Reassembly};

/// The protocol every site link speaks.
/// Version 2: sync messages travel in classed fragments ([`crate::outbox`]).
pub const SITE_PROTOCOL: StreamProtocol = StreamProtocol::new("/popmesh/site/2");

/// The largest sync frame a link accepts. A bigger one closes the link (samod splits nothing itself, so this also
/// bounds the largest single change bundle: 32 MiB is far above a show's documents).
pub const FRAME_BYTES_MAX: usize = 32 * 1024 * 1024;

/// The largest hello frame (a certificate and a document id).
pub const HELLO_BYTES_MAX: usize = 16 * 1024;

/// How long the hello exchange may take before the link is dropped.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// What a device says about itself when a link opens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Wire version, `1`.
    pub v: u32,
    /// The site id (hex) the device believes it belongs to.
    pub site: String,
    /// The device's enrollment certificate, canonical bytes in base64.
    pub cert: String,
    /// The samod document id of the site directory, when the device holds it.
    pub directory: Option<String>,
    /// The UDP port of the device's blob endpoint (iroh), reachable at the address this link came from. Peers learn
    /// blob addresses here, so the site needs no second discovery service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blobs: Option<u16>,
}

impl Hello {
    pub fn new(site: String, cert: &[u8], directory: Option<String>) -> Self {
        Self {
            v: popmesh_device::gate::HELLO_VERSION,
            site,
            cert: B64.encode(cert),
            directory,
            blobs: None,
        }
    }

    /// Says where this device serves blobs.
    pub fn with_blobs(mut self, port: Option<u16>) -> Self {
        self.blobs = port;
        self
    }

    /// The certificate bytes, or why they are not base64.
    pub fn cert_bytes(&self) -> Result<Vec<u8>, String> {
        B64.decode(&self.cert)
            .map_err(|e| format!("certificate is not base64: {e}"))
    }
}

/// The acceptor's answer to a hello.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    /// The acceptor admits the opener, and says its own hello.
    Admitted {
        hello: Hello,
    },
    /// The opener admits the acceptor in turn: only now does either side hand the stream to samod.
    Confirmed,
    Refused {
        reason: String,
    },
}

/// Decides who may sync: the node implements it against its replica of the site directory.
pub trait Gate: Send + Sync + 'static {
    /// What this device says when a link opens.
    fn hello(&self) -> Hello;
    /// Whether to admit `device` (authenticated by noise as the link's PeerId) after it said `hello`.
    fn admit(&self, device: DeviceId, hello: &Hello) -> Result<(), String>;
    /// How the link to an admitted `device` schedules what it sends.
    fn link_policy(&self, _device: DeviceId, _hello: &Hello) -> LinkPolicy {
        LinkPolicy::default()
    }
}

/// Why a link did not come up.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("link i/o: {0}")]
    Io(#[from] io::Error),
    #[error("peer closed the link during the hello")]
    Closed,
    #[error("hello timed out after {0:?}")]
    Timeout(Duration),
    #[error("malformed hello: {0}")]
    Malformed(String),
    #[error("peer id {0} is not an ed25519 device key")]
    NotADevice(PeerId),
    /// We refused the peer.
    #[error("refused {peer}: {reason}")]
    WeRefused { peer: PeerId, reason: String },
    /// The peer refused us.
    #[error("peer {peer} refused us: {reason}")]
    TheyRefused { peer: PeerId, reason: String },
}

impl LinkError {
    /// Whether the link failed because one side does not trust the other (as opposed to the network).
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            LinkError::WeRefused { .. }
                | LinkError::TheyRefused { .. }
                | LinkError::NotADevice(_)
                | LinkError::Malformed(_)
        )
    }
}

/// Sync traffic counters shared by every link.
#[derive(Debug, Clone, Default)]
pub struct LinkCounters {
    pub messages_in: Counter,
    pub messages_out: Counter,
    pub bytes_in: Counter,
    pub bytes_out: Counter,
}

/// Any byte stream a link can run over: a libp2p stream in the node, an in-memory pipe in tests.
pub trait LinkIo: futures::AsyncRead + futures::AsyncWrite + Send + Unpin + 'static {}
impl<T: futures::AsyncRead + futures::AsyncWrite + Send + Unpin + 'static> LinkIo for T {}

/// A link's framed stream.
pub type Framing<S> = Framed<Compat<S>, LengthDelimitedCodec>;

fn framing<S: LinkIo>(stream: S, max: usize) -> Framing<S> {
    let codec = LengthDelimitedCodec::builder()
        .max_frame_length(max)
        .new_codec();
    Framed::new(stream.compat(), codec)
}

async fn read_json<T: for<'de> Deserialize<'de>, S: LinkIo>(
    framed: &mut Framing<S>,
) -> Result<T, LinkError> {
    let frame = framed.next().await.ok_or(LinkError::Closed)??;
    serde_json::from_slice(&frame).map_err(|e| LinkError::Malformed(e.to_string()))
}

async fn write_json<T: Serialize, S: LinkIo>(
    framed: &mut Framing<S>,
    value: &T,
) -> Result<(), LinkError> {
    let bytes = serde_json::to_vec(value).map_err(|e| LinkError::Malformed(e.to_string()))?;
    framed.send(bytes::Bytes::from(bytes)).await?;
    Ok(())
}

fn device(peer: PeerId) -> Result<DeviceId, LinkError> {
    device_of_peer(&peer).ok_or(LinkError::NotADevice(peer))
}

/// The opening side of the hello: send ours, read the verdict, check theirs, confirm or refuse.
pub async fn open<S: LinkIo>(
    stream: S,
    peer: PeerId,
    gate: &dyn Gate,
) -> Result<(Hello, Framing<S>), LinkError> {
    let device = device(peer)?;
    let mut framed = framing(stream, HELLO_BYTES_MAX);
    let exchange = async {
        write_json(&mut framed, &gate.hello()).await?;
        match read_json::<Verdict, S>(&mut framed).await? {
            Verdict::Refused { reason } => Err(LinkError::TheyRefused { peer, reason }),
            Verdict::Confirmed => Err(LinkError::Malformed("confirmation before hello".into())),
            Verdict::Admitted { hello } => match gate.admit(device, &hello) {
                Ok(()) => {
                    write_json(&mut framed, &Verdict::Confirmed).await?;
                    Ok(hello)
                }
                Err(reason) => {
                    let refusal = Verdict::Refused {
                        reason: reason.clone(),
                    };
                    let _ = write_json(&mut framed, &refusal).await;
                    Err(LinkError::WeRefused { peer, reason })
                }
            },
        }
    };
    let hello = tokio::time::timeout(HELLO_TIMEOUT, exchange)
        .await
        .map_err(|_| LinkError::Timeout(HELLO_TIMEOUT))??;
    Ok((hello, framed))
}

/// The accepting side of the hello: read theirs, answer with a verdict, wait for the opener to confirm.
pub async fn accept<S: LinkIo>(
    stream: S,
    peer: PeerId,
    gate: &dyn Gate,
) -> Result<(Hello, Framing<S>), LinkError> {
    let device = device(peer)?;
    let mut framed = framing(stream, HELLO_BYTES_MAX);
    let exchange = async {
        let hello: Hello = read_json(&mut framed).await?;
        match gate.admit(device, &hello) {
            Ok(()) => {
                let ours = Verdict::Admitted {
                    hello: gate.hello(),
                };
                write_json(&mut framed, &ours).await?;
                match read_json::<Verdict, S>(&mut framed).await? {
                    Verdict::Confirmed => Ok(hello),
                    Verdict::Refused { reason } => Err(LinkError::TheyRefused { peer, reason }),
                    Verdict::Admitted { .. } => Err(LinkError::Malformed("a second hello".into())),
                }
            }
            Err(reason) => {
                let refusal = Verdict::Refused {
                    reason: reason.clone(),
                };
                // Best effort: the peer learns why, then the stream closes.
                let _ = write_json(&mut framed, &refusal).await;
                let _ = futures::SinkExt::<bytes::Bytes>::close(&mut framed).await;
                Err(LinkError::WeRefused { peer, reason })
            }
        }
    };
    let hello = tokio::time::timeout(HELLO_TIMEOUT, exchange)
        .await
        .map_err(|_| LinkError::Timeout(HELLO_TIMEOUT))??;
    Ok((hello, framed))
}

/// Puts a samod message in its class (0 first).
pub type Classifier = Arc<dyn Fn(&[u8]) -> u8 + Send + Sync>;

/// Judges each samod message a peer sends before samod sees it: an error closes the link (with that message
/// undelivered), so what it refuses is never applied.
pub type Inspector = Arc<dyn Fn(&[u8]) -> Result<(), String> + Send + Sync>;

/// How a link schedules what it sends (see [`crate::outbox`]): the node decides per peer.
#[derive(Clone, Default)]
pub struct LinkPolicy {
    /// A samod message's class, 0 first; every message in class 0 when none.
    pub classify: Option<Classifier>,
    /// Bytes per second this link may send (none: no cap). For a thin uplink, so popmesh does not take all of it.
    pub limit: Option<u64>,
    /// Kept equal to the bytes queued on this link, for whoever needs to know the link is busy.
    pub backlog: Option<Arc<AtomicU64>>,
    /// What may reach samod from this peer (everything when none).
    pub inspect: Option<Inspector>,
}

impl std::fmt::Debug for LinkPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkPolicy")
            .field("classified", &self.classify.is_some())
            .field("limit", &self.limit)
            .field("inspected", &self.inspect.is_some())
            .finish_non_exhaustive()
    }
}

/// Turns a link whose hello succeeded into a samod transport bound to the authenticated device. What samod sends
/// goes through an [`Outbox`]: by class, in fragments, at most `policy.limit` bytes a second.
pub fn into_samod<S: LinkIo>(
    framed: Framing<S>,
    peer: PeerId,
    counters: Arc<LinkCounters>,
    policy: LinkPolicy,
) -> samod::Transport {
    // Keep what was buffered after the hello, and raise the frame bound from hello size to a fragment's.
    let mut parts = framed.into_parts();
    parts.codec = LengthDelimitedCodec::builder()
        .max_frame_length(FRAGMENT_BYTES + 1)
        .new_codec();
    let framed = Framed::from_parts(parts);
    let (mut sink, stream) = framed.split();
    let c_in = counters.clone();
    let mut reassembly = Reassembly::new(FRAME_BYTES_MAX);
    let inspect = policy.inspect.clone();
    let stream = stream.try_filter_map(move |frame| {
        c_in.bytes_in.inc_by(frame.len() as u64);
        let mut message = reassembly
            .push(&frame)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e));
        if let Ok(Some(m)) = &message {
            c_in.messages_in.inc();
            if let Some(Err(why)) = inspect.as_ref().map(|i| i(m)) {
                message = Err(io::Error::new(io::ErrorKind::PermissionDenied, why));
            }
        }
        futures::future::ready(message)
    });
    let (tx, mut rx) = futures::channel::mpsc::unbounded::<Vec<u8>>();
    tokio::spawn(async move {
        let mut outbox = Outbox::default();
        let mut next_free = tokio::time::Instant::now();
        let mut closed = false;
        let classify = |m: &[u8]| policy.classify.as_ref().map_or(0, |c| c(m));
        loop {
            // Everything samod has handed over, before choosing what goes next.
            while !closed {
                match rx.try_recv() {
                    Ok(m) => outbox.push(classify(&m), m),
                    Err(futures::channel::mpsc::TryRecvError::Closed) => closed = true,
                    Err(_) => break,
                }
            }
            if outbox.is_empty() {
                if closed {
                    break;
                }
                match rx.next().await {
                    Some(m) => outbox.push(classify(&m), m),
                    None => closed = true,
                }
                continue;
            }
            let Some((frame, last)) = outbox.next_frame() else {
                continue;
            };
            if let Some(rate) = policy.limit.filter(|r| *r > 0) {
                let now = tokio::time::Instant::now();
                if next_free > now {
                    tokio::time::sleep_until(next_free).await;
                }
                next_free =
                    next_free.max(now) + Duration::from_secs_f64(frame.len() as f64 / rate as f64);
            }
            if let Some(b) = &policy.backlog {
                b.store(outbox.queued_bytes() as u64, Ordering::Relaxed);
            }
            counters.bytes_out.inc_by(frame.len() as u64);
            if last {
                counters.messages_out.inc();
            }
            if sink.send(bytes::Bytes::from(frame)).await.is_err() {
                break;
            }
        }
        if let Some(b) = &policy.backlog {
            b.store(0, Ordering::Relaxed);
        }
        let _ = sink.close().await;
    });
    let sink = tx.sink_map_err(|e| io::Error::new(io::ErrorKind::BrokenPipe, e));
    let expected = device_of_peer(&peer).map(|d| samod::PeerId::from_string(d.to_hex()));
    let transport = samod::Transport::new(stream, sink);
    match expected {
        Some(id) => transport.with_expected_peer_id(id),
        None => transport,
    }
}

#[cfg(test)]
mod tests {
    //! A hostile or broken peer on the other end of a link: every case ends in an error, none in a panic, and
    //! nothing reaches samod.

    use super::*;
    use crate::identity::{libp2p_keypair, peer_id};
    use popmesh_crdt::SecretKey;
    use tokio::io::AsyncWriteExt as _;
    use tokio_util::compat::TokioAsyncReadCompatExt as _;

    /// Admits hellos whose site is "site-a" and says it is `me`.
    struct TestGate(&'static str);

    impl Gate for TestGate {
        fn hello(&self) -> Hello {
            Hello::new(self.0.into(), b"cert", None)
        }
        fn admit(&self, _device: DeviceId, hello: &Hello) -> Result<(), String> {
            if hello.site == "site-a" {
                Ok(())
            } else {
                Err(format!("wrong site {}", hello.site))
            }
        }
    }

    fn peer(seed: u8) -> PeerId {
        let key = SecretKey::from_seed([seed; 32]);
        assert_eq!(
            libp2p_keypair(&key).public().to_peer_id(),
            peer_id(&key.public()).expect("ed25519")
        );
        peer_id(&key.public()).expect("ed25519")
    }

    /// Runs the hello between an opener claiming `opener_site` and an acceptor claiming `acceptor_site`.
    async fn hello_between(
        opener_site: &'static str,
        acceptor_site: &'static str,
    ) -> (
        Result<(Hello, Framing<impl LinkIo>), LinkError>,
        Result<(Hello, Framing<impl LinkIo>), LinkError>,
    ) {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let (opener, acceptor) = (TestGate(opener_site), TestGate(acceptor_site));
        tokio::join!(
            open(a.compat(), peer(2), &opener),
            accept(b.compat(), peer(1), &acceptor)
        )
    }

    #[tokio::test]
    async fn two_members_of_one_site_admit_each_other() {
        let (opened, accepted) = hello_between("site-a", "site-a").await;
        assert_eq!(opened.expect("opener admitted").0.site, "site-a");
        assert_eq!(accepted.expect("acceptor admitted").0.site, "site-a");
    }

    #[tokio::test]
    async fn a_peer_from_another_site_is_refused_by_whichever_side_checks_first() {
        // The opener is the outsider: the acceptor refuses it and says why.
        let (opened, accepted) = hello_between("site-b", "site-a").await;
        assert!(
            matches!(accepted, Err(LinkError::WeRefused { .. })),
            "{:?}",
            accepted.err()
        );
        assert!(
            matches!(opened, Err(LinkError::TheyRefused { .. })),
            "{:?}",
            opened.err()
        );
        // The acceptor is the outsider: the opener refuses it, and the acceptor learns it was refused.
        let (opened, accepted) = hello_between("site-a", "site-b").await;
        assert!(
            matches!(opened, Err(LinkError::WeRefused { .. })),
            "{:?}",
            opened.err()
        );
        assert!(
            matches!(accepted, Err(LinkError::TheyRefused { .. })),
            "{:?}",
            accepted.err()
        );
    }

    #[tokio::test]
    async fn garbage_an_oversized_frame_or_silence_end_the_link_without_a_panic() {
        // Garbage in a well-formed frame.
        let (a, mut b) = tokio::io::duplex(64 * 1024);
        b.write_all(&[0, 0, 0, 5, b'{', b'x', 0xff, b'!', b'}'])
            .await
            .expect("write");
        let out = accept(a.compat(), peer(1), &TestGate("site-a")).await;
        assert!(matches!(out, Err(LinkError::Malformed(_))), "{out:?}");

        // A frame header announcing 4 GiB.
        let (a, mut b) = tokio::io::duplex(64 * 1024);
        b.write_all(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3])
            .await
            .expect("write");
        let out = accept(a.compat(), peer(1), &TestGate("site-a")).await;
        assert!(matches!(out, Err(LinkError::Io(_))), "{out:?}");

        // A peer that hangs up mid-hello.
        let (a, b) = tokio::io::duplex(64 * 1024);
        drop(b);
        let out = accept(a.compat(), peer(1), &TestGate("site-a")).await;
        assert!(
            matches!(out, Err(LinkError::Closed | LinkError::Io(_))),
            "{out:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_never_says_hello_times_out() {
        let (a, _b) = tokio::io::duplex(64 * 1024);
        let out = accept(a.compat(), peer(1), &TestGate("site-a")).await;
        assert!(matches!(out, Err(LinkError::Timeout(_))), "{out:?}");
    }

    #[tokio::test]
    async fn garbage_after_the_hello_ends_that_link_and_the_engine_keeps_serving() {
        use tokio::io::AsyncReadExt as _;
        let repo = samod::Repo::build_tokio().load().await;
        let acceptor = repo
            .make_acceptor(samod::Url::parse("test://hostile").expect("url"))
            .expect("acceptor");
        let (ours, mut theirs) = tokio::io::duplex(64 * 1024);
        let framed = framing(ours.compat(), FRAME_BYTES_MAX);
        acceptor
            .accept(into_samod(
                framed,
                peer(1),
                Arc::new(LinkCounters::default()),
                LinkPolicy::default(),
            ))
            .expect("accepted");
        // Frames that are not samod messages, then one that is not even CBOR, then one of no class.
        for junk in [
            &b"\x00\xa1\x64type\x64join"[..],
            &[0x00, 0xde, 0xad, 0xbe, 0xef][..],
            &[0x7f, 0x00][..],
        ] {
            let mut frame = (junk.len() as u32).to_be_bytes().to_vec();
            frame.extend_from_slice(junk);
            let _ = theirs.write_all(&frame).await;
        }
        // The engine ends the link: the peer's read sees the end of the stream.
        let mut buf = [0u8; 1024];
        let ended = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match theirs.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(ended.is_ok(), "the engine kept a link that sent garbage");
        // And it still works for everyone else.
        let doc = repo
            .create(automerge::Automerge::new())
            .await
            .expect("engine still running");
        assert!(!doc.document_id().to_string().is_empty());
        repo.stop().await;
    }
}
