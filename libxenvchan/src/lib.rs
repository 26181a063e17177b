//! A drop-in `libxenvchan.so.4.17`: Xen 4.17's C library for vchan, as Debian 12 ships it (the
//! same soname, the same twelve functions and `close_xs_srv`, each versioned `VERS_4.17.0`, the
//! same `struct libxenvchan`), built on the `vchan` crate's channel core. A program linked
//! against Debian's library runs on this one by library path alone:
//!
//! ```text
//! LD_LIBRARY_PATH=$(scripts/libxenvchan | tail -n1) /usr/lib/xen-4.17/bin/vchan-socket-proxy ...
//! ```
//!
//! What changes for the program is what the C library gets wrong (libxenvchan/ABI.md §6): a
//! peer that corrupts the ring gives -1 with `errno` `EPROTO` and `is_open` 0, never 0 for ever;
//! a peer whose domain was destroyed reads as closed (blocking calls look every 500 ms of
//! sleep, `is_open` at most every 500 ms); a blocking write cut short reports what it wrote;
//! every failure sets `errno`; `blocking` and `server_persist` start cleared; paths of any
//! length; descriptors close-on-exec; non-blocking packets larger than the ring are `EMSGSIZE`;
//! `is_open` is 0, 1 or 2; a reading and a writing thread on one handle do not steal each
//! other's wake-up. Everything else is as in C: the calls' results, the notify requests that
//! `data_ready` and `buffer_space` post, the fields programs read and write.
//!
//! The library adds no thread, no `atexit` or `atfork` handler. It drives the channel through
//! the process's own `libxenevtchn.so.1`, `libxengnttab.so.1` and `libxenstore.so.4` (module
//! `sys`), so the same file works on real Xen and under `xensim run`.
//!
//! Modules: `abi` (the public struct), `ctrl` (the heap block behind a handle), `driver` (the
//! C semantics over the core), `sys` (the Xen libraries), `exports` (the C functions). `unsafe`
//! lives in `sys`, `ctrl` and `exports` only.
#![deny(unsafe_code)]

mod abi;
#[allow(unsafe_code)]
mod ctrl;
mod driver;
#[allow(unsafe_code)]
mod exports;
#[allow(unsafe_code)]
mod sys;
