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
    /// A vchan connect waited for a limit until its timeout: this process's bound on connects
    /// waiting on xenstore, or a quota or a busy answer of the store (see [`Limit`]). Below
    /// the limits a connect waits its turn and retries, with a backoff, within its timeout.
    #[cfg(feature = "vchan")]
    #[error("{endpoint}: no connection within {seconds:.1} s: {limit}")]
    Limit {
        /// The endpoint, as named.
        endpoint: String,
        /// The limit the connect met last.
        limit: Limit,
        /// How long it waited.
        seconds: f64,
    },
    /// A service's directory was removed from xenstore (by a domain the service admits, which
    /// may write into it, or by hand) and the listener published it again, with the requests
    /// it was answering, and went on serving. Reported through
    /// [`ListenOptions::on_recovered`](crate::ListenOptions::on_recovered), never by `accept`.
    #[cfg(feature = "vchan")]
    #[error("the directory of {endpoint} was removed from xenstore {times} time(s) since the last report (by a domain the service admits, or by hand); published again")]
    ServiceRestored {
        /// The endpoint, as named.
        endpoint: String,
        /// How many removals this report covers (later ones within
        /// [`RESTORE_REPORT_INTERVAL`](crate::rendezvous::RESTORE_REPORT_INTERVAL) are counted,
        /// not reported one by one).
        times: u32,
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
            #[cfg(feature = "vchan")]
            ConduitError::Limit { limit, .. } => limit.kind(),
            #[cfg(feature = "vchan")]
            ConduitError::ServiceRestored { .. } => io::ErrorKind::Other,
        }
    }
}

/// A limit that can keep a vchan connect waiting ([`ConduitError::Limit`]): this process's own
/// bounds, which keep it within its domain's xenstore quotas, and the store's answers.
#[cfg(feature = "vchan")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Limit {
    /// This process's bound on vchan connects waiting on xenstore at once
    /// ([`MAX_CONNECTS_IN_FLIGHT`](crate::rendezvous::MAX_CONNECTS_IN_FLIGHT)): each holds a
    /// watch and a node of its domain while it waits for its answer. The others wait their turn.
    ConnectsInFlight,
    /// This process's bound on rendezvous transactions open at once
    /// ([`MAX_TRANSACTIONS`](crate::rendezvous::MAX_TRANSACTIONS)).
    Transactions,
    /// The store's quota of transactions open at once for this domain (`ENOSPC` when one
    /// starts; xenstored's `-t`, 10 by default, for all of a guest's processes together).
    StoreTransactions,
    /// The store's quota of nodes this domain may own (`ENOSPC` on a write; xenstored's `-E`,
    /// 1000 by default).
    StoreNodes,
    /// The store's quota of watches this domain may hold (`E2BIG`; xenstored's `-W`, 128 by
    /// default).
    StoreWatches,
    /// The store answered `EAGAIN` or `EBUSY` every time (busy, or other writers kept
    /// conflicting with the request's transaction).
    StoreBusy,
}

#[cfg(feature = "vchan")]
impl Limit {
    /// The `io::ErrorKind` of a connect that gave up at this limit.
    pub fn kind(self) -> io::ErrorKind {
        match self {
            Limit::StoreTransactions | Limit::StoreNodes | Limit::StoreWatches => {
                io::ErrorKind::QuotaExceeded
            }
            Limit::ConnectsInFlight | Limit::Transactions | Limit::StoreBusy => {
                io::ErrorKind::ResourceBusy
            }
        }
    }
}

#[cfg(feature = "vchan")]
impl std::fmt::Display for Limit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use crate::rendezvous::{MAX_CONNECTS_IN_FLIGHT, MAX_TRANSACTIONS};
        match self {
            Limit::ConnectsInFlight => write!(
                f,
                "this process already had {MAX_CONNECTS_IN_FLIGHT} vchan connects waiting on \
                 xenstore (conduit-vchan's bound) all along"
            ),
            Limit::Transactions => write!(
                f,
                "this process's {MAX_TRANSACTIONS} rendezvous transaction(s) at a time \
                 (conduit-vchan's bound) stayed taken"
            ),
            Limit::StoreTransactions => f.write_str(
                "xenstore's quota of transactions open at once for this domain stayed full \
                 (ENOSPC; xenstored -t, 10 by default)",
            ),
            Limit::StoreNodes => f.write_str(
                "xenstore's quota of nodes this domain may own stayed full (ENOSPC; xenstored \
                 -E, 1000 by default)",
            ),
            Limit::StoreWatches => f.write_str(
                "xenstore's quota of watches for this domain stayed full (E2BIG; xenstored -W, \
                 128 by default)",
            ),
            Limit::StoreBusy => f.write_str("xenstore answered EAGAIN or EBUSY every time"),
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
