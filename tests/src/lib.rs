//! Cross-crate and interop tests live in `tests/`.
#![forbid(unsafe_code)]
