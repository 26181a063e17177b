//! Async connections and listeners for tokio: [`AsyncConnection`] is `AsyncRead + AsyncWrite`
//! over any transport, [`AsyncListener::accept`] is cancel-safe.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};

use crate::blocking::{Connection, Connector, ListenOptions, Peer, SlotGuard, Stream};
use crate::endpoint::{Endpoint, Transport};
use crate::error::{ConduitError, Result};
#[cfg(feature = "vchan")]
use crate::xen::{VchanStream, Xen};
#[cfg(feature = "vchan")]
use std::sync::atomic::{AtomicBool, Ordering};
#[cfg(any(feature = "vchan", feature = "tls"))]
use std::sync::Arc;
#[cfg(feature = "vchan")]
use vchan::AsyncVchan;
#[cfg(feature = "vchan")]
use xen_types::DomId;

/// A vchan as an async stream, on any platform.
#[cfg(feature = "vchan")]
pub enum AsyncVchanStream {
    /// On the in-process simulation.
    #[cfg(feature = "sim")]
    Sim(AsyncVchan<vchan::sim::SimDomain>),
    /// On the simulated host.
    #[cfg(feature = "xensim")]
    Xensim(AsyncVchan<vchan::xensim::XensimDomain>),
    /// On real Xen.
    #[cfg(target_os = "linux")]
    Real(AsyncVchan<vchan::xen::XenDomain>),
}

#[cfg(feature = "vchan")]
impl AsyncVchanStream {
    /// Register a connected vchan with the runtime (call inside one).
    pub fn new(stream: VchanStream) -> io::Result<AsyncVchanStream> {
        Ok(match stream {
            #[cfg(feature = "sim")]
            VchanStream::Sim(v) => AsyncVchanStream::Sim(AsyncVchan::new(v)?),
            #[cfg(feature = "xensim")]
            VchanStream::Xensim(v) => AsyncVchanStream::Xensim(AsyncVchan::new(v)?),
            #[cfg(target_os = "linux")]
            VchanStream::Real(v) => AsyncVchanStream::Real(AsyncVchan::new(v)?),
        })
    }
}

#[cfg(feature = "vchan")]
macro_rules! each_async {
    ($stream:expr, $v:ident => $body:expr) => {
        match $stream {
            #[cfg(feature = "sim")]
            AsyncVchanStream::Sim($v) => $body,
            #[cfg(feature = "xensim")]
            AsyncVchanStream::Xensim($v) => $body,
            #[cfg(target_os = "linux")]
            AsyncVchanStream::Real($v) => $body,
        }
    };
}

#[cfg(feature = "vchan")]
impl AsyncVchanStream {
    /// Fill the ring straight from a socket: see [`AsyncVchan::poll_fill_from`].
    pub(crate) fn poll_fill_from<S: vchan::AsyncSource>(
        &mut self,
        cx: &mut Context<'_>,
        source: &S,
        max: usize,
    ) -> Poll<std::result::Result<usize, vchan::SpliceError>> {
        each_async!(self, v => v.poll_fill_from(cx, source, max))
    }

    /// Drain the ring straight into a socket: see [`AsyncVchan::poll_drain_to`].
    pub(crate) fn poll_drain_to<S: vchan::AsyncSource>(
        &mut self,
        cx: &mut Context<'_>,
        sink: &S,
        max: usize,
    ) -> Poll<std::result::Result<usize, vchan::SpliceError>> {
        each_async!(self, v => v.poll_drain_to(cx, sink, max))
    }
}

pub(crate) enum AsyncStream {
    Tcp(TcpStream),
    Unix(UnixStream),
    /// Boxed: a vchan endpoint is hundreds of bytes, a socket a few.
    #[cfg(feature = "vchan")]
    Vchan(Box<AsyncVchanStream>),
    /// TLS over one of the others.
    #[cfg(feature = "tls")]
    Tls(Box<AsyncTls>),
}

impl AsyncStream {
    fn poll_drained(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            AsyncStream::Tcp(_) | AsyncStream::Unix(_) => Poll::Ready(Ok(())),
            #[cfg(feature = "vchan")]
            AsyncStream::Vchan(v) => {
                each_async!(&**v, v => v.poll_drained(cx).map_err(io::Error::from))
            }
            #[cfg(feature = "tls")]
            AsyncStream::Tls(tls) => match &**tls {
                AsyncTls::Ready(stream) => stream.get_ref().0.poll_drained(cx),
                AsyncTls::Accepting { .. } | AsyncTls::Failed => Poll::Ready(Ok(())),
            },
        }
    }
}

