//! Endpoint names: `tcp://HOST:PORT`, `unix:///ABS/PATH`, `unix:REL`, `vchan://DOMAIN/PORT`,
//! `vchan://DOMAIN/SERVICE`, and `tls+` before any of them.
//!
//! A dedicated parser, because `http::Uri` and `url` misread several of these (a `*` host, a
//! relative `unix:` path, a bracketed IPv6 host with no scheme-default port).

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use xen_types::DomId;

/// A named endpoint: a transport, optionally wrapped in TLS.
///
/// `Display` and `FromStr` round-trip:
///
/// ```
/// use conduit_vchan::Endpoint;
/// for name in ["tcp://127.0.0.1:8080", "unix:///run/app.sock", "vchan://5/http",
///              "vchan://0/7", "vchan://*/http", "tls+vchan://guest1/api"] {
///     let endpoint: Endpoint = name.parse().unwrap();
///     assert_eq!(endpoint.to_string(), name);
/// }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// Whether TLS runs over the transport (`tls+`). The TLS configuration is given in code,
    /// never taken from the name.
    pub tls: bool,
    /// The transport.
    pub transport: Transport,
}

/// The transport an endpoint names.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Transport {
    /// `tcp://HOST:PORT`: a host name, an IPv4 address or a bracketed IPv6 address.
    Tcp {
        /// The host, as written (without the brackets of an IPv6 address).
        host: String,
        /// The TCP port.
        port: u16,
    },
    /// `unix:///ABS/PATH` (absolute) or `unix:REL` (relative to the working directory).
    Unix(PathBuf),
    /// `vchan://DOMAIN/PORT` or `vchan://DOMAIN/SERVICE`.
    Vchan {
        /// The other domain (the server for a client; the allowed client for a listener).
        domain: Domain,
        /// An integer port (libxenvchan's convention) or a service name (the rendezvous).
        port: VchanPort,
    },
}

/// The domain part of a vchan endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Domain {
    /// A domain id.
    Id(DomId),
    /// A domain's name as the toolstack wrote it at `/local/domain/<id>/name`, resolved to its
    /// id when connecting (guests cannot change their own name there).
    Name(String),
    /// `*`: any domain (listeners for a service only).
    Any,
}

/// What a vchan endpoint reaches in the domain.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum VchanPort {
    /// An integer port: the path `/local/domain/<server>/data/vchan/<client>/<port>`, wire-
    /// compatible with any libxenvchan peer; one connection at a time.
    Number(u32),
    /// A service name (`[a-zA-Z0-9_.-]+`, not all digits): connections through the service's
    /// rendezvous, any number at once.
    Service(String),
}

/// Why a string is not an endpoint: one line that says what was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    input: String,
    expected: &'static str,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} is not an endpoint: {}", self.input, self.expected)
    }
}

impl std::error::Error for ParseError {}

const SCHEMES: &str = "expected tcp://HOST:PORT, unix:///ABS/PATH, unix:REL, \
                       vchan://DOMAIN/PORT or vchan://DOMAIN/SERVICE, optionally after tls+";

fn is_name(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

fn all_digits(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit())
}

impl FromStr for Endpoint {
    type Err = ParseError;

    fn from_str(input: &str) -> Result<Endpoint, ParseError> {
        let fail = |expected| ParseError {
            input: input.to_owned(),
            expected,
        };
        let (tls, rest) = match input.strip_prefix("tls+") {
            Some(rest) => (true, rest),
            None => (false, input),
        };
        let transport = if let Some(addr) = rest.strip_prefix("tcp://") {
            parse_tcp(addr).ok_or_else(|| {
                fail("expected tcp://HOST:PORT (a name, an IPv4 address or [IPv6], and a port 0-65535)")
            })?
        } else if let Some(path) = rest.strip_prefix("unix://") {
            if !path.starts_with('/') || path.len() < 2 {
                return Err(fail(
                    "expected unix:///ABS/PATH (three slashes) or unix:REL",
                ));
            }
            Transport::Unix(PathBuf::from(path))
        } else if let Some(path) = rest.strip_prefix("unix:") {
            if path.is_empty() || path.starts_with('/') {
                return Err(fail(
                    "expected unix:///ABS/PATH (three slashes) or unix:REL",
                ));
            }
            Transport::Unix(PathBuf::from(path))
        } else if let Some(addr) = rest.strip_prefix("vchan://") {
            parse_vchan(addr).map_err(fail)?
        } else {
            return Err(fail(SCHEMES));
        };
        Ok(Endpoint { tls, transport })
    }
}

fn parse_tcp(addr: &str) -> Option<Transport> {
    let (host, port) = if let Some(bracketed) = addr.strip_prefix('[') {
        let (host, rest) = bracketed.split_once(']')?;
        host.parse::<std::net::Ipv6Addr>().ok()?;
        (host, rest.strip_prefix(':')?)
    } else {
        let (host, port) = addr.rsplit_once(':')?;
        let host_ok = is_name(host) && !host.contains(':');
        host_ok.then_some((host, port))?
    };
    if !all_digits(port) {
        return None;
    }
    // Port 0 is for listeners: "any free port" (`Listener::local_endpoint` tells which).
    let port: u16 = port.parse().ok()?;
    Some(Transport::Tcp {
        host: host.to_owned(),
        port,
    })
}

