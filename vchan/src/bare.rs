//! The bare driver: [`BareVchan`], the channel core driven with no OS and no threads, for a
//! guest unikernel (the `xen-pv` platform): it polls the ring and, when the core says it is
//! blocked, sleeps in the platform's wait (a `SCHEDOP_poll` hypercall on the port there) until
//! an event, a deadline or the next liveness look. `no_std`.
//!
//! It needs of its platform, beyond [`Platform`], a way to wait and a clock: [`BarePlatform`]
//! (a client waiting for its server waits on the store's watch, `XenStore::next_watch_event`).
//! The `std` platforms have one too (poll(2) on the event fd, `Instant`), so the same driver runs
//! in the tests on the simulated Xen.
//!
//! ```
//! use vchan::bare::BareVchan;
//! use vchan::sim::SimXen;
//! use vchan::{Address, RingSizes};
//! use xen_types::DomId;
//!
//! let xen = SimXen::new();
//! let dom0 = xen.domain(DomId(0));
//! let guest = xen.create_domain(DomId(1)).unwrap();
//! let mut server = BareVchan::server(&dom0, DomId(1), &Address::Port(5), RingSizes::default()).unwrap();
//! let mut client = BareVchan::client(&guest, DomId(0), &Address::Port(5), None).unwrap();
//! client.write_all(b"hello").unwrap();
//! client.close().unwrap();
//! let mut buf = [0u8; 16];
//! let n = server.read(&mut buf).unwrap();
//! assert_eq!(&buf[..n], b"hello");
//! assert_eq!(server.read(&mut buf).unwrap(), 0, "then the end of the stream");
//! ```

use core::time::Duration;

use xen_types::{DomId, Port};

use crate::channel::{
    self, Address, Channel, ChannelError, Dial, ErrorOf, Look, Notify, RingSizes, State, Step,
    LIVENESS_CHECK,
};
use crate::error::{Error, Op};
use crate::platform::{Platform, XenStore};

/// What the bare driver needs of a platform besides its devices: waiting and a clock.
pub trait BarePlatform: Platform {
    /// Forget the events delivered so far on `port` (clear its pending bit). The driver does
    /// this before its final look at the ring, so an event that lands after the look is never
    /// lost: it leaves the bit set and the next [`wait_event`](Self::wait_event) returns at once.
    fn clear_event(&self, events: &Self::Events, port: Port) -> Result<(), Self::DeviceError>;
    /// Sleep until an event may be pending on `port`, or `deadline` (this platform's
    /// [`now`](Self::now)) passes. Spurious wake-ups are allowed: the driver looks again.
    fn wait_event(
        &self,
        events: &Self::Events,
        port: Port,
        deadline: Option<Duration>,
    ) -> Result<(), Self::DeviceError>;
    /// Monotonic time, from any fixed origin.
    fn now(&self) -> Duration;
}

/// One end of a vchan driven with no OS: read, write, send, recv, half-close and close, each
/// blocking in the platform's wait until it can proceed, the peer goes, or the timeout
/// ([`set_timeout`](BareVchan::set_timeout)) passes.
pub struct BareVchan<'p, P: BarePlatform> {
    platform: &'p P,
    channel: Option<Channel<P>>,
    timeout: Option<Duration>,
    /// A notify that failed after its data was committed, reported by the next call.
    deferred: Option<ErrorOf<P>>,
}

impl<'p, P: BarePlatform> BareVchan<'p, P> {
    /// Serve `client` at `address` (see [`channel::serve`]); returns at once.
    pub fn server(
        platform: &'p P,
        client: DomId,
        address: &Address,
        sizes: RingSizes,
    ) -> Result<Self, ErrorOf<P>> {
        channel::serve(platform, client, address, sizes).map(|c| BareVchan::new(platform, c))
    }

    /// Connect to `server`'s vchan at `address`, waiting up to `wait` for it to publish itself
    /// (`None`: fail at once if it has not).
    pub fn client(
        platform: &'p P,
        server: DomId,
        address: &Address,
        wait: Option<Duration>,
    ) -> Result<Self, ErrorOf<P>> {
        let deadline = wait.map(|w| platform.now() + w);
        let mut dial = Dial::new(platform, server, address)?;
        loop {
            if let Some(channel) = dial.attempt(platform, deadline.is_some())? {
                return Ok(BareVchan::new(platform, channel));
            }
            match deadline {
                Some(d) if platform.now() < d => {
                    // The store tells of the next change under the path (or the time runs out).
                    dial.store()
                        .next_watch_event(Some(d - platform.now()))
                        .map_err(Error::Xenstore)?;
                }
                _ => return Err(dial.no_server()),
            }
        }
    }

