//! The x86-64 PV platform itself (built only for `target_os = "none"`): boot, hypercalls,
//! memory, and the [`Platform`] a guest's main function receives.
//!
//! ```ignore
//! #![no_std]
//! #![no_main]
//! use xen_pv::pv::{Platform, ShutdownReason};
//!
//! fn main(platform: &'static Platform) -> ! {
//!     let _ = platform.console().write(b"hello from a PV guest\n");
//!     platform.shutdown(ShutdownReason::Poweroff)
//! }
//! xen_pv::entry!(main);
//! ```
//!
//! The crate provides the image's global allocator (a 2 MiB `.bss` heap) and its panic handler,
//! which prints `ERROR panic: <message>` on one console line and crashes the domain (xl's
//! `on_crash` then applies).
//!
//! Unsafe code lives in [`hypercall`] (the asm and the hypercalls' argument structs),
//! [`memory`] (the `.bss` pool, heap and stack, the p2m and M2P), `heap` (the allocator),
//! `boot` (entry, notes) and here, where pages become [`SharedRegion`]s: every page that Xen
//! or a peer writes is reached only through such a view.

pub mod hypercall;
pub mod memory;
pub mod vchan;

mod boot;
mod heap;

use alloc::vec::Vec;
use core::cell::{Cell, RefCell, UnsafeCell};
use core::fmt::{self, Write};
use core::mem::MaybeUninit;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use xen_types::memory::{AsSharedRegion, SharedRegion};
use xen_types::{DomId, GrantRef, Port};
use xenstore::TxId;

use crate::abi::{
    self, GnttabMapGrantRef, GnttabUnmapGrantRef, StartInfo, PAGE_SHIFT, PAGE_SIZE, PTE_KERNEL_RW,
    SCHED_POLL_MAX_PORTS,
};
use crate::console::Console;
use crate::error::{PvError, Result};
use crate::events::EventBits;
use crate::grant::{Book, GrantTable, SharedRun, REFS_PER_FRAME};
use crate::store::StoreClient;
use crate::time::{read_time_record, Instant};
use crate::Doorbell;
use memory::{pool_va, P2m, POOL_PAGES};

/// Grant-table frames set up at boot: 2,048 entries (Mini-OS uses as many), of which refs
/// 8-2047 are ours to grant; two 1 MiB vchan rings need 513.
pub const GRANT_FRAMES: usize = 4;

/// Pool pages given up at boot: shared_info, then the grant-table frames.
const SHARED_INFO_PAGE: usize = 0;
const GRANT_TABLE_PAGE: usize = 1;

/// Declare the guest's main function: `fn(&'static Platform) -> !`, called once the platform
/// is up.
#[macro_export]
macro_rules! entry {
    ($main:path) => {
        #[no_mangle]
        fn __xen_pv_main(platform: &'static $crate::pv::Platform) -> ! {
            let main: fn(&'static $crate::pv::Platform) -> ! = $main;
            main(platform)
        }
    };
}

/// Why the domain shuts down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownReason {
    /// A clean end (`SHUTDOWN_poweroff`).
    Poweroff,
    /// A failure (`SHUTDOWN_crash`): the toolstack's `on_crash` applies.
    Crash,
}

/// Xen's system time now, never going backwards.
fn now(shared_info: SharedRegion<'_>) -> Instant {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let record = read_time_record(shared_info.subregion(abi::VCPU0_TIME, 32));
    // SAFETY: rdtsc reads the time-stamp counter, which Xen lets PV guests read; no memory
    // is touched.
    #[allow(unused_unsafe)]
    let tsc = unsafe { core::arch::x86_64::_rdtsc() };
    let t = record.system_time_at(tsc).0;
    // ORDERING: Relaxed: one vCPU; the maximum only keeps extrapolations monotonic.
    Instant(LAST.fetch_max(t, Ordering::Relaxed).max(t))
}

