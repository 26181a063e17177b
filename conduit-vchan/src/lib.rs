//! Endpoint naming over vchan and TCP (not yet built: see the project's issues).
#![forbid(unsafe_code)]