/// A TLS session over an async transport.
#[cfg(feature = "tls")]
pub(crate) enum AsyncTls {
    /// An accepted connection whose handshake its first read or write drives, so that a slow
    /// client never holds up the listener.
    Accepting {
        accept: tokio_rustls::Accept<AsyncStream>,
        /// How long the handshake may take from its first poll.
        timeout: std::time::Duration,
        /// Armed at the first poll.
        deadline: Option<crate::deadline::Deadline>,
    },
    /// Handshake done.
    Ready(tokio_rustls::TlsStream<AsyncStream>),
    /// The handshake failed (the error went to whoever drove it).
    Failed,
}

#[cfg(feature = "tls")]
impl AsyncTls {
    /// The established stream, driving an accepted connection's handshake first (failing it
    /// with `TimedOut` once its deadline has passed).
    fn poll_ready(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<&mut tokio_rustls::TlsStream<AsyncStream>>> {
        use std::future::Future;
        if let AsyncTls::Accepting {
            accept,
            timeout,
            deadline,
        } = self
        {
            let failed = match Pin::new(accept).poll(cx) {
                Poll::Ready(Ok(stream)) => {
                    *self = AsyncTls::Ready(stream.into());
                    None
                }
                Poll::Ready(Err(e)) => Some(e),
                Poll::Pending => {
                    let timeout = *timeout;
                    match deadline
                        .get_or_insert_with(|| crate::deadline::Deadline::after(timeout))
                        .poll_expired(cx)
                    {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Ok(())) => Some(crate::tls::handshake_timed_out(timeout)),
                        Poll::Ready(Err(e)) => Some(e),
                    }
                }
            };
            if let Some(e) = failed {
                // Dropping the handshake closes the transport.
                *self = AsyncTls::Failed;
                return Poll::Ready(Err(e));
            }
        }
        match self {
            AsyncTls::Ready(stream) => Poll::Ready(Ok(stream)),
            _ => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "the TLS handshake failed",
            ))),
        }
    }
}

/// Sends `close_notify` (unless `shutdown()` did) and whatever records are still queued, as
/// far as the transport takes them at once: a drop cannot wait, so with the transport full (a
/// peer that does not read) the peer may still see an unexpected end. Errors are ignored.
#[cfg(feature = "tls")]
impl Drop for AsyncTls {
    fn drop(&mut self) {
        let AsyncTls::Ready(stream) = self else {
            return;
        };
        match stream {
            tokio_rustls::TlsStream::Client(s) => {
                let (io, session) = s.get_mut();
                send_close_notify_now(io, session);
            }
            tokio_rustls::TlsStream::Server(s) => {
                let (io, session) = s.get_mut();
                send_close_notify_now(io, session);
            }
        }
    }
}

/// Queue `close_notify` and write what the session has queued without waiting.
#[cfg(feature = "tls")]
fn send_close_notify_now<Data>(io: &mut AsyncStream, session: &mut rustls::ConnectionCommon<Data>) {
    session.send_close_notify();
    let mut cx = Context::from_waker(std::task::Waker::noop());
    let mut now = WithoutWaiting { io, cx: &mut cx };
    while session.wants_write() {
        match session.write_tls(&mut now) {
            Ok(n) if n > 0 => {}
            _ => return,
        }
    }
}

/// An async transport as a `Write` that never waits: `Pending` is `WouldBlock`.
#[cfg(feature = "tls")]
struct WithoutWaiting<'a, 'b> {
    io: &'a mut AsyncStream,
    cx: &'a mut Context<'b>,
}

