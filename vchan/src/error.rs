//! The one error type, from the ring to the tool: [`Error`], generic over the platform's device
//! errors, and on `std` [`VchanError`], its instance for the `std` platforms.

use alloc::string::String;
use core::fmt;

use crate::layout::LayoutError;
use crate::ring::RingCorrupted;
use xenstore::XenstoreError;

/// The platform operation that failed, for [`Error::Backend`]: a decision on what failed (a
/// caller that retries when a server went away meanwhile, say) matches these, never text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Op {
    /// Opening the grant-sharing device.
    OpenSharer,
    /// Opening the grant-mapping device.
    OpenMapper,
    /// Opening the event-channel device.
    OpenEvents,
    /// Allocating an unbound port for the client (server).
    AllocatePort,
    /// Binding the server's port (client).
    BindPort,
    /// Unmasking our port.
    Unmask,
    /// Sharing the control page (server).
    ShareControlPage,
    /// Sharing the ring pages (server).
    ShareRingPages,
    /// Mapping the server's control page (client).
    MapControlPage,
    /// Mapping the server's ring pages (client).
    MapRingPages,
    /// Arranging the unmap notification of our live byte, once joined (client).
    ArmUnmapNotify,
    /// Telling the server we connected (client).
    NotifyConnect,
    /// Sending the event the peer asked for after data moved.
    Notify,
    /// Telling the peer of a half-close.
    NotifyShutdown,
    /// Telling the peer of the close.
    NotifyClose,
    /// Releasing our port.
    Unbind,
    /// Taking a delivered event (a driver).
    TakeEvent,
    /// Waiting for an event (a driver).
    WaitForEvent,
    /// Registering the event channel with an async runtime (a driver).
    Register,
    /// Running the blocking set-up off an async runtime's workers (a driver).
    RunSetup,
}

impl Op {
    /// What was being done, as the rest of "could not ...".
    pub const fn description(self) -> &'static str {
        match self {
            Op::OpenSharer => "open the grant-sharing device",
            Op::OpenMapper => "open the grant-mapping device",
            Op::OpenEvents => "open the event-channel device",
            Op::AllocatePort => "allocate an event channel",
            Op::BindPort => "bind the server's event channel",
            Op::Unmask => "unmask the event channel",
            Op::ShareControlPage => "share the control page",
            Op::ShareRingPages => "share the ring pages",
            Op::MapControlPage => "map the control page",
            Op::MapRingPages => "map the ring pages",
            Op::ArmUnmapNotify => "arrange the unmap notification",
            Op::NotifyConnect => "notify the server",
            Op::Notify => "notify the peer",
            Op::NotifyShutdown => "notify the peer of the shutdown",
            Op::NotifyClose => "notify the peer of the close",
            Op::Unbind => "unbind the event channel",
            Op::TakeEvent => "take an event",
            Op::WaitForEvent => "wait for an event",
            Op::Register => "register the event channel",
            Op::RunSetup => "run the blocking set-up",
        }
    }

    /// Whether this is a step of joining a server (binding its port, mapping its pages): a
    /// failure there means the keys led to a server that went away or that another client took
    /// meanwhile, so a caller that expects a fresh server at the same path may look again.
    pub const fn joins_the_server(self) -> bool {
        matches!(
            self,
            Op::BindPort | Op::Unmask | Op::MapControlPage | Op::MapRingPages
        )
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.description())
    }
}

/// What the data path can meet: the peer's doing, or the end of the channel. Converted into
/// [`Error`] (the same variants) by the drivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChannelError {
    /// See [`Error::RingCorrupted`].
    RingCorrupted(RingCorrupted),
    /// See [`Error::BadLiveByte`].
    BadLiveByte(u8),
    /// See [`Error::MessageTooLarge`].
    MessageTooLarge {
        /// The packet's length.
        len: usize,
        /// The ring's capacity.
        capacity: usize,
    },
    /// See [`Error::PeerClosed`].
    PeerClosed,
    /// See [`Error::ShutDown`].
    ShutDown,
}

impl From<RingCorrupted> for ChannelError {
    fn from(e: RingCorrupted) -> ChannelError {
        ChannelError::RingCorrupted(e)
    }
}

