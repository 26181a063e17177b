//! The guest's job, from the words of xl's `extra=` line.
//!
//! ```text
//! send ROLE PEER PATH BYTES     write BYTES bytes (byte i = i % 251), then close
//! recv ROLE PEER PATH           read until the peer closes; print RESULT bytes=N sha256=HEX
//! echo ROLE PEER PATH           write back all that is read until the peer closes
//! http PORT                     serve HTTP/1.1 on libxenvchan's path for PORT
//! selftest PEER                 the platform's self-test against a dom0 peer (tests/qemu)
//! ring=SIZE                     optional, anywhere: a server's two ring sizes (default 65536)
//! ```
//! ROLE is `server` or `client`; PEER a domain id; PATH the vchan's xenstore directory
//! (relative to the guest's home without a leading `/`).
//!
//! ```
//! use vchan_guest::{parse, Job, Role};
//! let plan = parse("send server 0 data/vchan 4096 ring=1024").unwrap();
//! assert!(matches!(plan.job, Job::Send { ref chan, bytes: 4096 } if chan.role == Role::Server));
//! assert_eq!(plan.ring_size(), 1024);
//! assert_eq!(parse("send server 0").unwrap_err().to_string(), "send: missing PATH (usage: send ROLE PEER PATH BYTES)");
//! ```
#![no_std]

extern crate alloc;

pub mod http;
pub mod sha256;

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

use xen_types::DomId;
use xenstore::wire::{validate_path, PathKind};

/// A server's ring sizes when `ring=` is not given.
pub const DEFAULT_RING: usize = 65536;
/// The largest ring a vchan has (libxenvchan's largest order, 20).
pub const MAX_RING: usize = 1 << 20;

/// Which end of the vchan the guest is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Publishes the channel at PATH and waits for the client.
    Server,
    /// Reads the server's keys at PATH (waiting up to 60 s) and connects.
    Client,
}

/// The vchan a job uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chan {
    /// The guest's end.
    pub role: Role,
    /// The other end's domain.
    pub peer: DomId,
    /// The xenstore directory (relative to the guest's home if it does not start with `/`).
    pub path: String,
}

/// What the guest was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Job {
    /// Write `bytes` bytes of the pattern, then close.
    Send {
        /// The channel.
        chan: Chan,
        /// How many bytes.
        bytes: u64,
    },
    /// Read until the peer closes, then print the count and the SHA-256.
    Recv {
        /// The channel.
        chan: Chan,
    },
    /// Write back everything read until the peer closes.
    Echo {
        /// The channel.
        chan: Chan,
    },
    /// Serve HTTP/1.1 on `/local/domain/SELF/data/vchan/0/PORT`, one connection after another.
    Http {
        /// The port number in the path.
        port: u32,
    },
    /// The platform's self-test with a dom0 peer.
    SelfTest {
        /// The peer domain.
        peer: DomId,
    },
}

impl Job {
    /// Whether the guest is a server in this job (and `ring=` applies).
    pub fn is_server(&self) -> bool {
        match self {
            Job::Send { chan, .. } | Job::Recv { chan } | Job::Echo { chan } => {
                chan.role == Role::Server
            }
            Job::Http { .. } => true,
            Job::SelfTest { .. } => false,
        }
    }
}

/// The byte stream the jobs send and serve: byte `i` is `i % 251` (a period prime to every
/// ring and page size, so a byte out of place shows).
///
/// ```
/// use vchan_guest::Pattern;
/// let p = Pattern::new();
/// assert_eq!(p.chunk(250, 3), [250, 0, 1]);
/// assert_eq!(p.chunk(1 << 40, 1_000_000).len(), Pattern::MAX_CHUNK);
/// ```
#[derive(Debug, Clone)]
pub struct Pattern {
    block: Vec<u8>,
}

impl Default for Pattern {
    fn default() -> Self {
        Pattern::new()
    }
}

impl Pattern {
    /// The period.
    pub const PERIOD: usize = 251;
    /// The most one [`chunk`](Pattern::chunk) gives.
    pub const MAX_CHUNK: usize = 64 * 1024;

    /// The pattern, precomputed once (the data path then only slices it).
    pub fn new() -> Pattern {
        let len = Self::MAX_CHUNK + Self::PERIOD;
        Pattern {
            block: (0..len).map(|i| (i % Self::PERIOD) as u8).collect(),
        }
    }

