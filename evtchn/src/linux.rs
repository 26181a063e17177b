//! The Linux backend: [`Evtchn`] over `/dev/xen/evtchn`.
//!
//! The fd is opened `O_NONBLOCK | O_CLOEXEC`: [`pending`](EventChannel::pending) reads one port
//! and answers `None` on `EAGAIN`, so callers wait for the fd to become readable (poll/epoll)
//! first. The driver masks a port as it delivers it; writing the port back unmasks it. Closing
//! the fd (dropping the handle, or the process dying) unbinds every port bound through it.
#![allow(unsafe_code)]

pub mod abi;

use std::fmt;
use std::io;
use std::mem::size_of;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::{DomId, EventChannel, Port};

/// Where the event-channel device lives.
pub const EVTCHN_PATH: &str = "/dev/xen/evtchn";

/// An error opening the device: names the path and says the OS error (in the message only, so
/// that a chain of causes prints it once).
#[derive(Debug)]
struct OpenError {
    path: PathBuf,
    cause: io::Error,
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot open {}: {}", self.path.display(), self.cause)
    }
}

impl std::error::Error for OpenError {}

/// Open a Xen device node read-write and close-on-exec, with `extra_flags` (such as
/// `O_NONBLOCK`). A missing device or driver is an `io::Error` of kind `NotFound` whose message
/// names the path. Shared by the Linux backends of this crate and of `gnttab`.
pub fn open_device(path: &Path, extra_flags: libc::c_int) -> io::Result<OwnedFd> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(extra_flags)
        .open(path)
        .map(OwnedFd::from)
        .map_err(|cause| {
            io::Error::new(
                cause.kind(),
                OpenError {
                    path: path.to_owned(),
                    cause,
                },
            )
        })
}

/// An event-channel handle: `/dev/xen/evtchn` (libxenevtchn's `xenevtchn_handle`).
#[derive(Debug)]
pub struct Evtchn {
    fd: OwnedFd,
}

impl Evtchn {
    /// Open `/dev/xen/evtchn`.
    pub fn open() -> io::Result<Evtchn> {
        Self::open_path(EVTCHN_PATH)
    }

    /// Open an evtchn device at `path`. A missing device or driver is an `io::Error` of kind
    /// `NotFound` whose message names the path.
    pub fn open_path(path: impl AsRef<Path>) -> io::Result<Evtchn> {
        let fd = open_device(path.as_ref(), libc::O_NONBLOCK)?;
        Ok(Evtchn { fd })
    }

    /// Issue an ioctl taking a `T`, retrying on `EINTR`; returns the ioctl's value.
    fn ioctl<T>(&self, request: u64, arg: &mut T) -> io::Result<libc::c_int> {
        loop {
            // SAFETY: `arg` is a live, exclusively borrowed `T`, and every request passed here
            // takes exactly a `T` (the ioctl number encodes `size_of::<T>()`, checked in `abi`).
            let ret = unsafe { libc::ioctl(self.fd.as_raw_fd(), request as _, arg as *mut T) };
            if ret >= 0 {
                return Ok(ret);
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }

    fn new_port(ret: libc::c_int) -> io::Result<Port> {
        u32::try_from(ret)
            .ok()
            .map(Port)
            .filter(|p| !p.is_reserved())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "the kernel returned port 0"))
    }
}

impl EventChannel for Evtchn {
    fn bind_unbound_port(&self, remote: DomId) -> io::Result<Port> {
        let mut arg = abi::BindUnboundPort {
            remote_domain: u32::from(remote.0),
        };
        Self::new_port(self.ioctl(abi::IOCTL_EVTCHN_BIND_UNBOUND_PORT, &mut arg)?)
    }

    fn bind_interdomain(&self, remote: DomId, remote_port: Port) -> io::Result<Port> {
        let mut arg = abi::BindInterdomain {
            remote_domain: u32::from(remote.0),
            remote_port: remote_port.0,
        };
        Self::new_port(self.ioctl(abi::IOCTL_EVTCHN_BIND_INTERDOMAIN, &mut arg)?)
    }

    fn notify(&self, port: Port) -> io::Result<()> {
        let mut arg = abi::PortArg { port: port.0 };
        self.ioctl(abi::IOCTL_EVTCHN_NOTIFY, &mut arg).map(drop)
    }

    fn pending(&self) -> io::Result<Option<Port>> {
        let mut buf = [0u8; size_of::<abi::EvtchnPort>()];
        loop {
            // SAFETY: `buf` is a live, writable buffer of exactly `buf.len()` bytes.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n < 0 {
                let err = io::Error::last_os_error();
                match err.kind() {
                    io::ErrorKind::Interrupted => continue,
                    io::ErrorKind::WouldBlock => return Ok(None),
                    _ => return Err(err),
                }
            }
            return if n as usize == buf.len() {
                Ok(Some(Port(abi::EvtchnPort::from_ne_bytes(buf))))
            } else {
                Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("short read of {n} bytes from the event-channel device"),
                ))
            };
        }
    }

    fn unmask(&self, port: Port) -> io::Result<()> {
        let buf = port.0.to_ne_bytes();
        loop {
            // SAFETY: `buf` is a live buffer of exactly `buf.len()` bytes.
            let n = unsafe { libc::write(self.fd.as_raw_fd(), buf.as_ptr().cast(), buf.len()) };
            if n < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(err);
            }
            return if n as usize == buf.len() {
                Ok(())
            } else {
                Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "the event-channel device took part of a port",
                ))
            };
        }
    }

    fn unbind(&self, port: Port) -> io::Result<()> {
        let mut arg = abi::PortArg { port: port.0 };
        self.ioctl(abi::IOCTL_EVTCHN_UNBIND, &mut arg).map(drop)
    }
}

impl AsFd for Evtchn {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for Evtchn {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opening_a_missing_device_is_a_not_found_error_naming_the_path() {
        let err = Evtchn::open_path("/nonexistent/xen/evtchn").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(err.to_string().contains("/nonexistent/xen/evtchn"), "{err}");
    }

    #[test]
    fn a_device_that_is_not_evtchn_gives_errors_not_panics() {
        let handle = Evtchn::open_path("/dev/null").unwrap();
        assert!(handle.bind_unbound_port(DomId(0)).is_err());
        assert!(handle.bind_interdomain(DomId(0), Port(3)).is_err());
        assert!(handle.notify(Port(3)).is_err());
        assert!(handle.unbind(Port(3)).is_err());
        // /dev/null reads as end of file: a short read, reported as an error.
        assert_eq!(
            handle.pending().unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        // ... and swallows writes whole.
        handle.unmask(Port(3)).unwrap();
    }

    #[test]
    fn the_fd_is_non_blocking_and_close_on_exec() {
        let handle = Evtchn::open_path("/dev/null").unwrap();
        // SAFETY: F_GETFL/F_GETFD on an open fd take no pointers.
        let (fl, fd) = unsafe {
            (
                libc::fcntl(handle.as_raw_fd(), libc::F_GETFL),
                libc::fcntl(handle.as_raw_fd(), libc::F_GETFD),
            )
        };
        assert_ne!(fl & libc::O_NONBLOCK, 0);
        assert_ne!(fd & libc::FD_CLOEXEC, 0);
    }
}