/// Everything that can go wrong with a vchan endpoint. `D` is what the platform's devices fail
/// with (`std::io::Error` on the `std` platforms: see [`VchanError`]).
#[derive(Debug)]
#[non_exhaustive]
pub enum Error<D> {
    /// The peer wrote indices that no honest peer can produce. (The message says what it wrote;
    /// the detail is not also the error's `source`, so a chain prints it once.)
    RingCorrupted(RingCorrupted),
    /// The ring layout asked for, or found in the control page, cannot be used (said in the
    /// message, not repeated as the `source`).
    Layout(LayoutError),
    /// The peer's live byte holds a value with no meaning.
    BadLiveByte(u8),
    /// A server published a xenstore key that cannot be right.
    BadKey {
        /// The key's name (`ring-ref`, `event-channel`, `domid`).
        key: &'static str,
        /// What it held.
        value: String,
    },
    /// No server has published keys at the path that this domain may read.
    NoServer {
        /// The xenstore path that was searched.
        path: String,
    },
    /// The server published at the path already has a client, or has closed.
    NotWaiting {
        /// The xenstore path of the server's keys.
        path: String,
    },
    /// A packet can never fit the ring, in any mode.
    MessageTooLarge {
        /// The packet's length.
        len: usize,
        /// The ring's capacity.
        capacity: usize,
    },
    /// The peer has closed the channel (or died); nothing more can be sent.
    PeerClosed,
    /// This end's writing side was shut down (`shutdown_write`); nothing more can be sent.
    ShutDown,
    /// A non-blocking operation could not proceed now.
    WouldBlock,
    /// A blocking operation's timeout passed.
    TimedOut,
    /// The platform gave a region shorter than the layout needs (a platform bug, never the
    /// peer's doing).
    ShortRegion {
        /// What gave it.
        op: Op,
        /// Its length.
        len: usize,
        /// The length needed.
        needed: usize,
    },
    /// The key store failed.
    Xenstore(XenstoreError),
    /// A grant or event-channel operation failed.
    Backend {
        /// What was being done.
        op: Op,
        /// The platform's error.
        source: D,
    },
}

impl<D> Error<D> {
    /// A `map_err` adapter: the platform's error `source` while doing `op`.
    pub fn backend(op: Op) -> impl FnOnce(D) -> Error<D> {
        move |source| Error::Backend { op, source }
    }
}

impl<D> From<ChannelError> for Error<D> {
    fn from(e: ChannelError) -> Self {
        match e {
            ChannelError::RingCorrupted(e) => Error::RingCorrupted(e),
            ChannelError::BadLiveByte(b) => Error::BadLiveByte(b),
            ChannelError::MessageTooLarge { len, capacity } => {
                Error::MessageTooLarge { len, capacity }
            }
            ChannelError::PeerClosed => Error::PeerClosed,
            ChannelError::ShutDown => Error::ShutDown,
        }
    }
}

impl<D> From<RingCorrupted> for Error<D> {
    fn from(e: RingCorrupted) -> Self {
        Error::RingCorrupted(e)
    }
}

impl<D> From<LayoutError> for Error<D> {
    fn from(e: LayoutError) -> Self {
        Error::Layout(e)
    }
}

impl<D> fmt::Display for Error<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::RingCorrupted(e) => write!(f, "the peer corrupted the ring: {e}"),
            Error::Layout(e) => write!(f, "invalid ring layout: {e}"),
            Error::BadLiveByte(b) => write!(
                f,
                "the peer's live byte holds {b}, which is not a connection state"
            ),
            Error::BadKey { key, value } => write!(f, "the server's {key} key holds {value:?}"),
            Error::NoServer { path } => write!(
                f,
                "no vchan server at {path} (or none this domain may read)"
            ),
            Error::NotWaiting { path } => write!(
                f,
                "the vchan server at {path} is not waiting for a client (it has one, or it closed)"
            ),
            Error::MessageTooLarge { len, capacity } => {
                write!(f, "a {len}-byte message cannot fit a {capacity}-byte ring")
            }
            Error::PeerClosed => f.write_str("the peer has closed the channel"),
            Error::ShutDown => f.write_str("this end of the channel was shut down for writing"),
            Error::WouldBlock => f.write_str("the operation would block"),
            Error::TimedOut => f.write_str("timed out"),
            Error::ShortRegion { op, len, needed } => write!(
                f,
                "could not {op}: the platform gave {len} bytes where {needed} were needed"
            ),
            Error::Xenstore(_) => f.write_str("xenstore failed"),
            Error::Backend { op, .. } => write!(f, "could not {op}"),
        }
    }
}

impl<D> From<XenstoreError> for Error<D> {
    fn from(e: XenstoreError) -> Self {
        Error::Xenstore(e)
    }
}

impl<D> core::error::Error for Error<D>
where
    D: core::error::Error + 'static,
{
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            Error::Xenstore(e) => Some(e),
            Error::Backend { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl fmt::Display for ChannelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&Error::<()>::from(*self), f)
    }
}

impl core::error::Error for ChannelError {}

/// [`Error`] on the `std` platforms: devices fail with `io::Error`.
#[cfg(feature = "std")]
pub type VchanError = Error<std::io::Error>;