    /// The stream's bytes from offset `at`, at most `max` (and [`MAX_CHUNK`](Self::MAX_CHUNK)).
    pub fn chunk(&self, at: u64, max: u64) -> &[u8] {
        let start = (at % Self::PERIOD as u64) as usize;
        let len = max.min(Self::MAX_CHUNK as u64) as usize;
        &self.block[start..start + len]
    }
}

/// A job and its options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The job.
    pub job: Job,
    /// `ring=SIZE`, if given.
    pub ring: Option<usize>,
}

impl Plan {
    /// The server's ring sizes: `ring=` or [`DEFAULT_RING`].
    pub fn ring_size(&self) -> usize {
        self.ring.unwrap_or(DEFAULT_RING)
    }
}

/// Why the command line names no job: one line, fit for `ERROR <line>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobError(String);

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn usage(job: &str) -> &'static str {
    match job {
        "send" => "send ROLE PEER PATH BYTES",
        "recv" => "recv ROLE PEER PATH",
        "echo" => "echo ROLE PEER PATH",
        "http" => "http PORT",
        _ => "selftest PEER",
    }
}

/// The words of a job, consumed in order, each error naming the job's usage.
struct Words<'a> {
    job: &'a str,
    words: core::slice::Iter<'a, &'a str>,
}

impl<'a> Words<'a> {
    fn err(&self, what: impl fmt::Display) -> JobError {
        JobError(alloc::format!(
            "{}: {what} (usage: {})",
            self.job,
            usage(self.job)
        ))
    }

    fn next(&mut self, name: &str) -> Result<&'a str, JobError> {
        self.words
            .next()
            .copied()
            .ok_or_else(|| self.err(alloc::format!("missing {name}")))
    }

    fn role(&mut self) -> Result<Role, JobError> {
        match self.next("ROLE")? {
            "server" => Ok(Role::Server),
            "client" => Ok(Role::Client),
            other => Err(self.err(alloc::format!("ROLE is server or client, not {other:?}"))),
        }
    }

    fn peer(&mut self) -> Result<DomId, JobError> {
        let word = self.next("PEER")?;
        match word.parse::<u16>() {
            Ok(id) if DomId(id).is_normal() => Ok(DomId(id)),
            _ => Err(self.err(alloc::format!("PEER is a domain id, not {word:?}"))),
        }
    }

    fn path(&mut self) -> Result<String, JobError> {
        let word = self.next("PATH")?;
        validate_path(word, PathKind::Node)
            .map_err(|_| self.err(alloc::format!("PATH {word:?} is not a xenstore path")))?;
        Ok(word.to_string())
    }

    fn chan(&mut self) -> Result<Chan, JobError> {
        Ok(Chan {
            role: self.role()?,
            peer: self.peer()?,
            path: self.path()?,
        })
    }

    fn number<T: core::str::FromStr>(&mut self, name: &str) -> Result<T, JobError> {
        let word = self.next(name)?;
        word.parse()
            .map_err(|_| self.err(alloc::format!("{name} is a number, not {word:?}")))
    }

    fn end(&mut self) -> Result<(), JobError> {
        match self.words.next() {
            None => Ok(()),
            Some(extra) => Err(self.err(alloc::format!("unexpected {extra:?}"))),
        }
    }
}

