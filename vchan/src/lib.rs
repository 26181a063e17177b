//! vchan: Xen's inter-domain byte streams over shared memory.
#![cfg_attr(not(feature = "std"), no_std)]
#![deny(unsafe_code)]

pub mod abi;
pub mod layout;
#[allow(unsafe_code)]
pub mod ring;