/// Wait until one of `ports` is pending (taking its pending bit) or `deadline` passes.
fn wait_ports(
    shared_info: SharedRegion<'_>,
    ports: &[Port],
    deadline: Option<Instant>,
) -> Result<Option<Port>> {
    if ports.len() > SCHED_POLL_MAX_PORTS {
        return Err(PvError::TooManyPorts(ports.len()));
    }
    let bits = EventBits::new(shared_info);
    let mut raw = [0u32; SCHED_POLL_MAX_PORTS];
    for (r, p) in raw.iter_mut().zip(ports) {
        *r = p.0;
    }
    loop {
        for &port in ports {
            if bits.take_pending(port)? {
                return Ok(Some(port));
            }
        }
        if let Some(deadline) = deadline {
            if now(shared_info) >= deadline {
                return Ok(None);
            }
        }
        // Returns at once if a port became pending since the check above (Xen tests the
        // bits after marking us as polling), so no event is lost between the two. Xen takes
        // the deadline as a signed time: one past i64::MAX (a saturated `Instant::after`)
        // would be in the past and make this loop spin, so it is clamped (292 years).
        let timeout = deadline.map_or(0, |d| d.0.clamp(1, i64::MAX as u64));
        hypercall::sched_poll(&raw[..ports.len()], timeout)?;
    }
}

/// The event channel of a ring (the console's, xenstore's) as a [`Doorbell`].
#[derive(Debug, Clone, Copy)]
pub struct PortBell {
    port: Port,
    shared_info: SharedRegion<'static>,
}

impl Doorbell for PortBell {
    fn ring(&self) {
        // A failed notify leaves the other end to its own timeouts; the ring's state is intact.
        let _ = hypercall::evtchn_send(self.port.0);
    }
    fn wait(&self, deadline: Instant) -> bool {
        matches!(
            wait_ports(self.shared_info, &[self.port], Some(deadline)),
            Ok(Some(_))
        ) || now(self.shared_info) < deadline
    }
    fn now(&self) -> Instant {
        now(self.shared_info)
    }
}

/// Everything a guest gets from Xen: console, store, clock, event channels, grants.
pub struct Platform {
    start: StartInfo,
    p2m: P2m,
    shared_info: SharedRegion<'static>,
    console: Console<'static, PortBell>,
    store: StoreClient<'static, PortBell>,
    book: RefCell<Book<'static>>,
    domid: Cell<Option<DomId>>,
    leaked_pages: Cell<usize>,
    xen_version: (u16, u16),
}

impl fmt::Debug for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Platform")
            .field("nr_pages", &self.start.nr_pages)
            .field("xen_version", &self.xen_version)
            .finish_non_exhaustive()
    }
}

/// The platform, once booted (one vCPU, no interrupt handlers: see `Sync` below).
struct Installed {
    platform: UnsafeCell<MaybeUninit<Platform>>,
    ready: AtomicBool,
}

// SAFETY: written once at boot, before `ready` is set and before any reader exists; afterwards
// only shared references are handed out, on the guest's single vCPU.
unsafe impl Sync for Installed {}

static INSTALLED: Installed = Installed {
    platform: UnsafeCell::new(MaybeUninit::uninit()),
    ready: AtomicBool::new(false),
};

fn installed() -> Option<&'static Platform> {
    // ORDERING: Acquire pairs with the Release in `install`.
    if INSTALLED.ready.load(Ordering::Acquire) {
        // SAFETY: `ready` is set only after the platform was written, and it is never
        // written again.
        Some(unsafe { (*INSTALLED.platform.get()).assume_init_ref() })
    } else {
        None
    }
}

fn install(platform: Platform) -> &'static Platform {
    assert!(installed().is_none(), "the platform boots once");
    // SAFETY: nothing reads the cell before `ready` is set, and boot runs once.
    let platform = unsafe { (*INSTALLED.platform.get()).write(platform) };
    // ORDERING: Release publishes the write above to `installed`'s Acquire.
    INSTALLED.ready.store(true, Ordering::Release);
    platform
}

/// A view of `len` bytes of memory at virtual address `va` that Xen or a peer may write.
///
/// # Safety
///
/// The memory must stay mapped (to the same frames) for `'a`, and nothing may reach it through
/// a Rust reference.
unsafe fn region<'a>(va: usize, len: usize, writable: bool) -> SharedRegion<'a> {
    // SAFETY: va is a page address (never 0: the image and pool are above 1 MiB).
    let base = unsafe { NonNull::new_unchecked(va as *mut u8) };
    if writable {
        // SAFETY: the caller's contract is `from_raw_parts`'.
        unsafe { SharedRegion::from_raw_parts(base, len) }
    } else {
        // SAFETY: as above, for reads.
        unsafe { SharedRegion::from_raw_parts_read_only(base, len) }
    }
}

