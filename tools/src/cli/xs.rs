//! `xs`'s command line.

use clap::error::ErrorKind;
use clap::{Parser, Subcommand};
use xenstore::Perm;

use super::Mistake;

const USAGE: &str = "\
xs read PATH
       xs write PATH VALUE
       xs ls [-p] [PATH]       (recursive listing, like xenstore-ls; -p shows permissions)
       xs rm PATH
       xs chmod PATH PERM...   (PERM: n|r|w|b followed by a domid, owner first, e.g. n0 r5)
       xs watch PATH [-n COUNT]";

const EXAMPLES: &str = "\
Examples:
  xs write /local/domain/0/data/greeting hello
  xs read /local/domain/0/data/greeting
  xs ls -p /local/domain/5                 the guest's keys, with their permissions
  xs chmod /local/domain/0/data/x n0 r5    dom0 owns it; domain 5 may read it
  xs watch -n 2 /local/domain/5/device     the watch's own event, then one change
  XENSTORED_PATH=/tmp/xen/dom0.sock xs ls  the store of a `xensim serve --dir /tmp/xen` host

The daemon is found via $XENSTORED_PATH, else $XENSTORED_RUNDIR/socket (default
/var/run/xenstored/socket), else /dev/xen/xenbus.";

/// A small xenstore client: read, write, ls, rm, chmod, watch.
///
/// It finds the daemon the way libxenstore does, and its output is that of xenstore-read,
/// xenstore-ls and xenstore-watch.
#[derive(Parser)]
#[command(name = "xs", version, override_usage = USAGE, after_help = EXAMPLES)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Cmd,
}

/// xs's subcommands.
#[derive(Subcommand)]
pub enum Cmd {
    /// Print the value at PATH.
    Read {
        /// The node to read.
        path: String,
    },
    /// Write VALUE at PATH, creating the node and any parents it lacks.
    Write {
        /// The node to write.
        path: String,
        /// Its new value.
        #[arg(allow_hyphen_values = true)]
        value: String,
    },
    /// List PATH and everything below it, with values, as xenstore-ls does.
    Ls {
        /// Show each node's permissions too, as xenstore-ls -p does.
        #[arg(short = 'p')]
        perms: bool,
        /// Where to start.
        #[arg(default_value = "/")]
        path: String,
    },
    /// Remove PATH and everything below it.
    Rm {
        /// The node to remove.
        path: String,
    },
    /// Set PATH's permissions: the owner's first, then one per other domain.
    Chmod {
        /// The node.
        path: String,
        /// n, r, w or b (none, read, write, both) followed by a domain id: n0 r5.
        #[arg(required = true, value_name = "PERM", value_parser = parse_perm)]
        perms: Vec<Perm>,
    },
    /// Print the path of each change at or below PATH (the first line is the watch's own
    /// event); runs until interrupted, or COUNT lines.
    Watch {
        /// The node to watch.
        path: String,
        /// Stop after COUNT lines.
        #[arg(short = 'n', value_name = "COUNT", value_parser = parse_count)]
        count: Option<u64>,
    },
}

fn parse_perm(text: &str) -> Result<Perm, String> {
    text.parse()
        .map_err(|_| format!("invalid permission {text:?}"))
}

fn parse_count(text: &str) -> Result<u64, String> {
    text.parse().map_err(|_| format!("invalid count {text:?}"))
}

/// xs's words for a usage mistake: the plain ones, with the counts of arguments said as xs
/// always said them (`wrong number of arguments for read`, `ls takes [-p] and at most one
/// PATH`).
pub fn word(mistake: &Mistake) -> String {
    let value = mistake.value().unwrap_or_default();
    match (mistake.kind(), mistake.subcommand()) {
        (ErrorKind::UnknownArgument, Some("ls")) => "ls takes [-p] and at most one PATH".into(),
        (ErrorKind::UnknownArgument, Some(sub)) if !value.starts_with('-') => {
            format!("wrong number of arguments for {sub}: unexpected {value:?}")
        }
        (ErrorKind::MissingRequiredArgument, Some(sub)) => {
            let missing = mistake.arguments();
            let verb = if missing.len() > 1 { "are" } else { "is" };
            format!(
                "wrong number of arguments for {sub}: {} {verb} missing",
                missing.join(" and ")
            )
        }
        _ => super::plain_words(mistake),
    }
}
