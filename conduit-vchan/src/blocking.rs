//! Blocking connections and listeners: [`connect`], [`Connector`], [`Listener`], [`Connection`].

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

#[cfg(feature = "vchan")]
use std::sync::atomic::{AtomicBool, Ordering};
#[cfg(feature = "vchan")]
use std::sync::mpsc;

use xen_types::DomId;

#[cfg(feature = "vchan")]
use crate::endpoint::{Domain, VchanPort};
use crate::endpoint::{Endpoint, Transport};
#[cfg(feature = "vchan")]
use crate::error::Limit;
use crate::error::{ConduitError, Result};
#[cfg(feature = "vchan")]
use crate::rendezvous::{self, ServiceOptions};
#[cfg(feature = "vchan")]
use crate::throttle::{self, Backoff, StoreOp};
#[cfg(feature = "tls")]
use crate::tls::TlsStream;
#[cfg(feature = "vchan")]
use crate::xen::{with_backend, IntoVchanStream, VchanStream, Xen};
#[cfg(feature = "tls")]
use rustls::pki_types::ServerName;

/// Who is on the other end of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    /// A TCP peer's address.
    Tcp(SocketAddr),
    /// A Unix-socket peer (usually unnamed).
    Unix(Option<PathBuf>),
    /// A vchan peer's domain, as the rendezvous (the owner of its request) or the integer
    /// port's convention (the one domain served) established it.
    Vchan(DomId),
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Tcp(addr) => write!(f, "tcp://{addr}"),
            Peer::Unix(Some(path)) => write!(f, "unix://{}", path.display()),
            Peer::Unix(None) => f.write_str("unix:(unnamed)"),
            Peer::Vchan(domid) => write!(f, "domain {domid}"),
        }
    }
}

/// The byte stream under a connection.
pub(crate) enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
    /// Boxed: a vchan endpoint is hundreds of bytes, a socket a few.
    #[cfg(feature = "vchan")]
    Vchan(Box<VchanStream>),
    /// TLS over one of the others.
    #[cfg(feature = "tls")]
    Tls(Box<TlsStream>),
}

impl Stream {
    pub(crate) fn shutdown_write(&self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.shutdown(Shutdown::Write),
            Stream::Unix(s) => s.shutdown(Shutdown::Write),
            #[cfg(feature = "vchan")]
            Stream::Vchan(s) => s.shutdown_write().map_err(io::Error::from),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => s.shutdown_write(),
        }
    }

    /// Bound each blocking read (`None`: wait for ever). Only TLS's handshake sets one, on the
    /// transport under it.
    #[cfg(feature = "tls")]
    pub(crate) fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_read_timeout(timeout),
            Stream::Unix(s) => s.set_read_timeout(timeout),
            #[cfg(feature = "vchan")]
            Stream::Vchan(s) => {
                s.set_read_timeout(timeout);
                Ok(())
            }
            Stream::Tls(_) => Err(io::Error::from(io::ErrorKind::Unsupported)),
        }
    }

    /// Bound each blocking write (`None`: wait for ever), as `set_read_timeout`.
    #[cfg(feature = "tls")]
    pub(crate) fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_write_timeout(timeout),
            Stream::Unix(s) => s.set_write_timeout(timeout),
            #[cfg(feature = "vchan")]
            Stream::Vchan(s) => {
                s.set_write_timeout(timeout);
                Ok(())
            }
            Stream::Tls(_) => Err(io::Error::from(io::ErrorKind::Unsupported)),
        }
    }
}

