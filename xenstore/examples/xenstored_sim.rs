//! Serve a fresh in-memory xenstore on `<DIR>/dom0.sock` until killed (a test and debugging aid;
//! the real host for the daemon is `xensim serve`).
//!
//! ```text
//! cargo run -p xenstore --example xenstored_sim -- /tmp/xs
//! XENSTORED_PATH=/tmp/xs/dom0.sock xenstore-ls /
//! ```
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (Some(dir), None) = (args.next(), args.next()) else {
        eprintln!("usage: xenstored_sim DIR");
        return ExitCode::from(2);
    };
    let dir = PathBuf::from(dir);
    match xenstore::daemon::Daemon::bind(&dir) {
        Ok(daemon) => {
            println!("{}", daemon.socket_path(xenstore::DomId(0)).display());
            daemon.run();
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("xenstored_sim: cannot serve {}: {e}", dir.display());
            ExitCode::FAILURE
        }
    }
}
