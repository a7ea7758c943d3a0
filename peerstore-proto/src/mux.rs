//! The stream multiplexer: yamux (`/yamux/1.0.0`, wire compatible with every libp2p yamux),
//! wrapped for libp2p here rather than through `libp2p-yamux` so that the frame size can be set.
//!
//! `libp2p-yamux` uses yamux 0.13's defaults, which cut every write into 16 KiB frames; a
//! 256 KiB block then costs 16 frames, each its own TLS/Noise record and send. With frames of
//! up to [`SPLIT_SEND_SIZE`] our own request-response transfer of 256 KiB blocks moved 20-30%
//! more per CPU second on the 2-core machines (`examples/libp2p-baseline.rs`: 240-300 ->
//! 290-390 MiB/s). Frames are still bounded by the receiver's window, so peers with other
//! settings interoperate. Everything else is yamux 0.13's default (auto-tuned windows), except
//! that what a peer may have in flight on one connection is bounded by
//! [`MAX_CONNECTION_WINDOW`] instead of 1 GiB.

use std::collections::VecDeque;
use std::io;
use std::iter;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use futures::{ready, AsyncRead, AsyncWrite};
use libp2p::core::muxing::{StreamMuxer, StreamMuxerEvent};
use libp2p::core::upgrade::{InboundConnectionUpgrade, OutboundConnectionUpgrade, UpgradeInfo};

/// Largest yamux frame we send.
pub const SPLIT_SEND_SIZE: usize = 256 << 10;
/// Inbound streams opened while nobody accepts them; beyond that new ones are reset. Equal to
/// yamux's ACK backlog, which well-behaved peers never exceed.
const MAX_BUFFERED_INBOUND: usize = 256;
/// Streams of one connection (yamux's default; a peer that opens more loses the connection).
const MAX_STREAMS: usize = 512;
/// Bytes a peer may send on one connection before the node has read them: every stream's
/// initial 256 KiB window (the yamux specification's) plus 64 MiB by which auto-tuned windows
/// of fast streams may grow. yamux's default is 1 GiB.
pub const MAX_CONNECTION_WINDOW: usize = MAX_STREAMS * (256 << 10);

/// The connection upgrade that negotiates yamux.
#[derive(Clone, Debug)]
pub struct Yamux(yamux::Config);

impl Default for Yamux {
    fn default() -> Self {
        let mut cfg = yamux::Config::default();
        // A stream's remote half-close ends it for us too, as the rest of libp2p expects.
        cfg.set_read_after_close(false);
        cfg.set_split_send_size(SPLIT_SEND_SIZE);
        cfg.set_max_num_streams(MAX_STREAMS);
        cfg.set_max_connection_receive_window(Some(MAX_CONNECTION_WINDOW));
        Yamux(cfg)
    }
}

impl UpgradeInfo for Yamux {
    type Info = &'static str;
    type InfoIter = iter::Once<Self::Info>;

    fn protocol_info(&self) -> Self::InfoIter {
        iter::once("/yamux/1.0.0")
    }
}

impl Yamux {
    fn upgrade<C>(self, io: C, mode: yamux::Mode) -> futures::future::Ready<io::Result<Muxer<C>>>
    where
        C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        futures::future::ready(Ok(Muxer::new(yamux::Connection::new(io, self.0, mode))))
    }
}

impl<C> InboundConnectionUpgrade<C> for Yamux
where
    C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    type Output = Muxer<C>;
    type Error = io::Error;
    type Future = futures::future::Ready<io::Result<Muxer<C>>>;

    fn upgrade_inbound(self, io: C, _: Self::Info) -> Self::Future {
        self.upgrade(io, yamux::Mode::Server)
    }
}

impl<C> OutboundConnectionUpgrade<C> for Yamux
where
    C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    type Output = Muxer<C>;
    type Error = io::Error;
    type Future = futures::future::Ready<io::Result<Muxer<C>>>;

    fn upgrade_outbound(self, io: C, _: Self::Info) -> Self::Future {
        self.upgrade(io, yamux::Mode::Client)
    }
}

/// One multiplexed connection.
pub struct Muxer<C> {
    conn: yamux::Connection<C>,
    /// Yamux only makes progress in `poll_next_inbound`, which `StreamMuxer::poll` calls too;
    /// streams that arrive then wait here for `poll_inbound`.
    inbound: VecDeque<yamux::Stream>,
    inbound_waker: Option<Waker>,
}

impl<C> Muxer<C>
where
    C: AsyncRead + AsyncWrite + Unpin + 'static,
{
    fn new(conn: yamux::Connection<C>) -> Self {
        Muxer {
            conn,
            inbound: VecDeque::new(),
            inbound_waker: None,
        }
    }

    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<yamux::Stream, yamux::ConnectionError>> {
        match ready!(self.conn.poll_next_inbound(cx)) {
            Some(r) => Poll::Ready(r),
            None => Poll::Ready(Err(yamux::ConnectionError::Closed)),
        }
    }
}

impl<C> StreamMuxer for Muxer<C>
where
    C: AsyncRead + AsyncWrite + Unpin + 'static,
{
    type Substream = yamux::Stream;
    type Error = yamux::ConnectionError;

    fn poll_inbound(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::Substream, Self::Error>> {
        let this = self.get_mut();
        if let Some(s) = this.inbound.pop_front() {
            return Poll::Ready(Ok(s));
        }
        if let Poll::Ready(r) = this.poll_next(cx) {
            return Poll::Ready(r);
        }
        this.inbound_waker = Some(cx.waker().clone());
        Poll::Pending
    }

    fn poll_outbound(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::Substream, Self::Error>> {
        self.get_mut().conn.poll_new_outbound(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.get_mut().conn.poll_close(cx)
    }

    fn poll(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<StreamMuxerEvent, Self::Error>> {
        let this = self.get_mut();
        let stream = ready!(this.poll_next(cx))?;
        if this.inbound.len() >= MAX_BUFFERED_INBOUND {
            tracing::warn!(%stream, "too many inbound streams waiting; resetting a new one");
            drop(stream);
        } else {
            this.inbound.push_back(stream);
            if let Some(w) = this.inbound_waker.take() {
                w.wake();
            }
        }
        // Let the caller run other work, then come back for more.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}