#[cfg(feature = "tls")]
impl io::Write for WithoutWaiting<'_, '_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match Pin::new(&mut *self.io).poll_write(self.cx, buf) {
            Poll::Ready(outcome) => outcome,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match Pin::new(&mut *self.io).poll_write_vectored(self.cx, bufs) {
            Poll::Ready(outcome) => outcome,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Poll `$op` on the established TLS stream under `$tls`.
#[cfg(feature = "tls")]
macro_rules! on_tls {
    ($tls:expr, $cx:expr, $s:ident => $op:expr) => {
        match $tls.poll_ready($cx) {
            Poll::Ready(Ok($s)) => $op,
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    };
}

impl AsyncRead for AsyncStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            AsyncStream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            AsyncStream::Unix(s) => Pin::new(s).poll_read(cx, buf),
            #[cfg(feature = "vchan")]
            AsyncStream::Vchan(v) => each_async!(&mut **v, s => Pin::new(s).poll_read(cx, buf)),
            #[cfg(feature = "tls")]
            AsyncStream::Tls(t) => on_tls!(t, cx, s => Pin::new(s).poll_read(cx, buf)),
        }
    }
}

impl AsyncWrite for AsyncStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            AsyncStream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            AsyncStream::Unix(s) => Pin::new(s).poll_write(cx, buf),
            #[cfg(feature = "vchan")]
            AsyncStream::Vchan(v) => each_async!(&mut **v, s => Pin::new(s).poll_write(cx, buf)),
            #[cfg(feature = "tls")]
            AsyncStream::Tls(t) => on_tls!(t, cx, s => Pin::new(s).poll_write(cx, buf)),
        }
    }

    /// Gathers on every transport: rustls hands its queued records over this way. A vchan
    /// copies the slices into its ring one after another, while they fit, with no buffer in
    /// between: the count is of whole slices and then part of the one the ring filled on, and
    /// `Pending` only if nothing fit.
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            AsyncStream::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            AsyncStream::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            #[cfg(feature = "vchan")]
            // The vchan gathers itself: the slices go into the ring one after another.
            AsyncStream::Vchan(v) => {
                each_async!(&mut **v, s => Pin::new(s).poll_write_vectored(cx, bufs))
            }
            #[cfg(feature = "tls")]
            AsyncStream::Tls(t) => on_tls!(t, cx, s => Pin::new(s).poll_write_vectored(cx, bufs)),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            AsyncStream::Tcp(s) => Pin::new(s).poll_flush(cx),
            AsyncStream::Unix(s) => Pin::new(s).poll_flush(cx),
            #[cfg(feature = "vchan")]
            AsyncStream::Vchan(v) => each_async!(&mut **v, s => Pin::new(s).poll_flush(cx)),
            #[cfg(feature = "tls")]
            AsyncStream::Tls(t) => on_tls!(t, cx, s => Pin::new(s).poll_flush(cx)),
        }
    }

    /// The half-close; over TLS, `close_notify` and then the transport's half-close.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            AsyncStream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            AsyncStream::Unix(s) => Pin::new(s).poll_shutdown(cx),
            #[cfg(feature = "vchan")]
            AsyncStream::Vchan(v) => each_async!(&mut **v, s => Pin::new(s).poll_shutdown(cx)),
            #[cfg(feature = "tls")]
            AsyncStream::Tls(t) => on_tls!(t, cx, s => Pin::new(s).poll_shutdown(cx)),
        }
    }
}

/// A connected byte stream over any transport, for tokio: `AsyncRead + AsyncWrite`;
/// `shutdown()` is the half-close (the peer reads end-of-stream, this end can still read; over
/// TLS it sends `close_notify` first). Dropping a TLS connection sends `close_notify` if the
/// transport takes it at once (a drop cannot wait): end with `shutdown()` to be sure the peer
/// reads a clean end of stream rather than an unexpected one.
pub struct AsyncConnection {
    pub(crate) stream: AsyncStream,
    peer: Peer,
    _slot: Option<SlotGuard>,
}

impl AsyncConnection {
    /// Who is on the other end.
    pub fn peer(&self) -> &Peer {
        &self.peer
    }

    /// Whether TLS runs over the transport.
    pub fn is_tls(&self) -> bool {
        #[cfg(feature = "tls")]
        if let AsyncStream::Tls(_) = self.stream {
            return true;
        }
        false
    }

