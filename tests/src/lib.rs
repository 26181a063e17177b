//! Cross-crate and interop tests live in `tests/`.
