//! `vchan-bench`'s command line.

use clap::Parser;

use crate::parse_size;

const EXAMPLES: &str = "\
Examples:
  vchan-bench                          1 GiB over 64 KiB rings
  vchan-bench --ring 1M --chunk 1M     larger rings and writes
  vchan-bench --bytes 256M --duplex    256 MiB each way at once

For vchan-rs next to Debian's libxenvchan, across processes, see vchan-perf (scripts/bench).";

/// Move data between two domains of the embedded simulated Xen and say how fast it went.
///
/// Moves SIZE bytes from a client in simulated domain 1 to a server in dom0, in one process,
/// over a vchan with rings of at least --ring bytes each way, in writes and reads of --chunk
/// bytes; checks every byte, prints the throughput, and checks that nothing was left behind. No
/// set-up, no hypervisor, no root.
#[derive(Parser)]
#[command(name = "vchan-bench", version, after_help = EXAMPLES)]
pub struct Cli {
    /// The bytes to move (k, M, G suffixes: powers of 1024).
    #[arg(long, value_name = "SIZE", default_value = "1G", value_parser = parse_size)]
    pub bytes: usize,
    /// The least size of each ring.
    #[arg(long, value_name = "SIZE", default_value = "64k", value_parser = parse_size)]
    pub ring: usize,
    /// The size of each write and read.
    #[arg(long, value_name = "SIZE", default_value = "64k", value_parser = parse_chunk)]
    pub chunk: usize,
    /// Send SIZE bytes each way at once.
    #[arg(long)]
    pub duplex: bool,
}

fn parse_chunk(text: &str) -> Result<usize, String> {
    match parse_size(text)? {
        0 => Err(format!("{text:?} is less than a byte")),
        chunk => Ok(chunk),
    }
}