    /// The application protocol agreed through ALPN, once a TLS handshake is done (a client's
    /// is done when it connects; an accepted connection's on its first read or write).
    #[cfg(feature = "tls")]
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        match &self.stream {
            AsyncStream::Tls(tls) => match &**tls {
                AsyncTls::Ready(stream) => stream.get_ref().1.alpn_protocol(),
                _ => None,
            },
            _ => None,
        }
    }

    /// Complete the TLS handshake now (a no-op for a plain connection or a done handshake): an
    /// accepted connection otherwise completes it on its first read or write. Fails with
    /// `TimedOut` if the client does not complete it within the listener's
    /// [handshake timeout](ListenOptions::handshake_timeout); after a failure every read and
    /// write fails.
    #[cfg(feature = "tls")]
    pub async fn handshake(&mut self) -> io::Result<()> {
        std::future::poll_fn(|cx| match &mut self.stream {
            AsyncStream::Tls(tls) => tls.poll_ready(cx).map_ok(drop),
            _ => Poll::Ready(Ok(())),
        })
        .await
    }

    /// Wait until the peer has read everything written. Over vchan this waits for the peer to
    /// empty the ring (or close); over a socket it is at once, the kernel's buffers outliving
    /// the socket. Call it before dropping a connection to an integer vchan port: a libxenvchan
    /// peer sees the end only at the close, and may drop what its ring still holds when it does.
    pub async fn drained(&self) -> io::Result<()> {
        std::future::poll_fn(|cx| self.poll_drained(cx)).await
    }

    /// Poll form of [`drained`](AsyncConnection::drained), for hand-written futures.
    pub fn poll_drained(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.stream.poll_drained(cx)
    }

    /// Register a blocking connection with the runtime (call inside one). A TLS connection
    /// cannot move (its session is mid-stream): connect with [`Connector::connect_async`] or
    /// accept with [`AsyncListener`] instead.
    pub fn from_blocking(connection: Connection) -> io::Result<AsyncConnection> {
        let (stream, peer, slot) = connection.into_parts();
        let stream = match stream {
            Stream::Tcp(s) => {
                s.set_nonblocking(true)?;
                AsyncStream::Tcp(TcpStream::from_std(s)?)
            }
            Stream::Unix(s) => {
                s.set_nonblocking(true)?;
                AsyncStream::Unix(UnixStream::from_std(s)?)
            }
            #[cfg(feature = "vchan")]
            Stream::Vchan(v) => AsyncStream::Vchan(Box::new(AsyncVchanStream::new(*v)?)),
            #[cfg(feature = "tls")]
            Stream::Tls(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "a TLS connection cannot move to the async runtime: connect with \
                     Connector::connect_async or accept with AsyncListener",
                ))
            }
        };
        Ok(AsyncConnection {
            stream,
            peer,
            _slot: slot,
        })
    }
}

impl AsyncRead for AsyncConnection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for AsyncConnection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

impl fmt::Debug for AsyncConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncConnection")
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

impl Connector {
    /// Connect to `endpoint` without blocking the runtime (a vchan connect, which may wait for
    /// its server, runs on tokio's blocking pool). A `tls+` endpoint needs a configuration
    /// given with [`Connector::tls`], and completes its handshake before this returns (within
    /// the handshake timeout, kept without the runtime's timer).
    pub async fn connect_async(&self, endpoint: &Endpoint) -> Result<AsyncConnection> {
        if !endpoint.tls {
            return self.connect_plain_async(endpoint).await;
        }
        #[cfg(feature = "tls")]
        {
            let (config, server_name) = self.tls_config(endpoint)?;
            let connector = tokio_rustls::TlsConnector::from(Arc::clone(config));
            let AsyncConnection {
                stream,
                peer,
                _slot,
            } = self.connect_plain_async(endpoint).await?;
            let timeout = self.tls_handshake_timeout();
            let stream = crate::deadline::within(
                timeout,
                connector.connect(server_name.clone(), stream),
                || crate::tls::handshake_timed_out(timeout),
            )
            .await
            .map_err(|e| crate::blocking::tls_error(endpoint, e))?;
            Ok(AsyncConnection {
                stream: AsyncStream::Tls(Box::new(AsyncTls::Ready(stream.into()))),
                peer,
                _slot,
            })
        }
        #[cfg(not(feature = "tls"))]
        Err(crate::blocking::no_tls_config(endpoint))
    }

