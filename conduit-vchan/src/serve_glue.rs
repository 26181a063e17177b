//! Serving frameworks over an [`AsyncListener`]: `axum::serve` (feature `axum`) and tonic's
//! `Server::serve_with_incoming` (feature `tonic`).

use std::time::Duration;

use crate::asynch::AsyncListener;
use crate::error::ConduitError;

/// How long to wait before accepting again after an error that is not one connection's.
const FIRST_PAUSE: Duration = Duration::from_millis(10);
const LONGEST_PAUSE: Duration = Duration::from_secs(1);

/// An error of one connection only (the next accept may well succeed at once), as axum's own
/// TCP listener judges it.
fn one_connection(e: &ConduitError) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}

/// The pause after `e`, given the last one: none for one connection's error, else doubling
/// from 10 ms to 1 s (as when the process runs out of file descriptors).
fn pause_after(e: &ConduitError, last: Option<Duration>) -> Option<Duration> {
    if one_connection(e) {
        return None;
    }
    Some(last.map_or(FIRST_PAUSE, |p| (p * 2).min(LONGEST_PAUSE)))
}

#[cfg(feature = "axum")]
mod axum_glue {
    use super::*;
    use crate::asynch::AsyncConnection;
    use crate::blocking::Peer;

    /// `axum::serve(listener, app)` over any endpoint. `accept` cannot fail: after an error it
    /// waits briefly (10 ms, doubling to 1 s while errors last; not at all after one
    /// connection's error) and accepts again, as axum's own TCP listener does. The address is
    /// the client's [`Peer`]; with `into_make_service_with_connect_info::<Peer>()` a handler
    /// reads it through `ConnectInfo<Peer>`.
    ///
    /// ```
    /// use axum::{extract::ConnectInfo, routing::get, Router};
    /// use conduit_vchan::{AsyncListener, Connector, ListenOptions, Peer, Xen};
    /// use tokio::io::{AsyncReadExt, AsyncWriteExt};
    /// use vchan::sim::SimXen;
    /// use xen_types::DomId;
    ///
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let xen = SimXen::new();
    /// let guest = Xen::Sim(xen.create_domain(DomId(5)).unwrap());
    /// let dom0 = Xen::Sim(xen.domain(DomId(0)));
    ///
    /// // Domain 5 serves HTTP as the service `http`, to any domain.
    /// let listener = AsyncListener::bind_with(&"vchan://*/http".parse().unwrap(),
    ///                                         ListenOptions::new().xen(guest)).await.unwrap();
    /// let app = Router::new()
    ///     .route("/", get(|ConnectInfo(peer): ConnectInfo<Peer>| async move { format!("hi {peer}") }));
    /// tokio::spawn(async move {
    ///     axum::serve(listener, app.into_make_service_with_connect_info::<Peer>()).await
    /// });
    ///
    /// // Dom0 asks, in plain HTTP/1.0 over the vchan.
    /// let mut conn = Connector::new().xen(dom0)
    ///     .connect_async(&"vchan://5/http".parse().unwrap()).await.unwrap();
    /// conn.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
    /// let mut answer = String::new();
    /// conn.read_to_string(&mut answer).await.unwrap();
    /// assert!(answer.ends_with("hi domain 0"));
    /// # });
    /// ```
    impl axum::serve::Listener for AsyncListener {
        type Io = AsyncConnection;
        type Addr = Peer;

        async fn accept(&mut self) -> (AsyncConnection, Peer) {
            let mut pause = None;
            loop {
                match AsyncListener::accept(self).await {
                    Ok(accepted) => return accepted,
                    Err(e) => {
                        pause = pause_after(&e, pause);
                        if let Some(pause) = pause {
                            tokio::time::sleep(pause).await;
                        }
                    }
                }
            }
        }

        fn local_addr(&self) -> std::io::Result<Peer> {
            self.local_peer()
        }
    }

