//! The cross-process simulated host's backend: a domain of a running `xensim serve`.
//!
//! [`XensimDomain`] implements [`Backend`] with [`xensim::XensimGnt`] (sharing and mapping),
//! [`xensim::XensimEvtchn`] and [`xenstore::client::Client`] on the domain's own xenstore
//! socket. [`XensimDomain::from_env`] takes the host and the domain from the environment that
//! `xensim run` sets up, so a tool picks this backend at run time when `XENSIM_DIR` is set:
//!
//! ```no_run
//! use std::io::Write;
//! use vchan::xensim::XensimDomain;
//! use vchan::{Address, RingSizes, Vchan};
//! use xen_types::DomId;
//!
//! let domain = XensimDomain::from_env()?;
//! let mut server = Vchan::server(&domain, DomId(3), &Address::Port(1), RingSizes::default())?;
//! server.wait_connected(None)?;
//! server.write_all(b"hello, domain 3")?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::io;
use std::path::{Path, PathBuf};

use xen_types::DomId;
use xensim::{env_config, XensimEvtchn, XensimGnt};
use xenstore::client::Client;

use crate::backend::Backend;

/// One domain of a simulated host: the host's directory and the domain id.
#[derive(Debug, Clone)]
pub struct XensimDomain {
    dir: PathBuf,
    domid: DomId,
}

impl XensimDomain {
    /// Domain `domid` of the host serving `dir`.
    pub fn new(dir: impl Into<PathBuf>, domid: DomId) -> XensimDomain {
        XensimDomain {
            dir: dir.into(),
            domid,
        }
    }

    /// The host and domain named by `XENSIM_DIR` and `XENSIM_DOMID`; an error says which is
    /// missing or malformed.
    pub fn from_env() -> io::Result<XensimDomain> {
        let (dir, domid) = env_config()?;
        Ok(XensimDomain { dir, domid })
    }

    /// The host's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The domain's id.
    pub fn domid(&self) -> DomId {
        self.domid
    }
}

impl Backend for XensimDomain {
    type Events = XensimEvtchn;
    type Sharer = XensimGnt;
    type Mapper = XensimGnt;
    type Store = Client;

    fn open_events(&self) -> io::Result<XensimEvtchn> {
        XensimEvtchn::open(&self.dir, self.domid)
    }

    fn open_sharer(&self) -> io::Result<XensimGnt> {
        XensimGnt::open_sharer(&self.dir, self.domid)
    }

    fn open_mapper(&self) -> io::Result<XensimGnt> {
        XensimGnt::open_mapper(&self.dir, self.domid)
    }

    fn open_store(&self) -> xenstore::Result<Client> {
        Client::open_path(&xenstore::daemon::socket_path(&self.dir, self.domid))
    }
}