fn parse_vchan(addr: &str) -> Result<Transport, &'static str> {
    const EXPECTED: &str = "expected vchan://DOMAIN/PORT or vchan://DOMAIN/SERVICE, where DOMAIN \
                            is a domain id, a domain name or * and PORT an integer or SERVICE a \
                            name of [a-zA-Z0-9_.-]";
    let (domain, port) = addr.split_once('/').ok_or(EXPECTED)?;
    let domain = if domain == "*" {
        Domain::Any
    } else if all_digits(domain) {
        let id: u16 = domain
            .parse()
            .map_err(|_| "a domain id is at most 32751 (the ids above are reserved)")?;
        let id = DomId(id);
        if !id.is_normal() {
            return Err("a domain id is at most 32751 (the ids above are reserved)");
        }
        Domain::Id(id)
    } else if is_name(domain) {
        Domain::Name(domain.to_owned())
    } else {
        return Err(EXPECTED);
    };
    let port = if all_digits(port) {
        VchanPort::Number(port.parse().map_err(|_| "a vchan port fits 32 bits")?)
    } else if is_name(port) {
        VchanPort::Service(port.to_owned())
    } else {
        return Err(EXPECTED);
    };
    if domain == Domain::Any && matches!(port, VchanPort::Number(_)) {
        return Err(
            "vchan://*/ takes a SERVICE: an integer port serves one domain named in advance",
        );
    }
    Ok(Transport::Vchan { domain, port })
}

impl Endpoint {
    /// This endpoint with the TCP address a listener actually bound (the port of
    /// `tcp://HOST:0`); unchanged if the address is unknown or this is not TCP.
    pub(crate) fn bound_at(&self, addr: std::io::Result<std::net::SocketAddr>) -> Endpoint {
        match (&self.transport, addr) {
            (Transport::Tcp { .. }, Ok(addr)) => Endpoint {
                tls: self.tls,
                transport: Transport::Tcp {
                    host: addr.ip().to_string(),
                    port: addr.port(),
                },
            },
            _ => self.clone(),
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.tls {
            f.write_str("tls+")?;
        }
        match &self.transport {
            Transport::Tcp { host, port } if host.contains(':') => {
                write!(f, "tcp://[{host}]:{port}")
            }
            Transport::Tcp { host, port } => write!(f, "tcp://{host}:{port}"),
            Transport::Unix(path) if path.is_absolute() => {
                write!(f, "unix://{}", path.display())
            }
            Transport::Unix(path) => write!(f, "unix:{}", path.display()),
            Transport::Vchan { domain, port } => write!(f, "vchan://{domain}/{port}"),
        }
    }
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Domain::Id(id) => write!(f, "{id}"),
            Domain::Name(name) => f.write_str(name),
            Domain::Any => f.write_str("*"),
        }
    }
}

impl fmt::Display for VchanPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VchanPort::Number(n) => write!(f, "{n}"),
            VchanPort::Service(name) => f.write_str(name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_form_round_trips() {
        for name in [
            "tcp://127.0.0.1:8080",
            "tcp://localhost:1",
            "tcp://[::1]:443",
            "tcp://[fe80::1]:65535",
            "unix:///run/qmp.sock",
            "unix:rel/app.sock",
            "vchan://5/http",
            "vchan://0/7",
            "vchan://32751/4294967295",
            "vchan://*/my-svc.v2_x",
            "vchan://guest1/api",
            "vchan://Domain-0/9",
            "tls+tcp://example.org:443",
            "tls+unix:///s",
            "tls+vchan://*/https",
        ] {
            let endpoint: Endpoint = name.parse().unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(endpoint.to_string(), name);
        }
    }

    #[test]
    fn the_parts_come_out_typed() {
        let e: Endpoint = "tls+vchan://5/http".parse().unwrap();
        assert!(e.tls);
        assert_eq!(
            e.transport,
            Transport::Vchan {
                domain: Domain::Id(DomId(5)),
                port: VchanPort::Service("http".into())
            }
        );
        let e: Endpoint = "vchan://guest/12".parse().unwrap();
        assert_eq!(
            e.transport,
            Transport::Vchan {
                domain: Domain::Name("guest".into()),
                port: VchanPort::Number(12)
            }
        );
        let e: Endpoint = "tcp://[::1]:80".parse().unwrap();
        assert_eq!(
            e.transport,
            Transport::Tcp {
                host: "::1".into(),
                port: 80
            }
        );
        let e: Endpoint = "unix:///a/b".parse().unwrap();
        assert_eq!(e.transport, Transport::Unix("/a/b".into()));
    }

    #[test]
    fn nonsense_is_refused_with_what_was_expected() {
        for (bad, says) in [
            ("", "expected tcp://"),
            ("http://x:1", "expected tcp://"),
            ("tcp://host", "tcp://HOST:PORT"),
            ("tcp://host:65536", "tcp://HOST:PORT"),
            ("tcp://host:+80", "tcp://HOST:PORT"),
            ("tcp://::1:80", "tcp://HOST:PORT"),
            ("tcp://[nonsense]:80", "tcp://HOST:PORT"),
            ("tcp://a b:80", "tcp://HOST:PORT"),
            ("unix://rel", "three slashes"),
            ("unix:", "three slashes"),
            ("unix:///", "three slashes"),
            ("vchan://5", "vchan://DOMAIN/PORT"),
            ("vchan://5/", "vchan://DOMAIN/PORT"),
            ("vchan://5/a/b", "vchan://DOMAIN/PORT"),
            ("vchan://5/a b", "vchan://DOMAIN/PORT"),
            ("vchan://32752/1", "at most 32751"),
            ("vchan://99999/1", "at most 32751"),
            ("vchan://5/99999999999", "32 bits"),
            ("vchan://*/7", "takes a SERVICE"),
            ("vchan://a*b/x", "vchan://DOMAIN/PORT"),
            ("tls+", "expected tcp://"),
            ("tls+tls+tcp://a:1", "expected tcp://"),
        ] {
            let err = bad.parse::<Endpoint>().unwrap_err().to_string();
            assert!(err.contains(says), "{bad:?}: {err}");
            assert!(!err.contains('\n'), "one line: {err}");
        }
    }
}