    pub(crate) async fn connect_plain_async(&self, endpoint: &Endpoint) -> Result<AsyncConnection> {
        let name = endpoint.to_string();
        let io_error = |source| ConduitError::Io {
            op: "connect to",
            endpoint: name.clone(),
            source,
        };
        match &endpoint.transport {
            Transport::Tcp { host, port } => {
                let stream = TcpStream::connect((host.as_str(), *port))
                    .await
                    .map_err(io_error)?;
                let peer = stream.peer_addr().map_err(io_error)?;
                Ok(AsyncConnection {
                    stream: AsyncStream::Tcp(stream),
                    peer: Peer::Tcp(peer),
                    _slot: None,
                })
            }
            Transport::Unix(path) => {
                let stream = UnixStream::connect(path).await.map_err(io_error)?;
                Ok(AsyncConnection {
                    stream: AsyncStream::Unix(stream),
                    peer: Peer::Unix(Some(path.clone())),
                    _slot: None,
                })
            }
            Transport::Vchan { .. } => {
                let (connector, target) = (self.clone(), endpoint.clone());
                let connection =
                    tokio::task::spawn_blocking(move || connector.connect_plain(&target))
                        .await
                        .map_err(|e| io_error(io::Error::other(e.to_string())))??;
                AsyncConnection::from_blocking(connection).map_err(io_error)
            }
        }
    }
}

/// Connect to `endpoint` with the defaults of [`Connector::new`], for tokio.
pub async fn connect_async(endpoint: &Endpoint) -> Result<AsyncConnection> {
    Connector::new().connect_async(endpoint).await
}

/// Accepts connections on an endpoint, for tokio.
pub struct AsyncListener {
    endpoint: Endpoint,
    kind: AsyncKind,
    /// For vchan: this domain's id, when it could be read at bind.
    #[cfg(feature = "vchan")]
    local_domain: Option<DomId>,
    /// For `tls+`: the acceptor and the handshake timeout.
    #[cfg(feature = "tls")]
    tls: Option<(tokio_rustls::TlsAcceptor, std::time::Duration)>,
    /// For a service: closes (its sender dropped) once the rendezvous thread has removed what
    /// it published.
    #[cfg(feature = "vchan")]
    done: Option<tokio::sync::watch::Receiver<()>>,
}

enum AsyncKind {
    Tcp(TcpListener),
    Unix(UnixListener, std::path::PathBuf),
    /// The integer port: the blocking listener, one connection at a time, on the blocking pool.
    #[cfg(feature = "vchan")]
    VchanPort {
        listener: Arc<crate::blocking::Listener>,
        /// Set when this listener goes: a waiting accept withdraws its keys and returns.
        stop: Arc<AtomicBool>,
        /// Held by this listener and by each accept in progress: `closed` waits for all.
        finished: Arc<tokio::sync::watch::Sender<()>>,
    },
    #[cfg(feature = "vchan")]
    VchanService {
        accepted:
            tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<Result<(VchanStream, DomId)>>>,
        stop: Arc<AtomicBool>,
        thread: Option<std::thread::JoinHandle<()>>,
    },
}

impl AsyncListener {
    /// Listen on `endpoint` with the defaults of [`ListenOptions::new`] (inside a runtime).
    pub async fn bind(endpoint: &Endpoint) -> Result<AsyncListener> {
        AsyncListener::bind_with(endpoint, ListenOptions::new()).await
    }