impl Platform {
    /// Bring the platform up from start_info; on failure, say so (once there is a console) and
    /// crash the domain.
    fn boot(start: StartInfo) -> &'static Platform {
        if !start.magic.starts_with(abi::START_INFO_MAGIC_PREFIX) {
            hypercall::shutdown(abi::SHUTDOWN_CRASH);
        }
        // SAFETY: start_info's p2m: nr_pages u64s, mapped, never changed by this crate.
        let p2m = unsafe { P2m::new(start.mfn_list, start.nr_pages) };
        let shared_info = match Self::map_shared_info(&start) {
            Ok(region) => region,
            Err(_) => hypercall::shutdown(abi::SHUTDOWN_CRASH),
        };
        let console = match p2m.va_of_mfn(start.console_mfn) {
            // SAFETY: the console page of the start-of-day region: mapped for good; the ring
            // is shared with xenconsoled and reached only through the view.
            Ok(va) => Console::new(
                unsafe { region(va, PAGE_SIZE, true) },
                PortBell {
                    port: Port(start.console_evtchn),
                    shared_info,
                },
            ),
            Err(_) => hypercall::shutdown(abi::SHUTDOWN_CRASH),
        };
        match Self::finish_boot(&start, &p2m, shared_info) {
            Ok((book, store)) => install(Platform {
                start,
                p2m,
                shared_info,
                console,
                store,
                book: RefCell::new(book),
                domid: Cell::new(None),
                leaked_pages: Cell::new(0),
                xen_version: hypercall::xen_version(),
            }),
            Err(e) => {
                let mut out = OneLine(&console);
                let _ = writeln!(out, "ERROR boot: {e}");
                hypercall::shutdown(abi::SHUTDOWN_CRASH)
            }
        }
    }

    /// Map shared_info over pool page 0.
    fn map_shared_info(start: &StartInfo) -> Result<SharedRegion<'static>> {
        let va = pool_va(SHARED_INFO_PAGE);
        // SAFETY: pool page 0 is never used for anything else (the book reserves it); from
        // now on Xen's shared_info page is mapped there for good, reached through the view.
        unsafe {
            hypercall::update_va_mapping(va, start.shared_info & !0xfff | PTE_KERNEL_RW)?;
            Ok(region(va, PAGE_SIZE, true))
        }
    }

    /// The rest of boot, once the console works: the stack's guard page, the grant table and
    /// the book of pool pages, the xenstore client.
    fn finish_boot(
        start: &StartInfo,
        p2m: &P2m,
        shared_info: SharedRegion<'static>,
    ) -> Result<(Book<'static>, StoreClient<'static, PortBell>)> {
        // The boot stack's guard page: unmapped, so an overflow faults instead of corrupting.
        // SAFETY: the guard page below the stack is never used; its frame is given up.
        unsafe { hypercall::update_va_mapping(memory::stack_guard_va(), 0)? };
        let table = Self::map_grant_table()?;
        let mut book = Book::new(table, POOL_PAGES);
        for page in SHARED_INFO_PAGE..GRANT_TABLE_PAGE + GRANT_FRAMES {
            book.reserve_page(page);
        }
        let va = p2m.va_of_mfn(start.store_mfn)?;
        // SAFETY: the xenstore page of the start-of-day region: mapped for good, shared with
        // xenstored, reached only through the view.
        let page = unsafe { region(va, PAGE_SIZE, true) };
        let bell = PortBell {
            port: Port(start.store_evtchn),
            shared_info,
        };
        Ok((book, StoreClient::new(page, bell)))
    }

    /// Set up the grant table and map its frames over the pool pages after shared_info.
    fn map_grant_table() -> Result<GrantTable<'static>> {
        let mut frames = [0u64; GRANT_FRAMES];
        hypercall::gnttab_setup_table(&mut frames)?;
        let va = pool_va(GRANT_TABLE_PAGE);
        for (i, mfn) in frames.iter().enumerate() {
            // SAFETY: these pool pages are reserved for the table for good; Xen's table
            // frames are mapped there and reached only through the view below.
            unsafe {
                hypercall::update_va_mapping(va + i * PAGE_SIZE, mfn << PAGE_SHIFT | PTE_KERNEL_RW)?
            };
        }
        // SAFETY: the GRANT_FRAMES pages at `va` now map the table, for good.
        let entries = unsafe { region(va, GRANT_FRAMES * PAGE_SIZE, true) };
        debug_assert_eq!(entries.len() / 8, GRANT_FRAMES * REFS_PER_FRAME);
        Ok(GrantTable::new(entries))
    }

    // ---- Facts -----------------------------------------------------------------------------

    /// The command line (xl's `extra=`), up to its first NUL; invalid UTF-8 is cut at the
    /// first bad byte.
    pub fn cmdline(&self) -> &str {
        let line = &self.start.cmd_line;
        let end = line.iter().position(|&b| b == 0).unwrap_or(line.len());
        match core::str::from_utf8(&line[..end]) {
            Ok(s) => s,
            Err(e) => core::str::from_utf8(&line[..e.valid_up_to()]).unwrap_or(""),
        }
    }

    /// Pages of memory the domain was given.
    pub fn nr_pages(&self) -> u64 {
        self.start.nr_pages
    }

    /// The hypervisor's version, `(major, minor)`.
    pub fn xen_version(&self) -> (u16, u16) {
        self.xen_version
    }

    /// The console.
    pub fn console(&self) -> &Console<'static, PortBell> {
        &self.console
    }

    /// The xenstore client.
    pub fn store(&self) -> &StoreClient<'static, PortBell> {
        &self.store
    }

    /// This domain's id (read from xenstore's relative key `domid` once).
    pub fn domid(&self) -> Result<DomId> {
        if let Some(id) = self.domid.get() {
            return Ok(id);
        }
        let text = self.store.read_string(TxId::NONE, "domid")?;
        let id = text
            .trim()
            .parse::<u16>()
            .map(DomId)
            .map_err(|_| PvError::StoreProtocol(alloc::format!("domid {text:?}")))?;
        self.domid.set(Some(id));
        Ok(id)
    }

    /// Xen's system time now (monotonic).
    pub fn now(&self) -> Instant {
        now(self.shared_info)
    }

    /// Shut the domain down.
    pub fn shutdown(&self, reason: ShutdownReason) -> ! {
        hypercall::shutdown(match reason {
            ShutdownReason::Poweroff => abi::SHUTDOWN_POWEROFF,
            ShutdownReason::Crash => abi::SHUTDOWN_CRASH,
        })
    }

    // ---- Event channels ----------------------------------------------------------------------

    /// A new port that `remote` can bind with `bind_interdomain`.
    pub fn bind_unbound_port(&self, remote: DomId) -> Result<Port> {
        hypercall::evtchn_alloc_unbound(remote.0).map(Port)
    }

    /// Bind `remote`'s unbound port `remote_port`; our end's port.
    pub fn bind_interdomain(&self, remote: DomId, remote_port: Port) -> Result<Port> {
        hypercall::evtchn_bind_interdomain(remote.0, remote_port.0).map(Port)
    }

    /// Send an event on `port`.
    pub fn notify(&self, port: Port) -> Result<()> {
        hypercall::evtchn_send(port.0)
    }

    /// Unmask `port` (ports are never masked by this crate; a port masked by someone else
    /// still wakes a poll).
    pub fn unmask(&self, port: Port) -> Result<()> {
        hypercall::evtchn_unmask(port.0)
    }

    /// Close `port`.
    pub fn unbind(&self, port: Port) -> Result<()> {
        hypercall::evtchn_close(port.0)
    }

    /// Whether an event arrived on `port` since the last look (taking it).
    pub fn take_event(&self, port: Port) -> Result<bool> {
        EventBits::new(self.shared_info).take_pending(port)
    }

    /// Sleep until an event on one of `ports` (at most 128), taking it, or until `deadline`
    /// (`None`: no deadline): the port, or `None` on the deadline.
    pub fn wait_event(&self, ports: &[Port], deadline: Option<Instant>) -> Result<Option<Port>> {
        wait_ports(self.shared_info, ports, deadline)
    }

    // ---- Grants ------------------------------------------------------------------------------

    /// Grant `count` zeroed, contiguous pages to `domid` (writable or read-only for it).
    pub fn share_pages(
        &self,
        domid: DomId,
        count: usize,
        writable: bool,
    ) -> Result<SharedPages<'_>> {
        if count == 0 {
            return Err(PvError::OutOfPages(0));
        }
        let mut book = self.book.borrow_mut();
        let mut bad_frame = None;
        let run = book.share(domid, count, !writable, |page| {
            let va = pool_va(page);
            // SAFETY: a pool page the book just took for us: mapped, unused by anyone.
            unsafe { region(va, PAGE_SIZE, true) }.zero();
            self.p2m.mfn_of_va(va).unwrap_or_else(|e| {
                bad_frame = Some(e);
                u64::MAX
            })
        });
        let run = match (run, bad_frame) {
            (Ok(run), None) => run,
            (Ok(run), Some(e)) => {
                book.unshare(run);
                return Err(e);
            }
            (Err(e), _) => return Err(e),
        };
        // SAFETY: the run's pool pages stay mapped to our own frames until `SharedPages`
        // drops; the grantee writes them, so they are reached only through the view.
        let region = unsafe { region(pool_va(run.first_page), count * PAGE_SIZE, true) };
        Ok(SharedPages {
            platform: self,
            run: Some(run),
            region,
        })
    }

    /// Map `domid`'s grants `refs` into one contiguous range (writable or read-only).
    pub fn map_grant_refs(
        &self,
        domid: DomId,
        refs: &[GrantRef],
        writable: bool,
    ) -> Result<ForeignMapping<'_>> {
        let count = refs.len();
        if count == 0 {
            return Err(PvError::OutOfPages(0));
        }
        let first = self.book.borrow_mut().alloc_pages(count)?;
        let flags = abi::GNTMAP_HOST_MAP | if writable { 0 } else { abi::GNTMAP_READONLY };
        let mut ops: Vec<GnttabMapGrantRef> = refs
            .iter()
            .enumerate()
            .map(|(i, r)| GnttabMapGrantRef {
                host_addr: pool_va(first + i) as u64,
                flags,
                gref: r.0,
                dom: domid.0,
                status: 0,
                handle: 0,
                dev_bus_addr: 0,
            })
            .collect();
        // SAFETY: the pool pages at the ops' addresses were just taken for this mapping and
        // are used by nothing; once mapped they are reached only through the view below.
        let mapped = unsafe { hypercall::gnttab_map(&mut ops) };
        let failed = ops
            .iter()
            .find(|op| op.status != abi::GNTST_OKAY)
            .map(|op| op.status);
        let mapping = ForeignMapping {
            platform: self,
            first_page: first,
            handles: ops
                .iter()
                .map(|op| (op.status == abi::GNTST_OKAY && mapped.is_ok()).then_some(op.handle))
                .collect(),
            // SAFETY: the pages at `first` map the grants (checked below before the view is
            // used) until the mapping drops; the granter writes them.
            region: unsafe { region(pool_va(first), count * PAGE_SIZE, writable) },
        };
        mapped?;
        if let Some(status) = failed {
            // Dropping unmaps what did map and gives the pages back.
            drop(mapping);
            return Err(PvError::Grant { op: "map", status });
        }
        // The entries replaced were present: drop their stale translations.
        hypercall::flush_tlb()?;
        Ok(mapping)
    }

    /// Retry ending the grants whose pages a peer still mapped when they were dropped; how
    /// many pages came back to the pool.
    pub fn reap_grants(&self) -> usize {
        self.book.borrow_mut().reap()
    }

    /// Pool pages in use (granted, mapped, waiting for their grant to end, or reserved).
    pub fn pages_in_use(&self) -> usize {
        self.book.borrow().pages_in_use()
    }

    /// Pages whose grant could not end yet because the grantee still maps them.
    pub fn quarantined_pages(&self) -> usize {
        self.book.borrow().quarantined()
    }

    /// Pool pages lost to failed unmaps (Xen refused to unmap a grant: the page stays out of
    /// use).
    pub fn leaked_pages(&self) -> usize {
        self.leaked_pages.get()
    }

    /// Bytes of heap in use.
    pub fn heap_used(&self) -> usize {
        heap::used()
    }
}

