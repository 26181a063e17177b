//! vchan