    /// Drive a channel the core built.
    pub fn new(platform: &'p P, channel: Channel<P>) -> Self {
        BareVchan {
            platform,
            channel: Some(channel),
            timeout: None,
            deferred: None,
        }
    }

    /// Limit how long any call waits (`None`: for ever); a call that runs out fails with
    /// `TimedOut`.
    pub fn set_timeout(&mut self, timeout: Option<Duration>) {
        self.timeout = timeout;
    }

    fn channel(&self) -> &Channel<P> {
        match &self.channel {
            Some(channel) => channel,
            None => unreachable!("an endpoint is used only until close or drop"),
        }
    }

    fn channel_mut(&mut self) -> &mut Channel<P> {
        match &mut self.channel {
            Some(channel) => channel,
            None => unreachable!("an endpoint is used only until close or drop"),
        }
    }

    /// The connection's state.
    pub fn state(&self) -> Result<State, ErrorOf<P>> {
        Ok(self.channel().link.state()?)
    }

    /// The capacity of the ring this end reads.
    pub fn read_capacity(&self) -> usize {
        self.channel().reader.capacity()
    }

    /// The capacity of the ring this end writes.
    pub fn write_capacity(&self) -> usize {
        self.channel().writer.capacity()
    }

    /// Bytes ready to read now; also asks the peer for an event when it writes more.
    pub fn data_ready(&self) -> Result<usize, ErrorOf<P>> {
        Ok(self.channel().reader.data_ready()?)
    }

    /// Bytes that can be written now; also asks the peer for an event when it frees more.
    pub fn buffer_space(&self) -> Result<usize, ErrorOf<P>> {
        Ok(self.channel().writer.buffer_space()?)
    }

    /// Wait until the client has connected (server) or the peer has closed.
    pub fn wait_connected(&mut self) -> Result<State, ErrorOf<P>> {
        self.drive(|c, _| {
            Ok(match c.link.state()? {
                State::WaitingForPeer => Step::Blocked,
                state => Step::Done(state, Notify::NONE),
            })
        })
    }

    /// Read what is there, up to `buf.len()`, waiting for at least one byte; 0 is the end of the
    /// stream.
    pub fn read(&mut self, buf: &mut [u8]) -> Result<usize, ErrorOf<P>> {
        self.drive(|c, look| c.reader.read(&c.link, buf, look))
    }

    /// Receive exactly `buf.len()` bytes as one unit.
    pub fn recv(&mut self, buf: &mut [u8]) -> Result<(), ErrorOf<P>> {
        self.drive(|c, look| c.reader.recv(&c.link, buf, look))
    }

    /// Write as much of `buf` as fits, waiting for room for at least one byte.
    pub fn write(&mut self, buf: &[u8]) -> Result<usize, ErrorOf<P>> {
        self.drive(|c, look| c.writer.write(&c.link, buf, look))
    }

    /// Write all of `buf`.
    pub fn write_all(&mut self, mut buf: &[u8]) -> Result<(), ErrorOf<P>> {
        while !buf.is_empty() {
            let n = self.write(buf)?;
            buf = &buf[n..];
        }
        Ok(())
    }

    /// Send all of `buf` as one unit.
    pub fn send(&mut self, buf: &[u8]) -> Result<(), ErrorOf<P>> {
        self.drive(|c, look| c.writer.send(&c.link, buf, look))
    }

    /// Wait until the peer has read everything written (or has gone).
    pub fn drained(&mut self) -> Result<(), ErrorOf<P>> {
        self.drive(|c, _| {
            Ok(match c.writer.drained(&c.link)? {
                true => Step::Done((), Notify::NONE),
                false => Step::Blocked,
            })
        })
    }

    /// Remove a server's xenstore keys now, rather than at close: once its client has
    /// connected, nobody else should find them (a second client would join a channel that is
    /// taken, or, later, one that is closing). Idempotent; a client has nothing to remove.
    pub fn unpublish(&mut self) -> Result<(), ErrorOf<P>> {
        self.channel_mut().hold.unpublish().map_err(Error::Xenstore)
    }