    /// `ConnectInfo<Peer>`: the client's domain (vchan), address (TCP) or socket (Unix).
    impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, AsyncListener>>
        for Peer
    {
        fn connect_info(stream: axum::serve::IncomingStream<'_, AsyncListener>) -> Peer {
            stream.remote_addr().clone()
        }
    }
}

#[cfg(feature = "tonic")]
mod tonic_glue {
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::Arc;
    use std::task::{ready, Context, Poll};

    use super::*;
    use crate::asynch::AsyncConnection;
    use crate::blocking::Peer;
    use crate::error::Result;

    /// tonic puts the client's [`Peer`] into each request's extensions:
    /// `request.extensions().get::<Peer>()`.
    impl tonic::transport::server::Connected for AsyncConnection {
        type ConnectInfo = Peer;

        fn connect_info(&self) -> Peer {
            self.peer().clone()
        }
    }

    type Accepting = Pin<Box<dyn Future<Output = Result<(AsyncConnection, Peer)>> + Send>>;

    /// The connections of an [`AsyncListener`] as a stream
    /// ([`futures_core::Stream`]), for tonic's `Server::serve_with_incoming`. An error is
    /// passed on (tonic logs it and goes on); after one that is not a single connection's the
    /// stream waits briefly before accepting again. It ends after the listener stops.
    ///
    /// ```ignore
    /// // A service as tonic's code generator writes it (`EchoServer`), over vchan:
    /// let listener = AsyncListener::bind(&"vchan://*/grpc".parse()?).await?;
    /// tonic::transport::Server::builder()
    ///     .add_service(EchoServer::new(MyEcho))
    ///     .serve_with_incoming(listener.incoming())
    ///     .await?;
    ///
    /// // And a client in another domain, through the `hyper` feature's connector:
    /// let channel = tonic::transport::Endpoint::from_static("http://echo.invalid")
    ///     .connect_with_connector(HyperConnector::new(Connector::new(), "vchan://5/grpc".parse()?))
    ///     .await?;
    /// let mut client = EchoClient::new(channel);
    /// ```
    pub struct Incoming {
        listener: Arc<AsyncListener>,
        accepting: Option<Accepting>,
        pause: Option<Pin<Box<tokio::time::Sleep>>>,
        last_pause: Option<Duration>,
        ended: bool,
    }

    impl AsyncListener {
        /// Its connections as a stream, for tonic's `Server::serve_with_incoming`.
        pub fn incoming(self) -> Incoming {
            Incoming {
                listener: Arc::new(self),
                accepting: None,
                pause: None,
                last_pause: None,
                ended: false,
            }
        }
    }

    impl futures_core::Stream for Incoming {
        type Item = Result<AsyncConnection>;

        fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            let this = self.get_mut();
            if this.ended {
                return Poll::Ready(None);
            }
            if let Some(pause) = &mut this.pause {
                ready!(pause.as_mut().poll(cx));
                this.pause = None;
            }
            let accepting = this.accepting.get_or_insert_with(|| {
                let listener = Arc::clone(&this.listener);
                Box::pin(async move { listener.accept().await })
            });
            let outcome = ready!(accepting.as_mut().poll(cx));
            this.accepting = None;
            Poll::Ready(Some(match outcome {
                Ok((connection, _)) => {
                    this.last_pause = None;
                    Ok(connection)
                }
                Err(e) => {
                    if let ConduitError::ListenerStopped { .. } = e {
                        this.ended = true;
                    } else if let Some(pause) = pause_after(&e, this.last_pause) {
                        this.last_pause = Some(pause);
                        this.pause = Some(Box::pin(tokio::time::sleep(pause)));
                    }
                    Err(e)
                }
            }))
        }
    }

    impl std::fmt::Debug for Incoming {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Incoming")
                .field("listener", &self.listener)
                .finish_non_exhaustive()
        }
    }
}

#[cfg(feature = "tonic")]
pub use tonic_glue::Incoming;
