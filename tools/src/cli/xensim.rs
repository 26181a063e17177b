//! `xensim`'s command line.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::error::ErrorKind;
use clap::{Args, Parser, Subcommand, ValueHint};
use xen_types::DomId;

use super::{parse_domid, Mistake};

const EXAMPLES: &str = "\
Examples:
  xensim serve --dir /tmp/xen &                          the host, until Ctrl-C
  xensim create --dir /tmp/xen --domid 1 --name guest1   a guest, domain 1
  xensim run --dir /tmp/xen --domid 0 -- vchan-cat -l 1 5 < file &
  xensim run --dir /tmp/xen --domid 1 -- vchan-cat --wait 10 0 5 > copy
  xensim stats --dir /tmp/xen                            all zeros once every program has exited
  xensim destroy --dir /tmp/xen --domid 1

`serve` takes the stand-in C libraries (libxengnttab.so, libxenevtchn.so, built by
`cargo build --release -p shim-xengnttab -p shim-xenevtchn`) from the directory of this
executable or the one above it, or from $XENSIM_LIB_DIR.";

/// A simulated Xen host across processes, which unmodified Xen C programs run on.
///
/// `xensim serve` is the host: the simulated hypervisor (event channels, grant tables, domain
/// life) and a xenstore daemon with one socket per domain, in the directory DIR. `create` and
/// `destroy` play the toolstack; `run` starts a program as a domain, with the stand-in
/// libxengnttab.so.1 and libxenevtchn.so.1 (in DIR/lib) first on its library path. When a
/// process dies, however it died, the host carries out its unmap notifications and reclaims its
/// grants and ports.
#[derive(Parser)]
#[command(name = "xensim", version, after_help = EXAMPLES)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Cmd,
}

/// xensim's subcommands.
#[derive(Subcommand)]
pub enum Cmd {
    /// Run the simulated host in the foreground, until SIGINT or SIGTERM; dom0 exists.
    Serve {
        /// Where the host lives.
        #[command(flatten)]
        host: HostDir,
    },
    /// Create a domain: introduced to xenstore, with /local/domain/N/{domid,name}.
    Create {
        /// Where the host lives.
        #[command(flatten)]
        host: HostDir,
        /// The new domain's id.
        #[arg(long, value_name = "N", value_parser = parse_domid)]
        domid: DomId,
        /// Its name (default: domain-N).
        #[arg(long)]
        name: Option<String>,
    },
    /// Destroy a domain: its processes are killed, their unmap notifications fire, and its
    /// grants, ports and xenstore home are reclaimed.
    Destroy {
        /// Where the host lives.
        #[command(flatten)]
        host: HostDir,
        /// The domain to destroy.
        #[arg(long, value_name = "N", value_parser = parse_domid)]
        domid: DomId,
    },
    /// Run a command as a domain, with XENSIM_DIR, XENSIM_DOMID, XENSTORED_PATH and
    /// LD_LIBRARY_PATH set for it.
    Run {
        /// Where the host lives.
        #[command(flatten)]
        host: HostDir,
        /// The domain to run as (0 for dom0).
        #[arg(long, value_name = "N", value_parser = parse_domid)]
        domid: DomId,
        /// The program and its arguments, after `--`.
        #[arg(last = true, required = true, value_name = "COMMAND",
              value_hint = ValueHint::CommandWithArguments)]
        command: Vec<OsString>,
    },
    /// Print what the host holds: domains, handles, ports, grants, mappings.
    Stats {
        /// Where the host lives.
        #[command(flatten)]
        host: HostDir,
    },
}

/// The directory of a simulated host.
#[derive(Args)]
pub struct HostDir {
    /// The host's directory: its sockets, and the stand-in libraries in DIR/lib.
    #[arg(long, value_name = "DIR", value_hint = ValueHint::DirPath)]
    pub dir: PathBuf,
}

/// xensim's words for a usage mistake: the plain ones, with `unexpected argument "--x"` for an
/// unknown argument and `run needs a command after --`, as it always said.
pub fn word(mistake: &Mistake) -> String {
    match mistake.kind() {
        ErrorKind::UnknownArgument => {
            format!(
                "unexpected argument {:?}",
                mistake.value().unwrap_or_default()
            )
        }
        ErrorKind::MissingRequiredArgument if mistake.arguments() == ["COMMAND"] => {
            "run needs a command after --".to_owned()
        }
        _ => super::plain_words(mistake),
    }
}
