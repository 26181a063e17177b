//! The Linux backend: [`Evtchn`] over `/dev/xen/evtchn`.
//!
//! The fd is opened `O_NONBLOCK | O_CLOEXEC`: [`pending`](EventChannel::pending) reads one port
//! and answers `None` on `EAGAIN`, so callers wait for the fd to become readable (poll/epoll)
//! first. The driver masks a port as it delivers it; writing the port back unmasks it. Closing
//! the fd (dropping the handle, or the process dying) unbinds every port bound through it.
//!
//! `read`, `write` and the ioctls go through nix (the ioctls as the typed wrappers its macros
//! generate in [`abi`]), each retried on `EINTR`.
#![allow(unsafe_code)]

pub mod abi;

use std::ffi::c_int;
use std::fmt;
use std::io;
use std::mem::size_of;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::OFlag;

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
/// names the path.
fn open_device(path: &Path, extra_flags: c_int) -> io::Result<OwnedFd> {
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
        let fd = open_device(path.as_ref(), OFlag::O_NONBLOCK.bits())?;
        Ok(Evtchn { fd })
    }

    /// Issue `request`, one of the wrappers declared in [`abi`], with `arg`, retrying on `EINTR`;
    /// returns the ioctl's value.
    fn ioctl<T>(
        &self,
        request: unsafe fn(c_int, *const T) -> nix::Result<c_int>,
        arg: &T,
    ) -> io::Result<c_int> {
        retry_on_eintr(|| {
            // SAFETY: `request` is one of `abi`'s wrappers, each made by `ioctl_write_ptr_bad!`
            // for a request that only reads one `T` (its number encodes `size_of::<T>()`, checked
            // in `abi` against the C header); `arg` is a live `T` for the whole call, and the fd
            // is this handle's open evtchn device (or, in tests, a file that knows no ioctl).
            unsafe { request(self.fd.as_raw_fd(), arg) }
        })
    }

    fn new_port(ret: c_int) -> io::Result<Port> {
        u32::try_from(ret)
            .ok()
            .map(Port)
            .filter(|p| !p.is_reserved())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "the kernel returned port 0"))
    }
}

impl EventChannel for Evtchn {
    fn bind_unbound_port(&self, remote: DomId) -> io::Result<Port> {
        let arg = abi::BindUnboundPort {
            remote_domain: u32::from(remote.0),
        };
        Self::new_port(self.ioctl(abi::bind_unbound_port, &arg)?)
    }

    fn bind_interdomain(&self, remote: DomId, remote_port: Port) -> io::Result<Port> {
        let arg = abi::BindInterdomain {
            remote_domain: u32::from(remote.0),
            remote_port: remote_port.0,
        };
        Self::new_port(self.ioctl(abi::bind_interdomain, &arg)?)
    }

    fn notify(&self, port: Port) -> io::Result<()> {
        self.ioctl(abi::notify, &abi::PortArg { port: port.0 })
            .map(drop)
    }

    fn pending(&self) -> io::Result<Option<Port>> {
        let mut buf = [0u8; size_of::<abi::EvtchnPort>()];
        let n = match retry_on_eintr(|| nix::unistd::read(&self.fd, &mut buf)) {
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Err(err) => return Err(err),
        };
        if n == buf.len() {
            Ok(Some(Port(abi::EvtchnPort::from_ne_bytes(buf))))
        } else {
            Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("short read of {n} bytes from the event-channel device"),
            ))
        }
    }

    fn unmask(&self, port: Port) -> io::Result<()> {
        let buf = abi::EvtchnPort::to_ne_bytes(port.0);
        let n = retry_on_eintr(|| nix::unistd::write(&self.fd, &buf))?;
        if n == buf.len() {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "the event-channel device took part of a port",
            ))
        }
    }

    fn unbind(&self, port: Port) -> io::Result<()> {
        self.ioctl(abi::unbind, &abi::PortArg { port: port.0 })
            .map(drop)
    }
}

/// Run `call` until it fails with something other than `EINTR`.
fn retry_on_eintr<T>(mut call: impl FnMut() -> nix::Result<T>) -> io::Result<T> {
    loop {
        match call() {
            Err(Errno::EINTR) => continue,
            result => return result.map_err(io::Error::from),
        }
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
        use nix::fcntl::{fcntl, FcntlArg, FdFlag};
        let handle = Evtchn::open_path("/dev/null").unwrap();
        let fl = OFlag::from_bits_retain(fcntl(&handle, FcntlArg::F_GETFL).unwrap());
        let fd = FdFlag::from_bits_retain(fcntl(&handle, FcntlArg::F_GETFD).unwrap());
        assert!(fl.contains(OFlag::O_NONBLOCK), "{fl:?}");
        assert!(fd.contains(FdFlag::FD_CLOEXEC), "{fd:?}");
    }

    #[test]
    fn interrupted_calls_are_retried_and_other_errors_pass_through() {
        let mut interruptions = 2;
        let value = retry_on_eintr(|| {
            if interruptions > 0 {
                interruptions -= 1;
                Err(Errno::EINTR)
            } else {
                Ok(5)
            }
        });
        assert_eq!(value.unwrap(), 5);
        let err = retry_on_eintr(|| Err::<(), _>(Errno::EAGAIN)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        assert_eq!(err.raw_os_error(), Some(Errno::EAGAIN as i32));
    }
}
