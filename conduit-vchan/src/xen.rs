//! The Xen platform a vchan endpoint runs on, chosen at run time, and a vchan stream over any
//! of them. Generic code (the rendezvous, the connects) is monomorphised per platform; this enum
//! is the one run-time choice, at the edge.

use std::fmt;
use std::io::{self, Read, Write};

#[cfg(feature = "sim")]
use vchan::sim::SimDomain;
#[cfg(target_os = "linux")]
use vchan::xen::XenDomain;
#[cfg(feature = "xensim")]
use vchan::xensim::XensimDomain;
use vchan::{Backend, Vchan, VchanError};
use xen_types::DomId;

/// Where vchan endpoints live: which Xen, and which domain of it this program is.
#[derive(Clone)]
pub enum Xen {
    /// A domain of the in-process simulation ([`vchan::sim::SimXen`]): tests and examples.
    #[cfg(feature = "sim")]
    Sim(SimDomain),
    /// A domain of the cross-process simulated host (`xensim serve`).
    #[cfg(feature = "xensim")]
    Xensim(XensimDomain),
    /// Real Xen, through `/dev/xen` and xenstored.
    #[cfg(target_os = "linux")]
    Real(XenDomain),
}

impl Xen {
    /// The platform this process runs on: the simulated host when `XENSIM_DIR` is set (as
    /// under `xensim run`), else real Xen when its devices open. The one place where a program
    /// of this workspace chooses its platform (the tools call it too).
    ///
    /// The error is one line that says how to get either: "cannot use the simulated host:
    /// ..." when `XENSIM_DIR` is set but the rest of `xensim run`'s environment is not, else
    /// "no Xen available: ...", followed by how to run inside a Xen domain or under
    /// `xensim run`.
    pub fn from_env() -> io::Result<Xen> {
        #[cfg(feature = "xensim")]
        if std::env::var_os(xensim::ENV_DIR).is_some() {
            return XensimDomain::from_env().map(Xen::Xensim).map_err(|e| {
                io::Error::new(e.kind(), format!("cannot use the simulated host: {e}"))
            });
        }
        #[cfg(target_os = "linux")]
        {
            let xen = XenDomain::new();
            xen.probe().map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!(
                        "no Xen available: {e}; run inside a Xen domain (as root), or on the \
                         simulated host under `xensim run` (XENSIM_DIR is not set)"
                    ),
                )
            })?;
            Ok(Xen::Real(xen))
        }
        #[cfg(not(target_os = "linux"))]
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "no Xen available: real Xen needs Linux; run on the simulated host under \
             `xensim run` (XENSIM_DIR is not set)",
        ))
    }
}

impl fmt::Debug for Xen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            #[cfg(feature = "sim")]
            Xen::Sim(d) => write!(f, "Xen::Sim(domain {})", d.domid()),
            #[cfg(feature = "xensim")]
            Xen::Xensim(d) => write!(f, "Xen::Xensim({:?})", d),
            #[cfg(target_os = "linux")]
            Xen::Real(_) => f.write_str("Xen::Real"),
        }
    }
}

/// Run `$body` with `$b` bound to the platform's backend, whatever the platform.
macro_rules! with_backend {
    ($xen:expr, $b:ident => $body:expr) => {
        match $xen {
            #[cfg(feature = "sim")]
            $crate::xen::Xen::Sim($b) => $body,
            #[cfg(feature = "xensim")]
            $crate::xen::Xen::Xensim($b) => $body,
            #[cfg(target_os = "linux")]
            $crate::xen::Xen::Real($b) => $body,
        }
    };
}
pub(crate) use with_backend;

/// This domain's id on `xen`, if the key store says it.
#[cfg_attr(not(feature = "tokio"), allow(dead_code))]
pub(crate) fn own_domid(xen: &Xen) -> Option<DomId> {
    with_backend!(xen, b => {
        let store = b.open_store().ok()?;
        crate::rendezvous::own_domid(&store, "").ok()
    })
}

/// A connected vchan on any platform.
pub enum VchanStream {
    /// On the in-process simulation.
    #[cfg(feature = "sim")]
    Sim(Vchan<SimDomain>),
    /// On the simulated host.
    #[cfg(feature = "xensim")]
    Xensim(Vchan<XensimDomain>),
    /// On real Xen.
    #[cfg(target_os = "linux")]
    Real(Vchan<XenDomain>),
}

/// The platforms' endpoints convert into [`VchanStream`].
pub trait IntoVchanStream: Backend + Sized {
    /// Wrap an endpoint of this platform.
    fn wrap(vchan: Vchan<Self>) -> VchanStream;
}

#[cfg(feature = "sim")]
impl IntoVchanStream for SimDomain {
    fn wrap(vchan: Vchan<Self>) -> VchanStream {
        VchanStream::Sim(vchan)
    }
}

#[cfg(feature = "xensim")]
impl IntoVchanStream for XensimDomain {
    fn wrap(vchan: Vchan<Self>) -> VchanStream {
        VchanStream::Xensim(vchan)
    }
}

#[cfg(target_os = "linux")]
impl IntoVchanStream for XenDomain {
    fn wrap(vchan: Vchan<Self>) -> VchanStream {
        VchanStream::Real(vchan)
    }
}

macro_rules! each {
    ($stream:expr, $v:ident => $body:expr) => {
        match $stream {
            #[cfg(feature = "sim")]
            VchanStream::Sim($v) => $body,
            #[cfg(feature = "xensim")]
            VchanStream::Xensim($v) => $body,
            #[cfg(target_os = "linux")]
            VchanStream::Real($v) => $body,
        }
    };
}

impl VchanStream {
    /// Half-close: see [`Vchan::shutdown_write`].
    pub fn shutdown_write(&self) -> Result<(), VchanError> {
        each!(self, v => v.shutdown_write())
    }

    /// Bound each blocking read: see [`Vchan::set_read_timeout`].
    #[cfg(feature = "tls")]
    pub(crate) fn set_read_timeout(&self, timeout: Option<std::time::Duration>) {
        each!(self, v => v.set_read_timeout(timeout))
    }

    /// Bound each blocking write: see [`Vchan::set_write_timeout`].
    #[cfg(feature = "tls")]
    pub(crate) fn set_write_timeout(&self, timeout: Option<std::time::Duration>) {
        each!(self, v => v.set_write_timeout(timeout))
    }

    /// Bytes ready to read now.
    pub fn data_ready(&self) -> Result<usize, VchanError> {
        each!(self, v => v.data_ready())
    }

    /// Close the channel, reporting errors (dropping it closes too).
    pub fn close(self) -> Result<(), VchanError> {
        each!(self, v => v.close())
    }
}

impl Read for VchanStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        each!(self, v => Read::read(v, buf))
    }
}

impl Write for VchanStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        each!(self, v => Write::write(v, buf))
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Read for &VchanStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        each!(*self, v => Read::read(&mut &*v, buf))
    }
}

impl Write for &VchanStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        each!(*self, v => Write::write(&mut &*v, buf))
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl fmt::Debug for VchanStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        each!(self, v => fmt::Debug::fmt(v, f))
    }
}
