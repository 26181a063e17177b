//! conduit-vchan: name an endpoint and get the same byte stream, over vchan, TCP, Unix sockets
//! (and TLS over any of them), blocking or async. Change the name, not the program.
//!
//! | name | transport |
//! |---|---|
//! | `tcp://HOST:PORT` | TCP |
//! | `unix:///ABS/PATH`, `unix:REL` | a Unix stream socket |
//! | `vchan://DOMID/PORT` | a vchan at libxenvchan's conventional path, wire-compatible with any libxenvchan peer; one connection at a time |
//! | `vchan://DOMAIN/SERVICE` | a fresh vchan per connection through the service's rendezvous (see [`rendezvous`]); any number at once |
//! | `vchan://*/SERVICE` | a listener for any domain its options allow |
//! | `tls+...` | TLS over any of the above, configured in code |
//!
//! DOMAIN is a domain id or the domain's name as the toolstack wrote it.
//!
//! ```
//! use std::io::{Read, Write};
//! use conduit_vchan::{Connector, Listener, ListenOptions, Xen};
//! use vchan::sim::SimXen;
//! use xen_types::DomId;
//!
//! let xen = SimXen::new();                                  // an in-process simulated Xen
//! let dom0 = Xen::Sim(xen.domain(DomId(0)));
//! let guest = Xen::Sim(xen.create_domain(DomId(5)).unwrap());
//!
//! // The same code serves and connects over any transport: only the names change.
//! for (listen, connect) in [("vchan://*/greet", "vchan://5/greet"),
//!                           ("tcp://127.0.0.1:0", "")] {
//!     let listener = Listener::bind_with(&listen.parse().unwrap(),
//!                                        ListenOptions::new().xen(guest.clone())).unwrap();
//!     let target = if connect.is_empty() { listener.local_endpoint() } else { connect.parse().unwrap() };
//!     let server = std::thread::spawn(move || {
//!         let (mut conn, _peer) = listener.accept().unwrap();
//!         conn.write_all(b"hello").unwrap();
//!     });
//!     let mut conn = Connector::new().xen(dom0.clone()).connect(&target).unwrap();
//!     let mut text = String::new();
//!     conn.read_to_string(&mut text).unwrap();
//!     assert_eq!(text, "hello");
//!     server.join().unwrap();
//! }
//! ```
//!
//! # Features
//!
//! Each transport and each framework's glue is a cargo feature; nothing is linked unless asked
//! for (the lesson of ocaml-conduit's "dummy stacks").
//!
//! ## `vchan` (default)
//! The vchan transports, on real Xen, on the simulated host (`xensim`) or on the in-process
//! simulation ([`Xen`]). Without it only TCP and Unix sockets are built and nothing of Xen is
//! linked; a `vchan://` name is then [`ConduitError::Unsupported`].
//!
//! ## `tokio`
//! The async API: [`Connector::connect_async`], [`AsyncListener`], [`AsyncConnection`]
//! (`AsyncRead + AsyncWrite`; `shutdown()` is the half-close). A vchan connect, which may wait
//! for its server, runs on tokio's blocking pool.
//!
//! ## `tls`
//! `tls+` before any name: rustls (its `ring` provider) over the transport, in the blocking and
//! the async API alike. The configuration is given in code, never built from the name:
//! `Connector::tls(config, server_name)` and `ListenOptions::tls(config)`. A vchan peer has no
//! DNS name, so the server name the client expects is always explicit. A client completes the
//! handshake when it connects (a refused certificate is [`ConduitError`]`::Tls`, with rustls'
//! reason); an accepted connection completes it on its first read or write, so a slow client
//! never holds up the listener. Either side's handshake must complete within its handshake
//! timeout (`Connector::handshake_timeout`, `ListenOptions::handshake_timeout`, 10 s by
//! default), so a peer that sends nothing fails with `TimedOut` instead of holding a connection
//! for ever; the async API keeps these deadlines without tokio's timer, so a runtime built
//! without `enable_time` works too. A `tls+` name without a configuration is
//! [`ConduitError::Unsupported`]. `shutdown_write`/`shutdown()` sends `close_notify`, then
//! half-closes the transport; dropping a connection sends `close_notify` as well (the blocking
//! API waits for room in the transport at most the handshake timeout; the async one cannot
//! wait, and sends it only if the transport takes it at once). `tls` brings tokio-rustls, which
//! names the tokio crate without its runtime.
//!
//! ## `hyper`
//! `HyperConnector`: a hyper-util client connector (`tower_service::Service<http::Uri>`) over
//! any endpoint, fixed or chosen per URI; also what tonic's
//! `Endpoint::connect_with_connector` takes. Its connections are `TokioIo<AsyncConnection>`
//! (`hyper::rt::Read + Write`, hyper-util's `Connection`: the server's [`Peer`] lands in each
//! response's extensions). Turns on `tokio`.
//!
//! ## `axum`
//! `impl axum::serve::Listener for AsyncListener`: `axum::serve(listener, app)` over any
//! endpoint; with `into_make_service_with_connect_info::<Peer>()` a handler reads the calling
//! domain through `ConnectInfo<Peer>`. Turns on `tokio`.
//!
//! ## `tonic`
//! `impl tonic::transport::server::Connected for AsyncConnection` (the [`Peer`] lands in each
//! request's extensions) and `AsyncListener::incoming`, a stream of connections for
//! `Server::serve_with_incoming`. Clients use the `hyper` feature's connector. Turns on `tokio`.
#![forbid(unsafe_code)]

#[cfg(feature = "tokio")]
mod asynch;
mod blocking;
#[cfg(all(feature = "tokio", feature = "tls"))]
mod deadline;
mod endpoint;
mod error;
#[cfg(feature = "hyper")]
mod hyper_connector;
#[cfg(feature = "tokio")]
mod pump;
#[cfg(feature = "vchan")]
pub mod rendezvous;
#[cfg(any(feature = "axum", feature = "tonic"))]
mod serve_glue;
#[cfg(feature = "vchan")]
mod throttle;
#[cfg(feature = "tls")]
mod tls;
#[cfg(feature = "vchan")]
mod xen;

#[cfg(all(feature = "tokio", feature = "vchan"))]
pub use asynch::AsyncVchanStream;
#[cfg(feature = "tokio")]
pub use asynch::{connect_async, AsyncConnection, AsyncListener};
#[cfg(feature = "tls")]
pub use blocking::DEFAULT_HANDSHAKE_TIMEOUT;
pub use blocking::{
    connect, Connection, Connector, ListenOptions, Listener, Peer, DEFAULT_CONNECT_TIMEOUT,
};
pub use endpoint::{Domain, Endpoint, ParseError, Transport, VchanPort};
#[cfg(feature = "vchan")]
pub use error::Limit;
pub use error::{describe, ConduitError, Result};
#[cfg(feature = "hyper")]
pub use hyper_connector::{Connecting, HyperConnector};
#[cfg(feature = "tokio")]
pub use pump::{Pump, PumpError};
#[cfg(feature = "tonic")]
pub use serve_glue::Incoming;
#[cfg(feature = "vchan")]
pub use xen::{IntoVchanStream, VchanStream, Xen};
