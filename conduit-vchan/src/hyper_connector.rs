//! A hyper-util client connector over any endpoint (feature `hyper`): [`HyperConnector`].

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;

use crate::asynch::AsyncConnection;
use crate::blocking::Connector;
use crate::endpoint::Endpoint;
use crate::error::{ConduitError, Result};

/// A connector for hyper-util's client (and for tonic's
/// `Endpoint::connect_with_connector`): a `tower_service::Service<http::Uri>` whose
/// connections are [`AsyncConnection`]s through [`TokioIo`], so HTTP/1 and HTTP/2 run over
/// vchan, TCP, Unix sockets or TLS alike.
///
/// The URI's host does not choose the transport: either every request goes to one endpoint
/// ([`HyperConnector::new`]), or a function of the URI names it
/// ([`HyperConnector::with_resolver`]). The [`Connector`] supplies what a name cannot (the Xen
/// platform, the TLS configuration, the timeout).
///
/// Each response carries the server's [`Peer`](crate::Peer) in its extensions. Over TLS, a
/// server that agrees `h2` through ALPN gets HTTP/2.
///
/// ```
/// use conduit_vchan::{Connector, HyperConnector};
/// use hyper_util::client::legacy::Client;
/// use hyper_util::rt::TokioExecutor;
///
/// let connector = HyperConnector::new(Connector::new(), "vchan://5/http".parse().unwrap());
/// let client: Client<_, http_body_util::Empty<hyper::body::Bytes>> =
///     Client::builder(TokioExecutor::new()).build(connector);
/// ```
#[derive(Clone)]
pub struct HyperConnector {
    connector: Connector,
    route: Route,
}

/// A function from a request's URI to the endpoint to connect to.
type Resolver = dyn Fn(&Uri) -> Result<Endpoint> + Send + Sync;

#[derive(Clone)]
enum Route {
    Fixed(Endpoint),
    Resolve(Arc<Resolver>),
}

impl HyperConnector {
    /// Connect every request to `endpoint`, whatever its URI says.
    pub fn new(connector: Connector, endpoint: Endpoint) -> HyperConnector {
        HyperConnector {
            connector,
            route: Route::Fixed(endpoint),
        }
    }

    /// Connect each request to the endpoint `resolve` names for its URI (an error fails the
    /// request). For example, ocaml-conduit's convention that `http://NAME.xen/` is the vchan
    /// service `http` of the domain called NAME:
    ///
    /// ```
    /// use conduit_vchan::{ConduitError, Connector, Endpoint, HyperConnector};
    ///
    /// let connector = HyperConnector::with_resolver(Connector::new(), |uri| {
    ///     let host = uri.host().unwrap_or_default();
    ///     let scheme = uri.scheme_str().unwrap_or("http");
    ///     match host.strip_suffix(".xen") {
    ///         Some(domain) => Ok(format!("vchan://{domain}/{scheme}").parse()?),
    ///         None => Ok(format!("tcp://{host}:{}", uri.port_u16().unwrap_or(80)).parse()?),
    ///     }
    /// });
    /// ```
    pub fn with_resolver<F>(connector: Connector, resolve: F) -> HyperConnector
    where
        F: Fn(&Uri) -> Result<Endpoint> + Send + Sync + 'static,
    {
        HyperConnector {
            connector,
            route: Route::Resolve(Arc::new(resolve)),
        }
    }
}

impl fmt::Debug for HyperConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("HyperConnector");
        s.field("connector", &self.connector);
        match &self.route {
            Route::Fixed(endpoint) => s.field("endpoint", &endpoint.to_string()),
            Route::Resolve(_) => s.field("endpoint", &"(resolved per URI)"),
        };
        s.finish()
    }
}

impl tower_service::Service<Uri> for HyperConnector {
    type Response = TokioIo<AsyncConnection>;
    type Error = ConduitError;
    type Future = Connecting;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Connecting {
        let endpoint = match &self.route {
            Route::Fixed(endpoint) => Ok(endpoint.clone()),
            Route::Resolve(resolve) => resolve(&uri),
        };
        let connector = self.connector.clone();
        Connecting(Box::pin(async move {
            let connection = connector.connect_async(&endpoint?).await?;
            Ok(TokioIo::new(connection))
        }))
    }
}

/// The future of a [`HyperConnector`] connection.
pub struct Connecting(Pin<Box<dyn Future<Output = Result<TokioIo<AsyncConnection>>> + Send>>);

impl Future for Connecting {
    type Output = Result<TokioIo<AsyncConnection>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.0.as_mut().poll(cx)
    }
}

impl fmt::Debug for Connecting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Connecting")
    }
}

/// What hyper-util's client asks of a connection: the server's [`Peer`](crate::Peer) goes into
/// each response's extensions, and an ALPN agreement on `h2` selects HTTP/2.
impl Connection for AsyncConnection {
    fn connected(&self) -> Connected {
        let connected = Connected::new().extra(self.peer().clone());
        #[cfg(feature = "tls")]
        if self.alpn_protocol() == Some(b"h2") {
            return connected.negotiated_h2();
        }
        connected
    }
}