/// Pages granted to a domain; dropping ends the grants (MSA02 rule: a page the grantee still
/// maps stays out of use until its grant can end, see [`Platform::reap_grants`]).
pub struct SharedPages<'p> {
    platform: &'p Platform,
    run: Option<SharedRun>,
    region: SharedRegion<'p>,
}

impl SharedPages<'_> {
    /// The grant refs, one per page, in page order.
    pub fn refs(&self) -> &[GrantRef] {
        self.run.as_ref().map_or(&[], |run| &run.refs)
    }
}

impl AsSharedRegion for SharedPages<'_> {
    fn region(&self) -> SharedRegion<'_> {
        self.region
    }
}

impl fmt::Debug for SharedPages<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedPages")
            .field("refs", &self.refs())
            .finish()
    }
}

impl Drop for SharedPages<'_> {
    fn drop(&mut self) {
        if let Some(run) = self.run.take() {
            self.platform.book.borrow_mut().unshare(run);
        }
    }
}

/// Another domain's grants mapped into a contiguous range; dropping unmaps them.
pub struct ForeignMapping<'p> {
    platform: &'p Platform,
    first_page: usize,
    /// The map's handle per page; `None` where the map failed (nothing to unmap).
    handles: Vec<Option<u32>>,
    region: SharedRegion<'p>,
}

