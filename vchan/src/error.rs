//! The endpoint's error type.

use std::io;

use xen_types::DomId;

use crate::layout::LayoutError;
use crate::ring::RingCorrupted;

/// Everything that can go wrong with a vchan endpoint.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VchanError {
    /// The peer wrote indices that no honest peer can produce. (The message says what it wrote;
    /// the detail is not also the error's `source`, so a chain prints it once.)
    #[error("the peer corrupted the ring: {0}")]
    RingCorrupted(RingCorrupted),
    /// The ring layout asked for, or found in the control page, cannot be used (said in the
    /// message, not repeated as the `source`).
    #[error("invalid ring layout: {0}")]
    Layout(LayoutError),
    /// The peer's live byte holds a value with no meaning.
    #[error("the peer's live byte holds {0}, which is not a connection state")]
    BadLiveByte(u8),
    /// A server published a xenstore key that cannot be right.
    #[error("the server's {key} key holds {value:?}")]
    BadKey {
        /// The key's name (`ring-ref` or `event-channel`).
        key: &'static str,
        /// What it held.
        value: String,
    },
    /// No server has published keys at the path that this domain may read.
    #[error("no vchan server at {path} (or none this domain may read)")]
    NoServer {
        /// The xenstore path that was searched.
        path: String,
    },
    /// The server published at the path already has a client, or has closed.
    #[error("the vchan server at {path} is not waiting for a client (it has one, or it closed)")]
    NotWaiting {
        /// The xenstore path of the server's keys.
        path: String,
    },
    /// A packet can never fit the ring, in any mode.
    #[error("a {len}-byte message cannot fit a {capacity}-byte ring")]
    MessageTooLarge {
        /// The packet's length.
        len: usize,
        /// The ring's capacity.
        capacity: usize,
    },
    /// The peer has closed the channel (or died); nothing more can be sent.
    #[error("the peer has closed the channel")]
    PeerClosed,
    /// This end's writing side was shut down (`Vchan::shutdown_write`); nothing more can be sent.
    #[error("this end of the channel was shut down for writing")]
    ShutDown,
    /// A non-blocking operation could not proceed now.
    #[error("the operation would block")]
    WouldBlock,
    /// A blocking operation's timeout passed.
    #[error("timed out")]
    TimedOut,
    /// Server and client in one domain, which this backend cannot do safely.
    #[error("domain {0} cannot serve itself on this backend")]
    Loopback(DomId),
    /// The key store failed.
    #[error("xenstore failed")]
    Xenstore(#[from] xenstore::XenstoreError),
    /// A grant or event-channel operation failed.
    #[error("could not {op}")]
    Backend {
        /// What was being done.
        op: &'static str,
        /// The system's error.
        #[source]
        source: io::Error,
    },
}

impl From<RingCorrupted> for VchanError {
    fn from(e: RingCorrupted) -> VchanError {
        VchanError::RingCorrupted(e)
    }
}

impl From<LayoutError> for VchanError {
    fn from(e: LayoutError) -> VchanError {
        VchanError::Layout(e)
    }
}

impl VchanError {
    pub(crate) fn backend(op: &'static str) -> impl FnOnce(io::Error) -> VchanError {
        move |source| VchanError::Backend { op, source }
    }

    /// The `io::ErrorKind` this error maps to.
    pub fn kind(&self) -> io::ErrorKind {
        match self {
            VchanError::RingCorrupted(_)
            | VchanError::Layout(_)
            | VchanError::BadLiveByte(_)
            | VchanError::BadKey { .. } => io::ErrorKind::InvalidData,
            VchanError::NoServer { .. } => io::ErrorKind::NotFound,
            VchanError::NotWaiting { .. } => io::ErrorKind::ConnectionRefused,
            VchanError::MessageTooLarge { .. } | VchanError::Loopback(_) => {
                io::ErrorKind::InvalidInput
            }
            VchanError::PeerClosed | VchanError::ShutDown => io::ErrorKind::BrokenPipe,
            VchanError::WouldBlock => io::ErrorKind::WouldBlock,
            VchanError::TimedOut => io::ErrorKind::TimedOut,
            VchanError::Xenstore(xenstore::XenstoreError::Io(e)) => e.kind(),
            VchanError::Xenstore(_) => io::ErrorKind::Other,
            VchanError::Backend { source, .. } => source.kind(),
        }
    }
}

impl From<VchanError> for io::Error {
    fn from(e: VchanError) -> io::Error {
        io::Error::new(e.kind(), e)
    }
}

/// Result alias for this crate.
pub type Result<T, E = VchanError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::Side;
    use std::error::Error;

    /// The message and its causes, as the tools print them.
    fn chain(e: &dyn Error) -> String {
        let mut text = e.to_string();
        let mut source = e.source();
        while let Some(s) = source {
            text.push_str(": ");
            text.push_str(&s.to_string());
            source = s.source();
        }
        text
    }

    #[test]
    fn a_corrupted_ring_and_a_bad_layout_say_their_cause_once() {
        let corrupted = VchanError::from(RingCorrupted {
            ring: Side::Left,
            prod: 5000,
            cons: 0,
            size: 1024,
        });
        let text = chain(&corrupted);
        assert_eq!(text.matches("claim 5000 bytes").count(), 1, "{text}");
        let io = io::Error::from(corrupted);
        assert_eq!(
            chain(&io).matches("claim 5000 bytes").count(),
            1,
            "{}",
            chain(&io)
        );

        let layout = VchanError::from(LayoutError::TooLarge { requested: 1 << 30 });
        let text = chain(&layout);
        assert_eq!(text.matches("1073741824").count(), 1, "{text}");
    }
}
