//! `xs`: a small xenstore command-line client (read, write, ls, rm, chmod, watch).
//!
//! It finds the daemon the way libxenstore does: `$XENSTORED_PATH`, else
//! `$XENSTORED_RUNDIR/socket` (default `/var/run/xenstored/socket`), else the xenbus device.
#![forbid(unsafe_code)]

use std::io::Write;
use std::os::unix::fs::FileTypeExt;
use std::process::ExitCode;
use std::time::Duration;
use tools::cli::xs::{Cli, Cmd};
use tools::describe;
use xenstore::client::{daemon_socket_path, Client};
use xenstore::{Errno, Perm, TxId, XenStore, XenstoreError};

/// A failure worth one line on stderr and exit status 1 (usage mistakes are clap's to find).
struct Failure {
    message: String,
}

impl Failure {
    fn runtime(message: impl Into<String>) -> Failure {
        Failure {
            message: message.into(),
        }
    }
}

fn failed(what: &str, path: &str, e: &XenstoreError) -> Failure {
    Failure::runtime(format!("cannot {what} {path}: {}", describe(e)))
}

fn connect() -> Result<Client, Failure> {
    Client::open().map_err(|e| {
        let error = describe(&e);
        let socket = daemon_socket_path();
        let is_socket = std::fs::metadata(&socket).is_ok_and(|m| m.file_type().is_socket());
        // The error names the path it tried; the socket is worth naming only when that was
        // another one (the xenbus device fallen back to).
        let hint = if is_socket || error.contains(&*socket.to_string_lossy()) {
            String::new()
        } else {
            format!(
                " (no daemon socket at {}; set XENSTORED_PATH)",
                socket.display()
            )
        };
        Failure::runtime(format!("cannot connect to xenstore: {error}{hint}"))
    })
}

/// Escape a value the way xenstore-ls shows it: printable ASCII as is, `\\` doubled, other bytes
/// as octal escapes.
fn sanitise(value: &[u8]) -> String {
    let mut out = String::with_capacity(value.len());
    for &b in value {
        match b {
            b'\\' => out.push_str("\\\\"),
            b' '..=b'~' => out.push(b as char),
            _ => out.push_str(&format!("\\{b:03o}")),
        }
    }
    out
}

fn perms_text(perms: &[Perm]) -> String {
    perms
        .iter()
        .map(Perm::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

fn ls(
    client: &Client,
    path: &str,
    depth: usize,
    with_perms: bool,
    out: &mut impl Write,
) -> Result<(), Failure> {
    let children = match client.directory(TxId::NONE, path) {
        Ok(children) => children,
        // Below the top, a node that vanished meanwhile or hides its children is shown as a leaf.
        Err(XenstoreError::Errno(Errno::ENOENT | Errno::EACCES)) if depth > 0 => return Ok(()),
        Err(e) => return Err(failed("list", path, &e)),
    };
    for name in children {
        let child = if path == "/" {
            format!("/{name}")
        } else {
            format!("{path}/{name}")
        };
        let value = match client.read(TxId::NONE, &child) {
            Ok(v) => format!("\"{}\"", sanitise(&v)),
            Err(e) => format!("<cannot read: {}>", describe(&e)),
        };
        let perms = if with_perms {
            match client.get_perms(TxId::NONE, &child) {
                Ok(p) => format!("  ({})", perms_text(&p)),
                Err(e) => format!("  (<{}>)", describe(&e)),
            }
        } else {
            String::new()
        };
        writeln!(out, "{:depth$}{name} = {value}{perms}", "")
            .map_err(|e| Failure::runtime(format!("cannot write output: {e}")))?;
        ls(client, &child, depth + 1, with_perms, out)?;
    }
    Ok(())
}

fn run(command: Cmd) -> Result<(), Failure> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let write_err = |e: std::io::Error| Failure::runtime(format!("cannot write output: {e}"));
    match command {
        Cmd::Read { path } => {
            let value = connect()?
                .read(TxId::NONE, &path)
                .map_err(|e| failed("read", &path, &e))?;
            out.write_all(&value)
                .and_then(|()| out.write_all(b"\n"))
                .map_err(write_err)?;
        }
        Cmd::Write { path, value } => {
            connect()?
                .write(TxId::NONE, &path, value.as_bytes())
                .map_err(|e| failed("write", &path, &e))?;
        }
        Cmd::Ls { perms, path } => ls(&connect()?, &path, 0, perms, &mut out)?,
        Cmd::Rm { path } => {
            connect()?
                .rm(TxId::NONE, &path)
                .map_err(|e| failed("remove", &path, &e))?;
        }
        Cmd::Chmod { path, perms } => {
            connect()?
                .set_perms(TxId::NONE, &path, &perms)
                .map_err(|e| failed("set permissions of", &path, &e))?;
        }
        Cmd::Watch { path, count } => {
            let client = connect()?;
            let token = format!("xs-watch-{}", std::process::id());
            client
                .watch(&path, &token)
                .map_err(|e| failed("watch", &path, &e))?;
            let mut seen = 0u64;
            loop {
                if count.is_some_and(|c| seen >= c) {
                    break;
                }
                match client.next_watch_event(Some(Duration::from_secs(3600))) {
                    Ok(Some(ev)) if ev.token == token => {
                        writeln!(out, "{}", ev.path)
                            .and_then(|()| out.flush())
                            .map_err(write_err)?;
                        seen += 1;
                    }
                    Ok(_) => {}
                    Err(e) => return Err(failed("watch", &path, &e)),
                }
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli: Cli = match tools::parse_cli(tools::cli::xs::word) {
        Ok(cli) => cli,
        Err(status) => return status,
    };
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            report(&f.message);
            ExitCode::FAILURE
        }
    }
}

/// One `xs: ...` line on stderr. `eprintln!` would panic (exit 101) if stderr cannot be
/// written; the exit status must still say what went wrong.
fn report(message: &str) {
    let _ = writeln!(std::io::stderr(), "xs: {message}");
}
