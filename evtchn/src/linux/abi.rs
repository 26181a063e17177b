//! The kernel ABI of `/dev/xen/evtchn`.
//!
//! Transcribed from Linux's `include/uapi/xen/evtchn.h` (installed by `linux-libc-dev` as
//! `/usr/include/xen/evtchn.h`); sizes, offsets and ioctl numbers are checked at compile time
//! against the values a C program compiled against that header prints on x86-64.
//!
//! Besides the ioctls, the device speaks two plain formats: `read` returns the ports with a
//! pending event as native `u32`s (and masks each one), `write` of native `u32` ports unmasks them.

use std::mem::{offset_of, size_of};

/// `_IOC(_IOC_NONE, type, nr, size)` on Linux (x86, arm, riscv: none = 0, size at bit 16).
const fn ioc_none(kind: u8, nr: u8, size: usize) -> u64 {
    ((size as u64) << 16) | ((kind as u64) << 8) | nr as u64
}

/// `struct ioctl_evtchn_bind_interdomain`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct BindInterdomain {
    /// The domain that offered the port.
    pub remote_domain: u32,
    /// Its unbound port.
    pub remote_port: u32,
}
const _: () = assert!(size_of::<BindInterdomain>() == 8);
const _: () = assert!(offset_of!(BindInterdomain, remote_domain) == 0);
const _: () = assert!(offset_of!(BindInterdomain, remote_port) == 4);

/// `struct ioctl_evtchn_bind_unbound_port`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct BindUnboundPort {
    /// The domain allowed to bind to the new port.
    pub remote_domain: u32,
}
const _: () = assert!(size_of::<BindUnboundPort>() == 4);

/// `struct ioctl_evtchn_unbind` and `struct ioctl_evtchn_notify` (one `unsigned int port`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct PortArg {
    /// A local port bound through this fd.
    pub port: u32,
}
const _: () = assert!(size_of::<PortArg>() == 4);

/// The unit of `read` and `write` on the device (`evtchn_port_t`).
pub type EvtchnPort = u32;

/// `IOCTL_EVTCHN_BIND_INTERDOMAIN`: returns the new local port.
pub const IOCTL_EVTCHN_BIND_INTERDOMAIN: u64 = ioc_none(b'E', 1, size_of::<BindInterdomain>());
/// `IOCTL_EVTCHN_BIND_UNBOUND_PORT`: returns the new local port.
pub const IOCTL_EVTCHN_BIND_UNBOUND_PORT: u64 = ioc_none(b'E', 2, size_of::<BindUnboundPort>());
/// `IOCTL_EVTCHN_UNBIND`.
pub const IOCTL_EVTCHN_UNBIND: u64 = ioc_none(b'E', 3, size_of::<PortArg>());
/// `IOCTL_EVTCHN_NOTIFY`.
pub const IOCTL_EVTCHN_NOTIFY: u64 = ioc_none(b'E', 4, size_of::<PortArg>());

const _: () = assert!(IOCTL_EVTCHN_BIND_INTERDOMAIN == 0x8_4501);
const _: () = assert!(IOCTL_EVTCHN_BIND_UNBOUND_PORT == 0x4_4502);
const _: () = assert!(IOCTL_EVTCHN_UNBIND == 0x4_4503);
const _: () = assert!(IOCTL_EVTCHN_NOTIFY == 0x4_4504);