    /// Listen on `endpoint`, as [`crate::Listener::bind_with`] does.
    pub async fn bind_with(endpoint: &Endpoint, options: ListenOptions) -> Result<AsyncListener> {
        #[cfg(feature = "tls")]
        let tls = match endpoint.tls {
            true => Some((
                tokio_rustls::TlsAcceptor::from(
                    options
                        .tls
                        .clone()
                        .ok_or_else(|| crate::blocking::no_tls_config(endpoint))?,
                ),
                options.tls_handshake_timeout(),
            )),
            false => None,
        };
        #[cfg(not(feature = "tls"))]
        if endpoint.tls {
            return Err(crate::blocking::no_tls_config(endpoint));
        }
        #[cfg(not(feature = "vchan"))]
        let _ = options;
        #[cfg(feature = "vchan")]
        let (mut local_domain, mut done) = (None, None);
        let name = endpoint.to_string();
        let io_error = |source| ConduitError::Io {
            op: "listen on",
            endpoint: name.clone(),
            source,
        };
        let kind = match &endpoint.transport {
            Transport::Tcp { host, port } => AsyncKind::Tcp(
                TcpListener::bind((host.as_str(), *port))
                    .await
                    .map_err(io_error)?,
            ),
            Transport::Unix(path) => {
                AsyncKind::Unix(UnixListener::bind(path).map_err(io_error)?, path.clone())
            }
            #[cfg(feature = "vchan")]
            Transport::Vchan { domain, port } => {
                let xen = match options.xen.clone() {
                    Some(xen) => xen,
                    None => Xen::from_env().map_err(|source| ConduitError::NoXen {
                        endpoint: name.clone(),
                        source,
                    })?,
                };
                local_domain = {
                    let xen = xen.clone();
                    tokio::task::spawn_blocking(move || crate::xen::own_domid(&xen))
                        .await
                        .ok()
                        .flatten()
                };
                match port {
                    crate::endpoint::VchanPort::Number(_) => {
                        // The blocking listener serves the transport; TLS is added here.
                        let mut target = endpoint.clone();
                        target.tls = false;
                        let options = options.xen(xen);
                        let listener = tokio::task::spawn_blocking(move || {
                            crate::blocking::Listener::bind_with(&target, options)
                        })
                        .await
                        .map_err(|e| io_error(io::Error::other(e.to_string())))??;
                        let (finished, watch) = tokio::sync::watch::channel(());
                        done = Some(watch);
                        AsyncKind::VchanPort {
                            stop: listener.stop_flag().unwrap_or_default(),
                            listener: Arc::new(listener),
                            finished: Arc::new(finished),
                        }
                    }
                    crate::endpoint::VchanPort::Service(service) => {
                        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                        // Dropped with the sink, when the rendezvous thread ends (after it has
                        // removed the service): what `closed` waits for.
                        let (finished, watch) = tokio::sync::watch::channel(());
                        done = Some(watch);
                        let (domain, service, options_service) =
                            (domain.clone(), service.clone(), options.service.clone());
                        let target = name.clone();
                        let (stop, thread) = tokio::task::spawn_blocking(move || {
                            crate::blocking::start_service(
                                xen,
                                &domain,
                                &service,
                                options_service,
                                &target,
                                Box::new(move |item| {
                                    let _finished = &finished;
                                    tx.send(item).is_ok()
                                }),
                            )
                        })
                        .await
                        .map_err(|e| io_error(io::Error::other(e.to_string())))??;
                        AsyncKind::VchanService {
                            accepted: tokio::sync::Mutex::new(rx),
                            stop,
                            thread: Some(thread),
                        }
                    }
                }
            }
            #[cfg(not(feature = "vchan"))]
            Transport::Vchan { .. } => {
                return Err(ConduitError::Unsupported {
                    endpoint: name,
                    reason: "this build has no vchan (the conduit-vchan feature `vchan`)",
                })
            }
        };
        Ok(AsyncListener {
            endpoint: endpoint.clone(),
            kind,
            #[cfg(feature = "vchan")]
            local_domain,
            #[cfg(feature = "tls")]
            tls,
            #[cfg(feature = "vchan")]
            done,
        })
    }

    /// A future that resolves once this listener has been dropped (or closed) and has removed
    /// what it published: a vchan service, or the keys a waiting integer-port accept had
    /// published.
    /// Take it before handing the listener to a server that consumes it (`axum::serve`), and
    /// await it after the server returns, so that a program does not exit before a vchan
    /// service is withdrawn. (A TCP or Unix listener is done as soon as it is dropped.)
    pub fn closed(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        #[cfg(feature = "vchan")]
        let done = self.done.clone();
        async move {
            #[cfg(feature = "vchan")]
            if let Some(mut done) = done {
                while done.changed().await.is_ok() {}
            }
        }
    }