    /// Shut down writing (half-close): a peer of this crate reads the end of the stream after
    /// everything written; both sides can still read.
    pub fn shutdown_write(&mut self) -> Result<(), ErrorOf<P>> {
        let c = self.channel_mut();
        let notify = c.writer.shutdown(&c.link);
        c.link
            .send(&c.events, notify)
            .map_err(Error::backend(Op::NotifyShutdown))
    }

    /// Close: the peer can still read what was written.
    pub fn close(mut self) -> Result<(), ErrorOf<P>> {
        self.channel.take().map_or(Ok(()), Channel::close)
    }

    /// The loop every call shares: a quick look; clear the port's pending bit and make the final
    /// look; then sleep until an event, the next liveness look or the deadline, and again.
    fn drive<T>(
        &mut self,
        mut op: impl FnMut(&mut Channel<P>, Look) -> Result<Step<T>, ChannelError>,
    ) -> Result<T, ErrorOf<P>> {
        if let Some(e) = self.deferred.take() {
            return Err(e);
        }
        let platform = self.platform;
        let timeout = self.timeout;
        // The deadline and the next liveness look, from the first time the call must wait: one
        // the ring answers at once reads no clock.
        let mut times = None;
        let mut look = Look::Quick;
        loop {
            let channel = self.channel_mut();
            match (op(channel, look)?, look) {
                (Step::Done(value, notify), _) => {
                    if let Err(source) = channel.link.send(&channel.events, notify) {
                        // The data is committed: say so now, and the failure next time.
                        self.deferred = Some(Error::Backend {
                            op: Op::Notify,
                            source,
                        });
                    }
                    return Ok(value);
                }
                (Step::Blocked, Look::Quick) => {
                    platform
                        .clear_event(&channel.events, channel.link.port())
                        .map_err(Error::backend(Op::TakeEvent))?;
                    look = Look::Final;
                }
                (Step::Blocked, Look::Final) => {
                    let now = platform.now();
                    let (deadline, next_check) = times
                        .get_or_insert_with(|| (timeout.map(|t| now + t), now + LIVENESS_CHECK));
                    if deadline.is_some_and(|d| now >= d) {
                        return Err(Error::TimedOut);
                    }
                    let wake_by = deadline.map_or(*next_check, |d| d.min(*next_check));
                    platform
                        .wait_event(&channel.events, channel.link.port(), Some(wake_by))
                        .map_err(Error::backend(Op::WaitForEvent))?;
                    let woke = platform.now();
                    if woke >= *next_check {
                        *next_check = woke + LIVENESS_CHECK;
                        if let Some(liveness) = channel.link.liveness() {
                            liveness.look(&**channel.hold.store());
                        }
                    }
                    look = Look::Quick;
                }
            }
        }
    }
}

impl<P: BarePlatform> Drop for BareVchan<'_, P> {
    fn drop(&mut self) {
        if let Some(channel) = self.channel.take() {
            // Errors cannot be reported from drop; `close` reports them.
            let _ = channel.close();
        }
    }
}

impl<P: BarePlatform> core::fmt::Debug for BareVchan<'_, P> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let mut s = f.debug_struct("BareVchan");
        if let Some(channel) = &self.channel {
            s.field("link", &channel.link);
        }
        s.finish_non_exhaustive()
    }
}

/// The `std` platforms as bare ones: poll(2) on the event fd, a watch event from the store,
/// `Instant`. (A driver with no threads and no runtime, for a program that wants one; and the
/// bare driver's behaviour checked on the simulated Xen by the same tests as the others.)
#[cfg(feature = "std")]
mod std_bare {
    use std::io;
    use std::sync::OnceLock;
    use std::time::Instant;

    use super::*;
    use crate::Backend;

    fn origin() -> Instant {
        static ORIGIN: OnceLock<Instant> = OnceLock::new();
        *ORIGIN.get_or_init(Instant::now)
    }

    impl<B: Backend> BarePlatform for B {
        fn clear_event(&self, events: &B::Events, _port: Port) -> io::Result<()> {
            // The port is this handle's only one: take whatever it delivered.
            while let Some(port) = evtchn::EventChannel::pending(events)? {
                evtchn::EventChannel::unmask(events, port)?;
            }
            Ok(())
        }

        fn wait_event(
            &self,
            events: &B::Events,
            _port: Port,
            deadline: Option<Duration>,
        ) -> io::Result<()> {
            let timeout = deadline.map(|d| d.saturating_sub(self.now()));
            crate::wait::poll_readable(events, timeout).map(drop)
        }

        fn now(&self) -> Duration {
            origin().elapsed()
        }
    }
}