/// A notify that failed after its operation's data was committed: the operation reported its
/// count, so the error is kept here and reported by the next call (the C library's blocking
/// write loses its position instead). Shared by the blocking and the async driver.
#[cfg(feature = "std")]
#[derive(Default)]
pub(crate) struct Deferred {
    /// Set with the error; the common case (nothing kept) costs one load.
    failed: core::sync::atomic::AtomicBool,
    error: std::sync::Mutex<Option<VchanError>>,
}

#[cfg(feature = "std")]
impl Deferred {
    /// Keep `error` for the next call.
    pub(crate) fn keep(&self, error: VchanError) {
        use core::sync::atomic::Ordering;
        *self
            .error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(error);
        // ORDERING: Release pairs with the Acquire in `take`: whoever sees the flag finds the
        // error stored.
        self.failed.store(true, Ordering::Release);
    }

    /// The kept error, if any (and forget it).
    pub(crate) fn take(&self) -> Result<()> {
        use core::sync::atomic::Ordering;
        // ORDERING: see `keep`. A load first, so that the common case writes nothing.
        if !self.failed.load(Ordering::Acquire) {
            return Ok(());
        }
        self.failed.store(false, Ordering::Relaxed);
        match self
            .error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
        {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// Result alias for this crate's `std` endpoints.
#[cfg(feature = "std")]
pub type Result<T, E = VchanError> = core::result::Result<T, E>;

#[cfg(feature = "std")]
impl VchanError {
    /// The `io::ErrorKind` this error maps to.
    pub fn kind(&self) -> std::io::ErrorKind {
        use std::io::ErrorKind;
        match self {
            Error::RingCorrupted(_)
            | Error::Layout(_)
            | Error::BadLiveByte(_)
            | Error::BadKey { .. }
            | Error::ShortRegion { .. } => ErrorKind::InvalidData,
            Error::NoServer { .. } => ErrorKind::NotFound,
            Error::NotWaiting { .. } => ErrorKind::ConnectionRefused,
            Error::MessageTooLarge { .. } => ErrorKind::InvalidInput,
            Error::PeerClosed | Error::ShutDown => ErrorKind::BrokenPipe,
            Error::WouldBlock => ErrorKind::WouldBlock,
            Error::TimedOut => ErrorKind::TimedOut,
            Error::Xenstore(xenstore::XenstoreError::Io(e)) => e.kind(),
            Error::Xenstore(_) => ErrorKind::Other,
            Error::Backend { source, .. } => source.kind(),
        }
    }
}

/// At the edge where `Read`/`Write` need it, and only there: the error keeps its type inside
/// (`io::Error::get_ref` gives it back).
#[cfg(feature = "std")]
impl From<VchanError> for std::io::Error {
    fn from(e: VchanError) -> std::io::Error {
        std::io::Error::new(e.kind(), e)
    }
}

/// A zero-copy transfer between a vchan and a file descriptor failed, on one side or the other
/// (a relay names the side in its report).
#[cfg(feature = "std")]
#[derive(Debug)]
pub enum SpliceError {
    /// The vchan failed: the peer closed, corrupted the ring, ...
    Vchan(VchanError),
    /// The file descriptor's read or write failed.
    Fd(std::io::Error),
}

#[cfg(feature = "std")]
impl fmt::Display for SpliceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpliceError::Vchan(e) => fmt::Display::fmt(e, f),
            SpliceError::Fd(e) => fmt::Display::fmt(e, f),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for SpliceError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SpliceError::Vchan(e) => e.source(),
            SpliceError::Fd(e) => e.source(),
        }
    }
}

#[cfg(feature = "std")]
impl From<SpliceError> for std::io::Error {
    fn from(e: SpliceError) -> std::io::Error {
        match e {
            SpliceError::Vchan(e) => e.into(),
            SpliceError::Fd(e) => e,
        }
    }
}

#[cfg(all(test, feature = "std"))]
mod tests {
    use super::*;
    use crate::layout::Side;
    use std::error::Error as _;
    use std::io;
    use std::string::ToString;

    /// The message and its causes, as the tools print them.
    fn chain(e: &dyn std::error::Error) -> String {
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

    #[test]
    fn a_platform_failure_keeps_its_type_through_io_error() {
        let e = VchanError::Backend {
            op: Op::BindPort,
            source: io::Error::from_raw_os_error(22),
        };
        assert_eq!(e.to_string(), "could not bind the server's event channel");
        assert!(e.source().is_some());
        let io = io::Error::from(e);
        let inner = io.get_ref().and_then(|e| e.downcast_ref::<VchanError>());
        assert!(
            matches!(inner, Some(VchanError::Backend { op, .. }) if op.joins_the_server()),
            "{inner:?}"
        );
    }
}
