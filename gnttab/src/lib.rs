//! gnttab
