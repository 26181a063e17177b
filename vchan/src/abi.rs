//! The shared control page, byte for byte as libxenvchan lays it out
//! (`/usr/include/xen/io/libxenvchan.h`, `struct vchan_interface`).
//!
//! The structs below exist to let the compiler check the offsets; no value of them is ever created
//! over shared memory. The code reaches the page only through [`crate::ring::ControlPage`], by
//! these offsets.

use core::mem::{offset_of, size_of};

/// `struct ring_shared`: the two free-running indices of one ring.
#[repr(C)]
#[allow(dead_code)]
pub struct RingShared {
    /// Consumer index: written by the reader only.
    pub cons: u32,
    /// Producer index: written by the writer only.
    pub prod: u32,
}

/// `struct vchan_interface`: the control page header. The grant list follows it.
#[repr(C)]
#[allow(dead_code)]
pub struct VchanInterface {
    /// The client-to-server ring.
    pub left: RingShared,
    /// The server-to-client ring.
    pub right: RingShared,
    /// log2 of the left ring's size.
    pub left_order: u16,
    /// log2 of the right ring's size.
    pub right_order: u16,
    /// 0 exited, 1 connected, 2 not yet connected.
    pub cli_live: u8,
    /// 0 exited, 1 connected.
    pub srv_live: u8,
    /// Request bits the client must honour (set by the server).
    pub cli_notify: u8,
    /// Request bits the server must honour (set by the client).
    pub srv_notify: u8,
    /// Grant refs of the external ring pages: every left page, then every right page.
    pub grants: [u32; 0],
}

const _: () = assert!(size_of::<RingShared>() == 8);
const _: () = assert!(size_of::<VchanInterface>() == 24);
const _: () = assert!(offset_of!(VchanInterface, left) == 0);
const _: () = assert!(offset_of!(VchanInterface, right) == 8);
const _: () = assert!(offset_of!(VchanInterface, left_order) == 16);
const _: () = assert!(offset_of!(VchanInterface, right_order) == 18);
const _: () = assert!(offset_of!(VchanInterface, cli_live) == 20);
const _: () = assert!(offset_of!(VchanInterface, srv_live) == 21);
const _: () = assert!(offset_of!(VchanInterface, cli_notify) == 22);
const _: () = assert!(offset_of!(VchanInterface, srv_notify) == 23);
const _: () = assert!(offset_of!(VchanInterface, grants) == 24);

/// Offset of `left.cons`.
pub const LEFT_CONS: usize = offset_of!(VchanInterface, left) + offset_of!(RingShared, cons);
/// Offset of `left.prod`.
pub const LEFT_PROD: usize = offset_of!(VchanInterface, left) + offset_of!(RingShared, prod);
/// Offset of `right.cons`.
pub const RIGHT_CONS: usize = offset_of!(VchanInterface, right) + offset_of!(RingShared, cons);
/// Offset of `right.prod`.
pub const RIGHT_PROD: usize = offset_of!(VchanInterface, right) + offset_of!(RingShared, prod);
/// Offset of `left_order`.
pub const LEFT_ORDER: usize = offset_of!(VchanInterface, left_order);
/// Offset of `right_order`.
pub const RIGHT_ORDER: usize = offset_of!(VchanInterface, right_order);
/// Offset of `cli_live`: the byte the client's kernel clears when the client goes away.
pub const CLI_LIVE: usize = offset_of!(VchanInterface, cli_live);
/// Offset of `srv_live`: the byte the server's kernel clears when the server goes away.
pub const SRV_LIVE: usize = offset_of!(VchanInterface, srv_live);
/// Offset of `cli_notify`.
pub const CLI_NOTIFY: usize = offset_of!(VchanInterface, cli_notify);
/// Offset of `srv_notify`.
pub const SRV_NOTIFY: usize = offset_of!(VchanInterface, srv_notify);
/// Offset of the grant list.
pub const GRANTS: usize = offset_of!(VchanInterface, grants);

/// Notify bit: "tell me when you have written".
pub const NOTIFY_WRITE: u8 = 0x1;
/// Notify bit: "tell me when you have consumed".
pub const NOTIFY_READ: u8 = 0x2;
/// Not in libxenvchan: set by an endpoint of this crate in the *peer's* notify byte when it will
/// write no more (half-close, `Vchan::shutdown_write`). The peer reads end-of-stream once its ring
/// is empty, and can still write. libxenvchan only ever tests and clears its own two bits, so a C
/// peer ignores this one and sees the end only when the channel closes.
pub const NOTIFY_WRITE_SHUT: u8 = 0x80;

/// Live byte: that side has exited.
pub const LIVE_EXITED: u8 = 0;
/// Live byte: that side is connected.
pub const LIVE_CONNECTED: u8 = 1;
/// Live byte (client only): the client has not connected yet.
pub const LIVE_WAITING: u8 = 2;

/// log2 of the page size.
pub const PAGE_SHIFT: u16 = 12;
/// The page size.
pub const PAGE_SIZE: usize = 1 << PAGE_SHIFT;
/// The order of the 1024-byte ring kept inside the control page.
pub const SMALL_RING_SHIFT: u16 = 10;
/// Where the 1024-byte in-page ring starts.
pub const SMALL_RING_OFFSET: usize = 1024;
/// The order of the 2048-byte ring kept inside the control page.
pub const LARGE_RING_SHIFT: u16 = 11;
/// Where the 2048-byte in-page ring starts.
pub const LARGE_RING_OFFSET: usize = 2048;
/// The largest ring order (1 MiB).
pub const MAX_RING_SHIFT: u16 = 20;
/// The largest ring size.
pub const MAX_RING_SIZE: usize = 1 << MAX_RING_SHIFT;

const _: () = assert!(SMALL_RING_OFFSET + (1 << SMALL_RING_SHIFT) <= LARGE_RING_OFFSET);
const _: () = assert!(LARGE_RING_OFFSET + (1 << LARGE_RING_SHIFT) == PAGE_SIZE);
