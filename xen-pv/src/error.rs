//! The one error type of the platform.

use alloc::string::{String, ToString};
use xenstore::{Errno, XenstoreError};

/// Everything a platform operation can fail with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PvError {
    /// A hypercall returned an error (a negated Xen errno).
    #[error("Xen refused {op} (error {code})")]
    Hypercall {
        /// The operation.
        op: &'static str,
        /// The negated errno it returned.
        code: i64,
    },
    /// A grant-table operation failed with a `GNTST_*` status.
    #[error("grant {op} failed with status {status}")]
    Grant {
        /// The operation.
        op: &'static str,
        /// The `GNTST_*` status.
        status: i16,
    },
    /// The page pool has no run of this many free pages.
    #[error("no {0} contiguous free pages in the page pool")]
    OutOfPages(usize),
    /// Every grant reference is in use.
    #[error("no free grant reference")]
    OutOfGrantRefs,
    /// The grantee still maps the page: the grant cannot end yet (the MSA02 rule).
    #[error("the grantee still maps the page")]
    GrantInUse,
    /// A grant ref that is reserved or past the end of the table.
    #[error("grant ref {0} is reserved or out of range")]
    BadGrantRef(u32),
    /// A frame number does not fit a v1 grant entry.
    #[error("machine frame {0:#x} does not fit a grant entry")]
    FrameTooLarge(u64),
    /// An event-channel port outside the 2-level ABI's range.
    #[error("event-channel port {0} is out of range")]
    BadPort(u32),
    /// More ports than one poll takes.
    #[error("cannot poll {0} ports at once")]
    TooManyPorts(usize),
    /// xenstored answered with an error name.
    #[error("xenstore replied {0}")]
    Store(Errno),
    /// xenstored broke the wire protocol.
    #[error("xenstore protocol violation: {0}")]
    StoreProtocol(String),
    /// A ring's indices are impossible (the other end corrupted them).
    #[error("the {0} ring's indices are corrupt")]
    RingCorrupt(&'static str),
    /// Nothing happened before the deadline.
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    /// The domain builder's start_info is not what a 64-bit PV guest expects.
    #[error("bad start_info: {0}")]
    BadStartInfo(&'static str),
}

impl From<XenstoreError> for PvError {
    fn from(e: XenstoreError) -> PvError {
        match e {
            XenstoreError::Errno(errno) => PvError::Store(errno),
            XenstoreError::Protocol(what) => PvError::StoreProtocol(what),
            // With `std` (host builds), the socket client's I/O errors, which a ring never has.
            #[allow(unreachable_patterns)]
            other => PvError::StoreProtocol(other.to_string()),
        }
    }
}

/// For the `XenStore` trait (the vchan core's store): xenstored's error names stay errnos;
/// everything else (a timeout, a broken ring or protocol) is a protocol error with this
/// crate's message.
impl From<PvError> for XenstoreError {
    fn from(e: PvError) -> XenstoreError {
        match e {
            PvError::Store(errno) => XenstoreError::Errno(errno),
            PvError::StoreProtocol(what) => XenstoreError::Protocol(what),
            other => XenstoreError::Protocol(other.to_string()),
        }
    }
}

impl From<xenstore::wire::WireError> for PvError {
    fn from(e: xenstore::wire::WireError) -> PvError {
        PvError::StoreProtocol(e.to_string())
    }
}

/// Result alias for this crate.
pub type Result<T, E = PvError> = core::result::Result<T, E>;
