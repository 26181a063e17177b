//! The crate's error type.

use std::io;

/// Everything that can go wrong naming, connecting or listening.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConduitError {
    /// A string that is not an endpoint (from a resolver, say).
    #[error(transparent)]
    Name(#[from] crate::endpoint::ParseError),
    /// A socket operation failed.
    #[error("cannot {op} {endpoint}")]
    Io {
        /// What was being done (`connect to`, `listen on`, ...).
        op: &'static str,
        /// The endpoint, as named.
        endpoint: String,
        /// The system's error.
        #[source]
        source: io::Error,
    },
    /// A vchan operation failed.
    #[cfg(feature = "vchan")]
    #[error("cannot {op} {endpoint}")]
    Vchan {
        /// What was being done.
        op: &'static str,
        /// The endpoint, as named.
        endpoint: String,
        /// vchan's error.
        #[source]
        source: vchan::VchanError,
    },
    /// The key store failed during a rendezvous.
    #[cfg(feature = "vchan")]
    #[error("xenstore failed while trying to {op} {endpoint}")]
    Xenstore {
        /// What was being done.
        op: &'static str,
        /// The endpoint, as named.
        endpoint: String,
        /// xenstore's error.
        #[source]
        source: xenstore::XenstoreError,
    },
    /// No service of that name is published in that domain (or this domain may not use it).
    #[error("no service at {endpoint} (none published, or not for this domain)")]
    NoService {
        /// The endpoint, as named.
        endpoint: String,
    },
    /// The listener removed the request without answering: its policy does not allow this
    /// domain, or it had too many requests pending.
    #[error("{endpoint} refused the connection")]
    Refused {
        /// The endpoint, as named.
        endpoint: String,
    },
    /// Nothing answered in time.
    #[error("{endpoint} did not answer within {seconds:.1} s")]
    TimedOut {
        /// The endpoint, as named.
        endpoint: String,
        /// How long we waited.
        seconds: f64,
    },
    /// A domain name that no domain this domain can see carries.
    #[error("no domain named {name:?} (or none this domain may see)")]
    NoSuchDomain {
        /// The name.
        name: String,
    },
    /// A service is already published under that name in this domain.
    #[error("{endpoint} is already published (a listener runs, or a killed one left it: remove it with `xs rm`)")]
    InUse {
        /// The endpoint, as named.
        endpoint: String,
    },
    /// The endpoint cannot be used this way (for example `vchan://*/...` to connect, or a
    /// transport this build leaves out).
    #[error("{endpoint}: {reason}")]
    Unsupported {
        /// The endpoint, as named.
        endpoint: String,
        /// Why.
        reason: &'static str,
    },
    /// The TLS handshake failed: the peer's certificate was refused (rustls says why), the
    /// peer refused ours, or it does not speak TLS.
    #[cfg(feature = "tls")]
    #[error("TLS with {endpoint} failed")]
    Tls {
        /// The endpoint, as named.
        endpoint: String,
        /// What went wrong: the transport's error, or rustls' (kind `InvalidData`).
        #[source]
        source: io::Error,
    },
    /// No Xen platform could be opened.
    #[error("no Xen platform for {endpoint}")]
    NoXen {
        /// The endpoint, as named.
        endpoint: String,
        /// Why not.
        #[source]
        source: io::Error,
    },
    /// The listener stopped (its rendezvous failed or it was closed).
    #[error("the listener on {endpoint} stopped: {reason}")]
    ListenerStopped {
        /// The endpoint, as named.
        endpoint: String,
        /// Why.
        reason: String,
    },
}

impl ConduitError {
    /// The `io::ErrorKind` this error maps to.
    pub fn kind(&self) -> io::ErrorKind {
        match self {
            ConduitError::Name(_) => io::ErrorKind::InvalidInput,
            ConduitError::Io { source, .. } => source.kind(),
            #[cfg(feature = "vchan")]
            ConduitError::Vchan { source, .. } => source.kind(),
            #[cfg(feature = "vchan")]
            ConduitError::Xenstore { .. } => io::ErrorKind::Other,
            ConduitError::NoService { .. } | ConduitError::NoSuchDomain { .. } => {
                io::ErrorKind::NotFound
            }
            ConduitError::Refused { .. } => io::ErrorKind::ConnectionRefused,
            ConduitError::TimedOut { .. } => io::ErrorKind::TimedOut,
            ConduitError::InUse { .. } => io::ErrorKind::AddrInUse,
            ConduitError::Unsupported { .. } => io::ErrorKind::Unsupported,
            ConduitError::NoXen { source, .. } => source.kind(),
            #[cfg(feature = "tls")]
            ConduitError::Tls { source, .. } => source.kind(),
            ConduitError::ListenerStopped { .. } => io::ErrorKind::BrokenPipe,
        }
    }
}

impl From<ConduitError> for io::Error {
    fn from(e: ConduitError) -> io::Error {
        io::Error::new(e.kind(), e)
    }
}

/// Result alias for this crate.
pub type Result<T, E = ConduitError> = std::result::Result<T, E>;

/// An error and its sources on one line, `outer: inner: ...`: how the tools and the examples
/// report a failure (each layer says its own part, once).
pub fn describe(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
