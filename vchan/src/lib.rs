//! vchan: Xen's inter-domain byte streams over shared memory, byte-compatible with libxenvchan.
//!
//! A server domain grants a control page (and, for larger rings, ring pages) to one client domain
//! and publishes the grant and an event channel in xenstore; the client maps them. Two rings of
//! bytes carry the data, one each way; the event channel wakes a side that sleeps.
//!
//! ```
//! use std::io::{Read, Write};
//! use vchan::sim::SimXen;
//! use vchan::{Address, RingSizes, Vchan};
//! use xen_types::DomId;
//!
//! let xen = SimXen::new();
//! let dom0 = xen.domain(DomId(0));
//! let guest = xen.create_domain(DomId(1)).unwrap();
//!
//! let server = Vchan::server(&dom0, DomId(1), &Address::Port(5), RingSizes::default()).unwrap();
//! let mut client = Vchan::client(&guest, DomId(0), &Address::Port(5), None).unwrap();
//! client.write_all(b"hello, dom0").unwrap();
//! client.close().unwrap();
//!
//! let mut received = String::new();
//! (&server).read_to_string(&mut received).unwrap();
//! assert_eq!(received, "hello, dom0");
//! drop(server);
//! xen.check_leaks().unwrap();
//! ```
//!
//! The peer is treated as hostile: every value it can write is read once per decision and
//! validated, and a corrupted ring is a [`VchanError`], never a hang, a panic or an out-of-bounds
//! access.
//!
//! Features (all but `tokio` on by default): `std` builds the endpoints; without it only the
//! ring and layout core ([`abi`], [`layout`], [`ring`]) is built, for unikernels that bring their
//! own grant and event plumbing. Each backend is its own feature, so a program links only what
//! it uses: `xen` (real Xen; a dom0 tool needs only this: `default-features = false, features =
//! ["xen"]`), `sim` (the embedded simulated Xen) and `xensim` (a domain of `xensim serve`). The
//! `tokio` feature adds `AsyncVchan`, an `AsyncRead + AsyncWrite` endpoint.
#![cfg_attr(not(feature = "std"), no_std)]
#![deny(unsafe_code)]

extern crate alloc;

pub mod abi;
pub mod bare;
pub mod channel;
pub mod error;
pub mod layout;
pub mod platform;
// Shared memory only through `xen_types::memory`: no `unsafe` here, but in the model checker's
// stand-in for it (`ring::loom_page`).
#[cfg_attr(vchan_loom, allow(unsafe_code))]
pub mod ring;

#[cfg(feature = "tokio")]
mod async_vchan;
#[cfg(feature = "std")]
mod backend;
#[cfg(feature = "std")]
mod endpoint;
#[cfg(feature = "sim")]
pub mod sim;
#[cfg(feature = "std")]
pub mod spin;
#[cfg(feature = "std")]
mod wait;
#[cfg(all(feature = "xen", target_os = "linux"))]
pub mod xen;
// The cross-process host passes memfds, which Miri does not have.
#[cfg(all(feature = "xensim", not(miri)))]
pub mod xensim;

#[cfg(all(feature = "tokio", not(vchan_loom)))]
pub use async_vchan::AsyncSource;
#[cfg(feature = "tokio")]
pub use async_vchan::AsyncVchan;
#[cfg(feature = "std")]
pub use backend::Backend;
pub use channel::{Address, RingSizes, State};
#[cfg(feature = "std")]
pub use endpoint::Vchan;
pub use error::{ChannelError, Error, Op};
#[cfg(feature = "std")]
pub use error::{Result, SpliceError, VchanError};