/// Parse the command line (xl's `extra=`): the job's words, and `ring=SIZE` anywhere.
pub fn parse(cmdline: &str) -> Result<Plan, JobError> {
    let mut ring = None;
    let mut words: Vec<&str> = Vec::new();
    for word in cmdline.split_ascii_whitespace() {
        if let Some(size) = word.strip_prefix("ring=") {
            let size = match size.parse::<usize>() {
                Ok(n) if (1..=MAX_RING).contains(&n) => n,
                _ => {
                    return Err(JobError(alloc::format!(
                        "ring={size}: SIZE is a byte count from 1 to {MAX_RING}"
                    )))
                }
            };
            if ring.replace(size).is_some() {
                return Err(JobError("ring= given twice".to_string()));
            }
        } else {
            words.push(word);
        }
    }
    let Some((&job, rest)) = words.split_first() else {
        return Err(JobError(
            "no job: extra= names one of send, recv, echo, http, selftest".to_string(),
        ));
    };
    let mut w = Words {
        job,
        words: rest.iter(),
    };
    let job = match job {
        "send" => {
            let chan = w.chan()?;
            let bytes = w.number("BYTES")?;
            Job::Send { chan, bytes }
        }
        "recv" => Job::Recv { chan: w.chan()? },
        "echo" => Job::Echo { chan: w.chan()? },
        "http" => Job::Http {
            port: w.number("PORT")?,
        },
        "selftest" => Job::SelfTest { peer: w.peer()? },
        other => {
            return Err(JobError(alloc::format!(
                "unknown job {other:?}: extra= names one of send, recv, echo, http, selftest"
            )))
        }
    };
    w.end()?;
    if ring.is_some() && !job.is_server() {
        return Err(JobError(
            "ring= sets a server's rings: this job is not a server".to_string(),
        ));
    }
    Ok(Plan { job, ring })
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use alloc::string::ToString;

    fn chan(role: Role, peer: u16, path: &str) -> Chan {
        Chan {
            role,
            peer: DomId(peer),
            path: path.to_string(),
        }
    }

    #[test]
    fn every_job_of_the_interface_parses() {
        let plan = |s| parse(s).unwrap();
        assert_eq!(
            plan("send server 0 data/vchan 67108864"),
            Plan {
                job: Job::Send {
                    chan: chan(Role::Server, 0, "data/vchan"),
                    bytes: 64 << 20
                },
                ring: None
            }
        );
        assert_eq!(
            plan("recv client 7 /local/domain/7/data/v").job,
            Job::Recv {
                chan: chan(Role::Client, 7, "/local/domain/7/data/v")
            }
        );
        assert_eq!(
            plan("  echo   server 0 data/e  ").job,
            Job::Echo {
                chan: chan(Role::Server, 0, "data/e")
            }
        );
        assert_eq!(plan("http 80").job, Job::Http { port: 80 });
        assert_eq!(plan("selftest 0").job, Job::SelfTest { peer: DomId(0) });
    }

    #[test]
    fn ring_sizes_a_server_anywhere_on_the_line() {
        assert_eq!(
            parse("send server 0 p 10").unwrap().ring_size(),
            DEFAULT_RING
        );
        assert_eq!(
            parse("ring=4096 echo server 0 p").unwrap().ring_size(),
            4096
        );
        assert_eq!(parse("http 80 ring=1048576").unwrap().ring, Some(MAX_RING));
        let err = |s| parse(s).unwrap_err().to_string();
        assert_eq!(
            err("recv client 0 p ring=4096"),
            "ring= sets a server's rings: this job is not a server"
        );
        assert_eq!(
            err("echo server 0 p ring=0"),
            "ring=0: SIZE is a byte count from 1 to 1048576"
        );
        assert_eq!(
            err("echo server 0 p ring=2097152"),
            "ring=2097152: SIZE is a byte count from 1 to 1048576"
        );
        assert_eq!(
            err("echo server 0 p ring=1k"),
            "ring=1k: SIZE is a byte count from 1 to 1048576"
        );
        assert_eq!(err("echo server 0 p ring=8 ring=8"), "ring= given twice");
    }

    #[test]
    fn bad_lines_get_one_line_errors_naming_the_usage() {
        let err = |s| parse(s).unwrap_err().to_string();
        assert_eq!(
            err(""),
            "no job: extra= names one of send, recv, echo, http, selftest"
        );
        assert_eq!(
            err("frobnicate 1"),
            "unknown job \"frobnicate\": extra= names one of send, recv, echo, http, selftest"
        );
        assert_eq!(
            err("send server 0 p"),
            "send: missing BYTES (usage: send ROLE PEER PATH BYTES)"
        );
        assert_eq!(
            err("send master 0 p 1"),
            "send: ROLE is server or client, not \"master\" (usage: send ROLE PEER PATH BYTES)"
        );
        assert_eq!(
            err("recv client 32752 p"),
            "recv: PEER is a domain id, not \"32752\" (usage: recv ROLE PEER PATH)"
        );
        assert_eq!(
            err("echo client 0 bad//path"),
            "echo: PATH \"bad//path\" is not a xenstore path (usage: echo ROLE PEER PATH)"
        );
        assert_eq!(
            err("send client 0 p -5"),
            "send: BYTES is a number, not \"-5\" (usage: send ROLE PEER PATH BYTES)"
        );
        assert_eq!(err("http"), "http: missing PORT (usage: http PORT)");
        assert_eq!(
            err("selftest 0 extra"),
            "selftest: unexpected \"extra\" (usage: selftest PEER)"
        );
        for line in ["", "frobnicate", "send server 0 p", "echo client 0 a//b"] {
            assert!(!err(line).contains('\n'));
        }
    }
}