    /// This end of the listener, as a [`Peer`] would name it: the bound TCP address, the
    /// socket's path, or this domain (for vchan).
    pub fn local_peer(&self) -> io::Result<Peer> {
        match &self.kind {
            AsyncKind::Tcp(l) => l.local_addr().map(Peer::Tcp),
            AsyncKind::Unix(_, path) => Ok(Peer::Unix(Some(path.clone()))),
            #[cfg(feature = "vchan")]
            _ => self.local_domain.map(Peer::Vchan).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    "this domain's id could not be read from xenstore",
                )
            }),
        }
    }

    /// The endpoint listened on (for TCP, with the port actually bound).
    pub fn local_endpoint(&self) -> Endpoint {
        match &self.kind {
            AsyncKind::Tcp(l) => self.endpoint.bound_at(l.local_addr()),
            _ => self.endpoint.clone(),
        }
    }

    /// Stop listening and wait until the listener has removed what it published (a service
    /// and its pending requests). Dropping it does the same without waiting.
    pub async fn close(self) {
        let closed = self.closed();
        drop(self);
        closed.await;
    }

    /// Wait for the next connection, and say who it is from. Over TLS the handshake is left to
    /// the connection's first read or write (in its own task, as a server runs it), so that a
    /// slow client never holds up the next; from then it has the
    /// [handshake timeout](ListenOptions::handshake_timeout) to complete. Cancel-safe for TCP,
    /// Unix sockets and services (a connection is never lost by dropping the future); for an
    /// integer vchan port, a cancelled accept may lose the client that was connecting at that
    /// moment.
    pub async fn accept(&self) -> Result<(AsyncConnection, Peer)> {
        let name = || self.endpoint.to_string();
        let io_error = |source| ConduitError::Io {
            op: "accept on",
            endpoint: name(),
            source,
        };
        let connection = match &self.kind {
            AsyncKind::Tcp(l) => {
                let (s, addr) = l.accept().await.map_err(io_error)?;
                AsyncConnection {
                    stream: AsyncStream::Tcp(s),
                    peer: Peer::Tcp(addr),
                    _slot: None,
                }
            }
            AsyncKind::Unix(l, _) => {
                let (s, addr) = l.accept().await.map_err(io_error)?;
                let path = addr.as_pathname().map(std::path::PathBuf::from);
                AsyncConnection {
                    stream: AsyncStream::Unix(s),
                    peer: Peer::Unix(path),
                    _slot: None,
                }
            }
            #[cfg(feature = "vchan")]
            AsyncKind::VchanPort {
                listener, finished, ..
            } => {
                let (listener, finished) = (Arc::clone(listener), Arc::clone(finished));
                let (connection, _) = tokio::task::spawn_blocking(move || {
                    let _finished = finished;
                    listener.accept()
                })
                .await
                .map_err(|e| io_error(io::Error::other(e.to_string())))??;
                AsyncConnection::from_blocking(connection).map_err(io_error)?
            }
            #[cfg(feature = "vchan")]
            AsyncKind::VchanService { accepted, .. } => {
                let next = accepted.lock().await.recv().await;
                match next {
                    Some(Ok((stream, domid))) => AsyncConnection {
                        stream: AsyncStream::Vchan(Box::new(
                            AsyncVchanStream::new(stream).map_err(io_error)?,
                        )),
                        peer: Peer::Vchan(domid),
                        _slot: None,
                    },
                    Some(Err(e)) => return Err(e),
                    None => {
                        return Err(ConduitError::ListenerStopped {
                            endpoint: name(),
                            reason: "its rendezvous thread ended".to_owned(),
                        })
                    }
                }
            }
        };
        #[cfg(feature = "tls")]
        let connection = match &self.tls {
            Some((acceptor, timeout)) => {
                let AsyncConnection {
                    stream,
                    peer,
                    _slot,
                } = connection;
                AsyncConnection {
                    stream: AsyncStream::Tls(Box::new(AsyncTls::Accepting {
                        accept: acceptor.accept(stream),
                        timeout: *timeout,
                        deadline: None,
                    })),
                    peer,
                    _slot,
                }
            }
            None => connection,
        };
        let peer = connection.peer.clone();
        Ok((connection, peer))
    }
}

impl Drop for AsyncListener {
    fn drop(&mut self) {
        match &mut self.kind {
            AsyncKind::Unix(_, path) => {
                let _ = std::fs::remove_file(path);
            }
            #[cfg(feature = "vchan")]
            AsyncKind::VchanPort { stop, .. } => {
                // ORDERING: Relaxed: a waiting accept polls the flag within its tick, withdraws
                // its keys and ends (not joined: a drop inside the runtime must not block it).
                stop.store(true, Ordering::Relaxed);
            }
            #[cfg(feature = "vchan")]
            AsyncKind::VchanService { stop, thread, .. } => {
                // ORDERING: Relaxed: the thread polls the flag within its tick and ends.
                stop.store(true, Ordering::Relaxed);
                // Not joined here: a drop inside the runtime must not block it. The thread ends
                // within one tick and removes the service as it goes.
                drop(thread.take());
            }
            _ => {}
        }
    }
}

impl fmt::Debug for AsyncListener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncListener")
            .field("endpoint", &self.endpoint.to_string())
            .finish_non_exhaustive()
    }
}