/// Every transport reads and writes through a shared reference (one reader thread and one
/// writer thread at a time).
impl Read for &Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match *self {
            Stream::Tcp(s) => (&mut &*s).read(buf),
            Stream::Unix(s) => (&mut &*s).read(buf),
            #[cfg(feature = "vchan")]
            Stream::Vchan(s) => (&mut &**s).read(buf),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for &Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match *self {
            Stream::Tcp(s) => (&mut &*s).write(buf),
            Stream::Unix(s) => (&mut &*s).write(buf),
            #[cfg(feature = "vchan")]
            Stream::Vchan(s) => (&mut &**s).write(buf),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => s.write(buf),
        }
    }

    /// The sockets gather (rustls hands its queued records over this way).
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match *self {
            Stream::Tcp(s) => (&mut &*s).write_vectored(bufs),
            Stream::Unix(s) => (&mut &*s).write_vectored(bufs),
            #[allow(unreachable_patterns)]
            _ => {
                let buf = bufs.iter().find(|b| !b.is_empty()).map_or(&[][..], |b| b);
                self.write(buf)
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A connected byte stream over any transport: `Read + Write` (also for `&Connection`, so one
/// thread can read while another writes), with
/// [`shutdown_write`](Connection::shutdown_write) as the half-close every transport supports.
pub struct Connection {
    stream: Stream,
    peer: Peer,
    /// For an integer-port vchan listener: frees it for the next connection when dropped.
    _slot: Option<SlotGuard>,
}

impl Connection {
    pub(crate) fn new(stream: Stream, peer: Peer) -> Connection {
        Connection {
            stream,
            peer,
            _slot: None,
        }
    }

    /// Who is on the other end.
    pub fn peer(&self) -> &Peer {
        &self.peer
    }

    /// Shut down the writing side: the peer reads end-of-stream after everything written, and
    /// this end can still read its reply. Over vchan this is [`vchan::Vchan::shutdown_write`]
    /// (a plain libxenvchan peer sees the end only when the connection is dropped). Over TLS it
    /// sends `close_notify`, then shuts down the transport's writing side.
    ///
    /// Dropping a TLS connection sends `close_notify` too (unless this did), so its peer reads
    /// a clean end of stream either way; the drop waits for room in the transport at most the
    /// handshake timeout.
    pub fn shutdown_write(&self) -> io::Result<()> {
        self.stream.shutdown_write()
    }

    /// Whether TLS runs over the transport.
    pub fn is_tls(&self) -> bool {
        #[cfg(feature = "tls")]
        if let Stream::Tls(_) = self.stream {
            return true;
        }
        false
    }

    /// The application protocol agreed through ALPN, for a TLS connection whose handshake is
    /// done (a client's is done when it connects; a server's on its first read or write, or
    /// [`handshake`](Connection::handshake)).
    #[cfg(feature = "tls")]
    pub fn alpn_protocol(&self) -> Option<Vec<u8>> {
        match &self.stream {
            Stream::Tls(tls) => tls.alpn_protocol(),
            _ => None,
        }
    }

    /// Complete the TLS handshake now (a no-op for a plain connection or a done handshake).
    /// An accepted TLS connection otherwise completes it on its first read or write, so that
    /// a slow client never holds up [`Listener::accept`]. A client that does not complete it
    /// within the listener's [handshake timeout](ListenOptions::handshake_timeout) fails it
    /// with `TimedOut`; after a failure every read and write fails.
    #[cfg(feature = "tls")]
    pub fn handshake(&self) -> io::Result<()> {
        match &self.stream {
            Stream::Tls(tls) => tls.handshake(),
            _ => Ok(()),
        }
    }

    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) fn into_parts(self) -> (Stream, Peer, Option<SlotGuard>) {
        (self.stream, self.peer, self._slot)
    }
}

impl Read for Connection {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &mut self.stream {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
            #[cfg(feature = "vchan")]
            Stream::Vchan(s) => s.read(buf),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Connection {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.stream {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
            #[cfg(feature = "vchan")]
            Stream::Vchan(s) => s.write(buf),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.stream {
            Stream::Tcp(s) => s.flush(),
            Stream::Unix(s) => s.flush(),
            #[cfg(feature = "vchan")]
            Stream::Vchan(s) => s.flush(),
            #[cfg(feature = "tls")]
            Stream::Tls(_) => Ok(()),
        }
    }
}

/// As for `TcpStream`: one thread can read while another writes (over TLS too).
impl Read for &Connection {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (&self.stream).read(buf)
    }
}

impl Write for &Connection {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (&self.stream).write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

/// How long a vchan connect waits for its server, by default.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a TLS handshake may take, by default, on either side
/// ([`Connector::handshake_timeout`], [`ListenOptions::handshake_timeout`]).
#[cfg(feature = "tls")]
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens connections; holds what a name cannot say (the Xen platform, timeouts, TLS).
#[derive(Debug, Clone)]
pub struct Connector {
    #[cfg(feature = "vchan")]
    xen: Option<Xen>,
    timeout: Duration,
    #[cfg(feature = "tls")]
    tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
    #[cfg(feature = "tls")]
    handshake_timeout: Duration,
}

impl Default for Connector {
    fn default() -> Self {
        Connector::new()
    }
}

impl Connector {
    /// Defaults: the Xen platform from the environment ([`Xen::from_env`]) when a vchan
    /// endpoint is used, [`DEFAULT_CONNECT_TIMEOUT`], and (feature `tls`)
    /// `DEFAULT_HANDSHAKE_TIMEOUT`.
    pub fn new() -> Connector {
        Connector {
            #[cfg(feature = "vchan")]
            xen: None,
            timeout: DEFAULT_CONNECT_TIMEOUT,
            #[cfg(feature = "tls")]
            tls: None,
            #[cfg(feature = "tls")]
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
        }
    }

    /// Speak TLS with this configuration to `tls+` endpoints, expecting the server to prove
    /// `server_name` (a vchan peer has no DNS name, so the name is always explicit: the one its
    /// certificate carries, a DNS name or an IP address). Plain endpoints stay plain.
    ///
    /// The handshake runs when connecting, so a certificate the configuration refuses fails
    /// [`connect`](Connector::connect) with [`ConduitError::Tls`].
    ///
    /// ```
    /// use std::io::{Read, Write};
    /// use std::sync::Arc;
    /// use conduit_vchan::{Connector, ListenOptions, Listener};
    /// use rustls::pki_types::{PrivateKeyDer, ServerName};
    ///
    /// // A test authority and a certificate for the name the client will expect.
    /// let ca_key = rcgen::KeyPair::generate().unwrap();
    /// let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    /// ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    /// let ca = ca.self_signed(&ca_key).unwrap();
    /// let key = rcgen::KeyPair::generate().unwrap();
    /// let cert = rcgen::CertificateParams::new(vec!["api.domain-5.invalid".to_owned()]).unwrap()
    ///     .signed_by(&key, &ca, &ca_key).unwrap();
    ///
    /// let provider = Arc::new(rustls::crypto::ring::default_provider());
    /// let server_config = rustls::ServerConfig::builder_with_provider(provider.clone())
    ///     .with_safe_default_protocol_versions().unwrap()
    ///     .with_no_client_auth()
    ///     .with_single_cert(vec![cert.der().clone()],
    ///                       PrivateKeyDer::Pkcs8(key.serialize_der().into())).unwrap();
    /// let mut roots = rustls::RootCertStore::empty();
    /// roots.add(ca.der().clone()).unwrap();
    /// let client_config = rustls::ClientConfig::builder_with_provider(provider)
    ///     .with_safe_default_protocol_versions().unwrap()
    ///     .with_root_certificates(roots)
    ///     .with_no_client_auth();
    ///
    /// // The same code over vchan: only the names change (`tls+vchan://*/api`, `tls+vchan://5/api`).
    /// let listener = Listener::bind_with(&"tls+tcp://127.0.0.1:0".parse().unwrap(),
    ///                                    ListenOptions::new().tls(Arc::new(server_config))).unwrap();
    /// let target = listener.local_endpoint();
    /// let server = std::thread::spawn(move || {
    ///     let (mut conn, _peer) = listener.accept().unwrap();
    ///     conn.write_all(b"over TLS").unwrap();
    ///     conn.shutdown_write().unwrap();                  // close_notify, then the half-close
    /// });
    /// let name = ServerName::try_from("api.domain-5.invalid").unwrap();
    /// let mut conn = Connector::new().tls(Arc::new(client_config), name).connect(&target).unwrap();
    /// let mut text = String::new();
    /// conn.read_to_string(&mut text).unwrap();
    /// assert_eq!(text, "over TLS");
    /// server.join().unwrap();
    /// ```
    #[cfg(feature = "tls")]
    pub fn tls(
        mut self,
        config: Arc<rustls::ClientConfig>,
        server_name: ServerName<'static>,
    ) -> Connector {
        self.tls = Some((config, server_name));
        self
    }

    /// How long the TLS handshake of a `tls+` endpoint may take once the transport is
    /// connected ([`DEFAULT_HANDSHAKE_TIMEOUT`] unless set): a server that never answers fails
    /// [`connect`](Connector::connect) with [`ConduitError::Tls`] of kind `TimedOut` instead of
    /// holding it for ever.
    #[cfg(feature = "tls")]
    pub fn handshake_timeout(mut self, timeout: Duration) -> Connector {
        self.handshake_timeout = timeout;
        self
    }

    /// The handshake timeout of `tls+` endpoints.
    #[cfg(all(feature = "tls", feature = "tokio"))]
    pub(crate) fn tls_handshake_timeout(&self) -> Duration {
        self.handshake_timeout
    }

    /// The TLS configuration for `tls+` endpoints, or the error that says there is none.
    #[cfg(feature = "tls")]
    pub(crate) fn tls_config(
        &self,
        endpoint: &Endpoint,
    ) -> Result<&(Arc<rustls::ClientConfig>, ServerName<'static>)> {
        self.tls.as_ref().ok_or_else(|| no_tls_config(endpoint))
    }

    /// Use this Xen platform for vchan endpoints.
    #[cfg(feature = "vchan")]
    pub fn xen(mut self, xen: Xen) -> Connector {
        self.xen = Some(xen);
        self
    }

    /// How long a vchan connect waits for its server or its service's answer.
    pub fn timeout(mut self, timeout: Duration) -> Connector {
        self.timeout = timeout;
        self
    }

    #[cfg(feature = "vchan")]
    pub(crate) fn platform(&self, endpoint: &Endpoint) -> Result<Xen> {
        match &self.xen {
            Some(xen) => Ok(xen.clone()),
            None => Xen::from_env().map_err(|source| ConduitError::NoXen {
                endpoint: endpoint.to_string(),
                source,
            }),
        }
    }

    /// Connect to `endpoint`. A `tls+` endpoint needs a configuration given with
    /// [`Connector::tls`] (feature `tls`), and completes its handshake before this returns
    /// (within the handshake timeout).
    pub fn connect(&self, endpoint: &Endpoint) -> Result<Connection> {
        if !endpoint.tls {
            return self.connect_plain(endpoint);
        }
        #[cfg(feature = "tls")]
        {
            let (config, server_name) = self.tls_config(endpoint)?;
            let session = rustls::ClientConnection::new(Arc::clone(config), server_name.clone())
                .map_err(|e| tls_error(endpoint, io::Error::new(io::ErrorKind::InvalidInput, e)))?;
            let Connection {
                stream,
                peer,
                _slot,
            } = self.connect_plain(endpoint)?;
            let tls = TlsStream::new(session.into(), stream, self.handshake_timeout);
            tls.handshake().map_err(|e| tls_error(endpoint, e))?;
            Ok(Connection {
                stream: Stream::Tls(Box::new(tls)),
                peer,
                _slot,
            })
        }
        #[cfg(not(feature = "tls"))]
        Err(no_tls_config(endpoint))
    }

    /// Check that `endpoint` answers, as a proxy or a supervisor does before it starts, without
    /// keeping a connection: an error here is the one [`connect`](Connector::connect) would
    /// meet.
    ///
    /// - A TCP or Unix endpoint, and a vchan service, are connected to and closed at once
    ///   (over TLS after the handshake, so a certificate the configuration refuses shows here).
    ///   The program behind sees one empty connection.
    /// - An integer vchan port is not connected to: its server serves one client at a time and
    ///   may serve only one, so the check waits (up to the timeout) for the keys the server
    ///   publishes at the port's conventional path instead.
    pub fn check(&self, endpoint: &Endpoint) -> Result<()> {
        #[cfg(feature = "vchan")]
        if let Transport::Vchan {
            domain,
            port: VchanPort::Number(port),
        } = &endpoint.transport
        {
            let name = endpoint.to_string();
            let xen = self.platform(endpoint)?;
            return with_backend!(&xen, b => {
                let server = resolve(b, domain, &name)?;
                rendezvous::await_port_keys(b, server, *port, self.timeout, &name)
            });
        }
        self.connect(endpoint).map(drop)
    }

    /// Connect to the transport of `endpoint`, ignoring `tls+`.
    pub(crate) fn connect_plain(&self, endpoint: &Endpoint) -> Result<Connection> {
        let name = endpoint.to_string();
        let io_error = |source| ConduitError::Io {
            op: "connect to",
            endpoint: name.clone(),
            source,
        };
        match &endpoint.transport {
            Transport::Tcp { host, port } => {
                let stream = TcpStream::connect((host.as_str(), *port)).map_err(io_error)?;
                let peer = stream.peer_addr().map_err(io_error)?;
                Ok(Connection::new(Stream::Tcp(stream), Peer::Tcp(peer)))
            }
            Transport::Unix(path) => {
                let stream = UnixStream::connect(path).map_err(io_error)?;
                Ok(Connection::new(
                    Stream::Unix(stream),
                    Peer::Unix(Some(path.clone())),
                ))
            }
            #[cfg(feature = "vchan")]
            Transport::Vchan { domain, port } => {
                let xen = self.platform(endpoint)?;
                with_backend!(&xen, b => connect_vchan(b, domain, port, self.timeout, &name))
            }
            #[cfg(not(feature = "vchan"))]
            Transport::Vchan { .. } => Err(ConduitError::Unsupported {
                endpoint: name,
                reason: "this build has no vchan (the conduit-vchan feature `vchan`)",
            }),
        }
    }
}

/// Connect over vchan on one platform.
#[cfg(feature = "vchan")]
pub(crate) fn connect_vchan<B: IntoVchanStream>(
    backend: &B,
    domain: &Domain,
    port: &VchanPort,
    timeout: Duration,
    name: &str,
) -> Result<Connection> {
    let server = resolve(backend, domain, name)?;
    let vchan = match port {
        VchanPort::Number(port) => connect_port(backend, server, *port, timeout, name)?,
        VchanPort::Service(service) => {
            rendezvous::request(backend, server, service, timeout, name)?
        }
    };
    Ok(Connection::new(
        Stream::Vchan(Box::new(B::wrap(vchan))),
        Peer::Vchan(server),
    ))
}

/// Connect at an integer port's conventional path. Keys found there may belong to a server that
/// has its client already, or is closing (a listener publishes afresh for the next connection):
/// such a server refuses with `NotWaiting`, and we look again until `timeout`. A store quota or
/// a busy store met on the way is waited out too, backing off; and a client waiting for its
/// server's keys holds a watch, so it counts among the process's connects in flight.
#[cfg(feature = "vchan")]
fn connect_port<B: vchan::Backend>(
    backend: &B,
    server: DomId,
    port: u32,
    timeout: Duration,
    name: &str,
) -> Result<vchan::Vchan<B>> {
    let deadline = std::time::Instant::now() + timeout;
    let gave_up = |limit| ConduitError::Limit {
        endpoint: name.to_owned(),
        limit,
        seconds: timeout.as_secs_f64(),
    };
    let mut backoff = Backoff::new();
    loop {
        let Some(place) = throttle::CONNECTS.enter(deadline) else {
            return Err(gave_up(Limit::ConnectsInFlight));
        };
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let outcome =
            vchan::Vchan::client(backend, server, &vchan::Address::Port(port), Some(left));
        drop(place);
        let error = match outcome {
            Ok(vchan) => return Ok(vchan),
            Err(e) if taken_by_another(&e) && !left.is_zero() => {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            Err(e) => e,
        };
        match store_limit(&error) {
            Some(_) if backoff.pause(deadline) => {}
            Some(limit) => return Err(gave_up(limit)),
            None => return Err(rendezvous::vchan_error("connect to", name)(error)),
        }
    }
}

/// The store quota or busy store a vchan client met, if that is what stopped it.
#[cfg(feature = "vchan")]
fn store_limit(e: &vchan::VchanError) -> Option<Limit> {
    match e {
        // A client reads and watches: a watch quota (E2BIG) or a busy store.
        vchan::VchanError::Xenstore(e) => throttle::limit_met(StoreOp::Watch, e),
        _ => None,
    }
}

/// Keys found at an integer port belong to a server that another client took, or to one that
/// went away meanwhile: it has a client (`NotWaiting`); another client of this domain bound its
/// event channel between our reading its keys and binding it (Xen refuses a second bind of one
/// port with `EINVAL`); or it closed, so its port or grant is gone (`EINVAL`, `ENOENT` from the
/// bind or the map) or its page no longer makes sense. The listener publishes afresh: look again.
#[cfg(feature = "vchan")]
fn taken_by_another(e: &vchan::VchanError) -> bool {
    match e {
        vchan::VchanError::NotWaiting { .. } | vchan::VchanError::Layout(_) => true,
        vchan::VchanError::Backend { op, .. } => op.joins_the_server(),
        _ => false,
    }
}

/// The domain id a vchan endpoint names.
#[cfg(feature = "vchan")]
pub(crate) fn resolve<B: vchan::Backend>(
    backend: &B,
    domain: &Domain,
    name: &str,
) -> Result<DomId> {
    match domain {
        Domain::Id(id) => Ok(*id),
        Domain::Name(domain_name) => {
            let store = backend
                .open_store()
                .map_err(rendezvous::xs_error("open xenstore for", name))?;
            rendezvous::resolve_name(&store, domain_name)
        }
        Domain::Any => Err(ConduitError::Unsupported {
            endpoint: name.to_owned(),
            reason: "* names any domain, which only a listener can use",
        }),
    }
}

/// Connect to `endpoint` with the defaults of [`Connector::new`].
///
/// ```
/// use std::io::{Read, Write};
/// use conduit_vchan::{connect, Connector, Listener, ListenOptions, Xen};
/// use vchan::sim::SimXen;
/// use xen_types::DomId;
///
/// // Two domains of the in-process simulated Xen.
/// let xen = SimXen::new();
/// let dom0 = Xen::Sim(xen.domain(DomId(0)));
/// let guest = Xen::Sim(xen.create_domain(DomId(5)).unwrap());
///
/// // The guest serves "echo" to any domain; dom0 connects by name.
/// let listener = Listener::bind_with(&"vchan://*/echo".parse().unwrap(),
///                                    ListenOptions::new().xen(guest)).unwrap();
/// let server = std::thread::spawn(move || {
///     let (mut conn, peer) = listener.accept().unwrap();
///     let mut request = Vec::new();
///     conn.read_to_end(&mut request).unwrap();         // until the client's half-close
///     conn.write_all(&request).unwrap();
///     peer
/// });
/// let mut conn = Connector::new().xen(dom0).connect(&"vchan://5/echo".parse().unwrap()).unwrap();
/// conn.write_all(b"ping").unwrap();
/// conn.shutdown_write().unwrap();
/// let mut reply = Vec::new();
/// conn.read_to_end(&mut reply).unwrap();
/// assert_eq!(reply, b"ping");
/// assert_eq!(server.join().unwrap().to_string(), "domain 0");
/// ```
pub fn connect(endpoint: &Endpoint) -> Result<Connection> {
    Connector::new().connect(endpoint)
}

/// How a listener behaves: the Xen platform, who may connect, ring sizes, limits.
#[derive(Debug, Clone, Default)]
pub struct ListenOptions {
    #[cfg(feature = "vchan")]
    pub(crate) xen: Option<Xen>,
    #[cfg(feature = "vchan")]
    pub(crate) service: ServiceOptions,
    #[cfg(feature = "tls")]
    pub(crate) tls: Option<Arc<rustls::ServerConfig>>,
    /// `None`: [`DEFAULT_HANDSHAKE_TIMEOUT`].
    #[cfg(feature = "tls")]
    pub(crate) handshake_timeout: Option<Duration>,
}

impl ListenOptions {
    /// The defaults: the Xen platform from the environment, any domain allowed for
    /// `vchan://*/SERVICE`, 128 pending requests, a 10 s request timeout, 64 KiB rings, a 10 s
    /// TLS handshake timeout.
    pub fn new() -> ListenOptions {
        ListenOptions::default()
    }

    /// Speak TLS with this configuration on `tls+` endpoints (plain endpoints stay plain).
    /// An accepted connection completes its handshake on its first read or write.
    #[cfg(feature = "tls")]
    pub fn tls(mut self, config: Arc<rustls::ServerConfig>) -> ListenOptions {
        self.tls = Some(config);
        self
    }

    /// How long an accepted TLS connection's handshake may take from its start (its first read
    /// or write) ([`DEFAULT_HANDSHAKE_TIMEOUT`] unless set). A client that sends nothing, or
    /// too little, then fails that read or write with `TimedOut`, and whatever it held (a
    /// server's place, an integer port's one connection) is freed when the connection is
    /// dropped.
    #[cfg(feature = "tls")]
    pub fn handshake_timeout(mut self, timeout: Duration) -> ListenOptions {
        self.handshake_timeout = Some(timeout);
        self
    }

    /// The handshake timeout of accepted TLS connections.
    #[cfg(feature = "tls")]
    pub(crate) fn tls_handshake_timeout(&self) -> Duration {
        self.handshake_timeout.unwrap_or(DEFAULT_HANDSHAKE_TIMEOUT)
    }

    /// Use this Xen platform.
    #[cfg(feature = "vchan")]
    pub fn xen(mut self, xen: Xen) -> ListenOptions {
        self.xen = Some(xen);
        self
    }

    /// Allow only these domains to use a `vchan://*/SERVICE` listener (a listener for
    /// `vchan://DOMID/SERVICE` allows DOMID alone).
    #[cfg(feature = "vchan")]
    pub fn allow(mut self, domains: Vec<DomId>) -> ListenOptions {
        self.service.allow = rendezvous::Allow::Domains(domains);
        self
    }

    /// The most requests answered but not yet connected at once; more are refused.
    #[cfg(feature = "vchan")]
    pub fn max_pending(mut self, max: usize) -> ListenOptions {
        self.service.max_pending = max;
        self
    }

    /// How long an answered request may wait for its client before it is dropped.
    #[cfg(feature = "vchan")]
    pub fn request_timeout(mut self, timeout: Duration) -> ListenOptions {
        self.service.request_timeout = timeout;
        self
    }

    /// The ring sizes of each vchan connection.
    #[cfg(feature = "vchan")]
    pub fn ring_sizes(mut self, sizes: vchan::RingSizes) -> ListenOptions {
        self.service.sizes = sizes;
        self
    }

    /// Call `report` with each error a `vchan://.../SERVICE` listener met and recovered from,
    /// going on serving: today [`ConduitError::ServiceRestored`], a service directory removed
    /// (a domain the service admits may write into it, so it may remove it) and published
    /// again. Without it they are dropped: this library never prints. `report` runs on the
    /// listener's thread, so it should be quick (write a line, count).
    ///
    /// ```
    /// use conduit_vchan::{describe, ListenOptions};
    ///
    /// let options = ListenOptions::new()
    ///     .on_recovered(|e| eprintln!("my-server: {}", describe(e)));
    /// # drop(options);
    /// ```
    #[cfg(feature = "vchan")]
    pub fn on_recovered(
        mut self,
        report: impl Fn(&ConduitError) + Send + Sync + 'static,
    ) -> ListenOptions {
        self.service.recovered = rendezvous::Recovered(Some(Arc::new(report)));
        self
    }
}

/// Lets an integer-port vchan listener serve one connection at a time: held by the live
/// connection, released when it is dropped.
pub(crate) struct SlotGuard(Arc<(Mutex<bool>, Condvar)>);

impl Drop for SlotGuard {
    fn drop(&mut self) {
        let (busy, freed) = &*self.0;
        *busy.lock().unwrap_or_else(PoisonError::into_inner) = false;
        freed.notify_all();
    }
}

/// Accepts connections on an endpoint.
pub struct Listener {
    endpoint: Endpoint,
    kind: ListenerKind,
    /// The TLS configuration and the handshake timeout of `tls+` endpoints.
    #[cfg(feature = "tls")]
    tls: Option<(Arc<rustls::ServerConfig>, Duration)>,
}

enum ListenerKind {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
    /// libxenvchan's convention: serve one client domain at a fixed path, one connection at a
    /// time, publishing afresh for each.
    #[cfg(feature = "vchan")]
    VchanPort {
        xen: Xen,
        client: DomId,
        port: u32,
        sizes: vchan::RingSizes,
        slot: Arc<(Mutex<bool>, Condvar)>,
        /// Set when the listener goes: a waiting accept withdraws its keys and returns.
        stop: Arc<AtomicBool>,
    },
    /// A service: connections through the rendezvous, any number at once.
    #[cfg(feature = "vchan")]
    VchanService {
        accepted: Mutex<mpsc::Receiver<Result<(VchanStream, DomId)>>>,
        stop: Arc<AtomicBool>,
        thread: Option<std::thread::JoinHandle<()>>,
    },
}

impl Listener {
    /// Listen on `endpoint` with the defaults of [`ListenOptions::new`].
    pub fn bind(endpoint: &Endpoint) -> Result<Listener> {
        Listener::bind_with(endpoint, ListenOptions::new())
    }

    /// Listen on `endpoint`. For `vchan://DOMID/PORT` the listener serves client domain DOMID;
    /// for `vchan://DOMID/SERVICE` it publishes SERVICE for DOMID alone, for
    /// `vchan://*/SERVICE` for the domains the options allow (default: all).
    pub fn bind_with(endpoint: &Endpoint, options: ListenOptions) -> Result<Listener> {
        #[cfg(feature = "tls")]
        let tls = match endpoint.tls {
            true => Some((
                options.tls.clone().ok_or_else(|| no_tls_config(endpoint))?,
                options.tls_handshake_timeout(),
            )),
            false => None,
        };
        #[cfg(not(feature = "tls"))]
        if endpoint.tls {
            return Err(no_tls_config(endpoint));
        }
        #[cfg(not(feature = "vchan"))]
        let _ = options;
        let name = endpoint.to_string();
        let io_error = |source| ConduitError::Io {
            op: "listen on",
            endpoint: name.clone(),
            source,
        };
        let kind = match &endpoint.transport {
            Transport::Tcp { host, port } => {
                let addrs: Vec<SocketAddr> = (host.as_str(), *port)
                    .to_socket_addrs()
                    .map_err(io_error)?
                    .collect();
                ListenerKind::Tcp(TcpListener::bind(&addrs[..]).map_err(io_error)?)
            }
            Transport::Unix(path) => {
                ListenerKind::Unix(UnixListener::bind(path).map_err(io_error)?, path.clone())
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
                bind_vchan(xen, domain, port, options, &name)?
            }
            #[cfg(not(feature = "vchan"))]
            Transport::Vchan { .. } => {
                return Err(ConduitError::Unsupported {
                    endpoint: name,
                    reason: "this build has no vchan (the conduit-vchan feature `vchan`)",
                })
            }
        };
        Ok(Listener {
            endpoint: endpoint.clone(),
            kind,
            #[cfg(feature = "tls")]
            tls,
        })
    }

    /// The endpoint listened on (for TCP, with the port actually bound).
    pub fn local_endpoint(&self) -> Endpoint {
        match &self.kind {
            ListenerKind::Tcp(l) => self.endpoint.bound_at(l.local_addr()),
            _ => self.endpoint.clone(),
        }
    }

    /// Wait for the next connection, and say who it is from. Over TLS the handshake is left to
    /// the connection's first read or write (or [`Connection::handshake`]), so that one slow
    /// client cannot hold up the next.
    pub fn accept(&self) -> Result<(Connection, Peer)> {
        let name = || self.endpoint.to_string();
        let io_error = |source| ConduitError::Io {
            op: "accept on",
            endpoint: name(),
            source,
        };
        let (stream, peer, slot) = match &self.kind {
            ListenerKind::Tcp(l) => {
                let (s, addr) = l.accept().map_err(io_error)?;
                (Stream::Tcp(s), Peer::Tcp(addr), None)
            }
            ListenerKind::Unix(l, _) => {
                let (s, addr) = l.accept().map_err(io_error)?;
                let path = addr.as_pathname().map(PathBuf::from);
                (Stream::Unix(s), Peer::Unix(path), None)
            }
            #[cfg(feature = "vchan")]
            ListenerKind::VchanPort {
                xen,
                client,
                port,
                sizes,
                slot,
                stop,
            } => {
                // One connection at a time: wait for the last one to end.
                let (busy, freed) = &**slot;
                let mut taken = busy.lock().unwrap_or_else(PoisonError::into_inner);
                // ORDERING: Relaxed: the flag is a request to stop, polled; nothing is published
                // with it.
                while *taken && !stop.load(Ordering::Relaxed) {
                    taken = freed
                        .wait_timeout(taken, STOP_TICK)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
                let stream =
                    with_backend!(xen, b => serve_port(b, *client, *port, *sizes, stop, &name())?);
                *taken = true;
                (
                    Stream::Vchan(Box::new(stream)),
                    Peer::Vchan(*client),
                    Some(SlotGuard(Arc::clone(slot))),
                )
            }
            #[cfg(feature = "vchan")]
            ListenerKind::VchanService { accepted, .. } => {
                let next = accepted
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .recv();
                match next {
                    Ok(Ok((stream, domid))) => {
                        (Stream::Vchan(Box::new(stream)), Peer::Vchan(domid), None)
                    }
                    Ok(Err(e)) => return Err(e),
                    Err(_) => {
                        return Err(ConduitError::ListenerStopped {
                            endpoint: name(),
                            reason: "its rendezvous thread ended".to_owned(),
                        })
                    }
                }
            }
        };
        #[cfg(feature = "tls")]
        let stream = match &self.tls {
            Some((config, handshake_timeout)) => {
                let session = rustls::ServerConnection::new(Arc::clone(config)).map_err(|e| {
                    tls_error(
                        &self.endpoint,
                        io::Error::new(io::ErrorKind::InvalidInput, e),
                    )
                })?;
                Stream::Tls(Box::new(TlsStream::new(
                    session.into(),
                    stream,
                    *handshake_timeout,
                )))
            }
            None => stream,
        };
        let mut connection = Connection::new(stream, peer.clone());
        connection._slot = slot;
        Ok((connection, peer))
    }
}

/// The error for a `tls+` endpoint without a TLS configuration (or without the `tls` feature).
pub(crate) fn no_tls_config(endpoint: &Endpoint) -> ConduitError {
    ConduitError::Unsupported {
        endpoint: endpoint.to_string(),
        reason: if cfg!(feature = "tls") {
            "tls+ needs a TLS configuration given in code (Connector::tls, ListenOptions::tls)"
        } else {
            "this build has no TLS (the conduit-vchan feature `tls`)"
        },
    }
}

#[cfg(feature = "tls")]
pub(crate) fn tls_error(endpoint: &Endpoint, source: io::Error) -> ConduitError {
    ConduitError::Tls {
        endpoint: endpoint.to_string(),
        source,
    }
}

/// How often an integer port's waiting accept looks whether its listener is gone.
#[cfg(feature = "vchan")]
const STOP_TICK: Duration = Duration::from_millis(50);

/// Publish at the integer port's path and wait for the client (or for `stop`: then the server
/// is dropped, which withdraws its keys).
#[cfg(feature = "vchan")]
fn serve_port<B: IntoVchanStream>(
    backend: &B,
    client: DomId,
    port: u32,
    sizes: vchan::RingSizes,
    stop: &AtomicBool,
    name: &str,
) -> Result<VchanStream> {
    let stopped = || ConduitError::ListenerStopped {
        endpoint: name.to_owned(),
        reason: "it was closed".to_owned(),
    };
    // ORDERING: Relaxed: a polled request to stop (as above).
    if stop.load(Ordering::Relaxed) {
        return Err(stopped());
    }
    let server = vchan::Vchan::server(backend, client, &vchan::Address::Port(port), sizes)
        .map_err(rendezvous::vchan_error("listen on", name))?;
    loop {
        match server.wait_connected(Some(STOP_TICK)) {
            Ok(_) => break,
            // ORDERING: Relaxed: as above.
            Err(vchan::VchanError::TimedOut) if stop.load(Ordering::Relaxed) => {
                return Err(stopped())
            }
            Err(vchan::VchanError::TimedOut) => {}
            Err(e) => return Err(rendezvous::vchan_error("accept on", name)(e)),
        }
    }
    // Connected: nobody else may find these keys (the next accept publishes afresh).
    server
        .unpublish()
        .map_err(rendezvous::vchan_error("accept on", name))?;
    Ok(B::wrap(server))
}

#[cfg(feature = "vchan")]
fn bind_vchan(
    xen: Xen,
    domain: &Domain,
    port: &VchanPort,
    options: ListenOptions,
    name: &str,
) -> Result<ListenerKind> {
    match port {
        VchanPort::Number(port) => {
            let client = with_backend!(&xen, b => resolve(b, domain, name))?;
            Ok(ListenerKind::VchanPort {
                xen,
                client,
                port: *port,
                sizes: options.service.sizes,
                slot: Arc::new((Mutex::new(false), Condvar::new())),
                stop: Arc::new(AtomicBool::new(false)),
            })
        }
        VchanPort::Service(service) => {
            let (tx, rx) = mpsc::channel();
            let (stop, thread) = start_service(
                xen,
                domain,
                service,
                options.service,
                name,
                Box::new(move |item| tx.send(item).is_ok()),
            )?;
            Ok(ListenerKind::VchanService {
                accepted: Mutex::new(rx),
                stop,
                thread: Some(thread),
            })
        }
    }
}

/// Where a service's rendezvous thread hands what it accepted; false once nobody listens.
#[cfg(feature = "vchan")]
pub(crate) type Sink = Box<dyn FnMut(Result<(VchanStream, DomId)>) -> bool + Send>;

/// Publish a service and start its rendezvous thread.
#[cfg(feature = "vchan")]
pub(crate) fn start_service(
    xen: Xen,
    domain: &Domain,
    service: &str,
    mut options: ServiceOptions,
    name: &str,
    mut sink: Sink,
) -> Result<(Arc<AtomicBool>, std::thread::JoinHandle<()>)> {
    if *domain != Domain::Any {
        let only = with_backend!(&xen, b => resolve(b, domain, name))?;
        options.allow = rendezvous::Allow::Domains(vec![only]);
    }
    with_backend!(xen, b => rendezvous::serve(b, service.to_owned(), options, name.to_owned(),
        move |item| sink(item.map(|(v, d)| (IntoVchanStream::wrap(v), d)))))
}

impl Listener {
    /// For an integer vchan port: the flag that stops a waiting accept (the async listener
    /// sets it when it goes, while its accept still holds this listener).
    #[cfg(all(feature = "vchan", feature = "tokio"))]
    pub(crate) fn stop_flag(&self) -> Option<Arc<AtomicBool>> {
        match &self.kind {
            ListenerKind::VchanPort { stop, .. } => Some(Arc::clone(stop)),
            _ => None,
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        match &mut self.kind {
            ListenerKind::Unix(_, path) => {
                // Ours to remove, as a server removes its socket on exit.
                let _ = std::fs::remove_file(path);
            }
            #[cfg(feature = "vchan")]
            ListenerKind::VchanService { stop, thread, .. } => {
                // ORDERING: Relaxed: the thread polls the flag; join waits for it to finish.
                stop.store(true, Ordering::Relaxed);
                if let Some(thread) = thread.take() {
                    let _ = thread.join();
                }
            }
            _ => {}
        }
    }
}

impl fmt::Debug for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Listener")
            .field("endpoint", &self.endpoint.to_string())
            .finish_non_exhaustive()
    }
}