impl AsSharedRegion for ForeignMapping<'_> {
    fn region(&self) -> SharedRegion<'_> {
        self.region
    }
}

impl fmt::Debug for ForeignMapping<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ForeignMapping")
            .field("pages", &self.handles.len())
            .finish()
    }
}

impl Drop for ForeignMapping<'_> {
    fn drop(&mut self) {
        let mut pages = Vec::new();
        let mut ops = Vec::new();
        for (i, handle) in self.handles.iter().enumerate() {
            if let Some(handle) = *handle {
                pages.push(i);
                ops.push(GnttabUnmapGrantRef {
                    host_addr: pool_va(self.first_page + i) as u64,
                    dev_bus_addr: 0,
                    handle,
                    status: 0,
                });
            }
        }
        // SAFETY: the mapping is being dropped: nothing reaches these pages any more (views
        // are borrowed from it).
        let unmapped = ops.is_empty() || unsafe { hypercall::gnttab_unmap(&mut ops) }.is_ok();
        let mut book = self.platform.book.borrow_mut();
        // A page whose map failed holds its own frame's entry still, or none: restore it too.
        let mut unmapped_ok = alloc::vec![true; self.handles.len()];
        for (&i, op) in pages.iter().zip(&ops) {
            unmapped_ok[i] = unmapped && op.status == abi::GNTST_OKAY;
        }
        for (i, ok) in unmapped_ok.into_iter().enumerate() {
            let va = pool_va(self.first_page + i);
            // Put the pool page's own frame back (the unmap left the entry empty).
            let restored = ok
                && self
                    .platform
                    .p2m
                    .own_pte(va)
                    // SAFETY: the page's own frame goes back at its own address; nothing
                    // used the address while the grant was there.
                    .and_then(|pte| unsafe { hypercall::update_va_mapping(va, pte) })
                    .is_ok();
            if restored {
                book.free_pages(self.first_page + i, 1);
            } else {
                self.platform
                    .leaked_pages
                    .set(self.platform.leaked_pages.get() + 1);
            }
        }
    }
}

/// A writer that keeps a message on one line (newlines become spaces), for `ERROR` lines.
struct OneLine<'a, W>(&'a W);

impl<D: Doorbell> Write for OneLine<'_, Console<'_, D>> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut console = self.0;
        for (i, part) in s.split('\n').enumerate() {
            if i > 0 {
                console.write_str(" ")?;
            }
            console.write_str(part)?;
        }
        Ok(())
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    static PANICKING: AtomicBool = AtomicBool::new(false);
    // ORDERING: Relaxed: one vCPU; the flag only stops a panic inside this handler recursing.
    if !PANICKING.swap(true, Ordering::Relaxed) {
        if let Some(platform) = installed() {
            let mut out = OneLine(&platform.console);
            let _ = write!(out, "ERROR panic: {info}");
            let _ = platform.console.write(b"\n");
        }
    }
    hypercall::shutdown(abi::SHUTDOWN_CRASH)
}
