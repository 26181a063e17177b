//! The `http` job's protocol half: a request parsed with `httparse`, and the response it gets.
//! The guest's main loop moves the bytes; this decides what they mean.
//!
//! - `GET /bytes/N` (or `HEAD`): 200 with `Content-Length: N` and N bytes of the pattern
//!   (byte i = i % 251);
//! - any other path: 404; another method: 405; a request that is not HTTP/1.x, has a body this
//!   server cannot frame (chunked), or whose head outgrows [`MAX_HEAD`]: 400, 501 or 431, and
//!   the connection closes.
//!
//! A connection carries requests one after another (HTTP/1.1's keep-alive) until the client
//! says `Connection: close`, speaks HTTP/1.0 without `keep-alive`, or closes.
//!
//! ```
//! use vchan_guest::http::{parse_request, Parsed, Route};
//! let Parsed::Request(req) = parse_request(b"GET /bytes/300 HTTP/1.1\r\nHost: guest\r\n\r\n") else {
//!     panic!()
//! };
//! assert_eq!(req.route, Route::Bytes(300));
//! assert!(req.keep_alive);
//! assert!(req.response_head().starts_with("HTTP/1.1 200 OK\r\nContent-Length: 300\r\n"));
//! ```

use alloc::format;
use alloc::string::String;

/// The most a request's head (request line and headers) may take.
pub const MAX_HEAD: usize = 8192;
/// The most headers a request may have.
const MAX_HEADERS: usize = 32;

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `/bytes/N`: N bytes of the pattern.
    Bytes(u64),
    /// Any other path.
    NotFound,
    /// A method other than GET and HEAD.
    MethodNotAllowed,
}

/// A complete request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The bytes the head took (the next request, or its body, starts there).
    pub head_len: usize,
    /// What it asks for.
    pub route: Route,
    /// `HEAD`: the response has no body.
    pub head_only: bool,
    /// Whether the connection stays open after the response.
    pub keep_alive: bool,
    /// The request body's length (`Content-Length`), to be read and dropped.
    pub body_len: u64,
}

/// A request that gets an error response and ends the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Not an HTTP/1.x request.
    BadRequest,
    /// The head is larger than [`MAX_HEAD`] or has too many headers.
    HeadTooLarge,
    /// A body framed in a way this server does not read (`Transfer-Encoding`).
    NotImplemented,
}

/// What the bytes received so far hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// Not a whole head yet: read more (unless [`MAX_HEAD`] bytes are there already).
    Partial,
    /// A whole head.
    Request(Request),
    /// A request refused: answer [`Refusal::response`] and close.
    Refused(Refusal),
}

/// Parse the request at the start of `buf`.
pub fn parse_request(buf: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => {
            return Parsed::Refused(Refusal::HeadTooLarge)
        }
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(httparse::Error::TooManyHeaders) => return Parsed::Refused(Refusal::HeadTooLarge),
        Err(_) => return Parsed::Refused(Refusal::BadRequest),
    };
    if head_len > MAX_HEAD {
        return Parsed::Refused(Refusal::HeadTooLarge);
    }
    let (Some(method), Some(path), Some(version)) = (req.method, req.path, req.version) else {
        return Parsed::Refused(Refusal::BadRequest);
    };
    let mut keep_alive = version == 1;
    let mut body_len = 0u64;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("connection") {
            let value = h.value;
            if has_token(value, b"close") {
                keep_alive = false;
            } else if has_token(value, b"keep-alive") {
                keep_alive = true;
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Parsed::Refused(Refusal::NotImplemented);
        } else if h.name.eq_ignore_ascii_case("content-length") {
            match core::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
            {
                Some(n) => body_len = n,
                None => return Parsed::Refused(Refusal::BadRequest),
            }
        }
    }
    let head_only = method == "HEAD";
    let route = if method != "GET" && !head_only {
        Route::MethodNotAllowed
    } else {
        route(path)
    };
    Parsed::Request(Request {
        head_len,
        route,
        head_only,
        keep_alive,
        body_len,
    })
}

/// Whether a comma-separated header value holds `token` (case-insensitive).
fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// `/bytes/N` (N decimal digits only; a query string is ignored), else not found.
fn route(path: &str) -> Route {
    let path = path.split('?').next().unwrap_or(path);
    match path.strip_prefix("/bytes/") {
        Some(n) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => {
            n.parse().map_or(Route::NotFound, Route::Bytes)
        }
        _ => Route::NotFound,
    }
}

/// The status line and headers of a response with a `body_len`-byte body.
fn head(status: &str, body_len: u64, keep_alive: bool, content_type: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Length: {body_len}\r\nContent-Type: {content_type}\r\n\
         Connection: {}\r\nServer: vchan-guest\r\n\r\n",
        if keep_alive { "keep-alive" } else { "close" }
    )
}

/// The body of a 404 or 405.
const NOT_FOUND: &str = "not found: this guest serves GET /bytes/N\n";
const NOT_ALLOWED: &str = "method not allowed: this guest serves GET /bytes/N\n";

impl Request {
    /// The response's head.
    pub fn response_head(&self) -> String {
        match self.route {
            Route::Bytes(n) => head("200 OK", n, self.keep_alive, "application/octet-stream"),
            Route::NotFound => head(
                "404 Not Found",
                NOT_FOUND.len() as u64,
                self.keep_alive,
                "text/plain",
            ),
            Route::MethodNotAllowed => head(
                "405 Method Not Allowed",
                NOT_ALLOWED.len() as u64,
                self.keep_alive,
                "text/plain",
            ),
        }
    }

    /// The status code, for the console's log line.
    pub fn status(&self) -> u16 {
        match self.route {
            Route::Bytes(_) => 200,
            Route::NotFound => 404,
            Route::MethodNotAllowed => 405,
        }
    }

    /// A short body of an error response (none for 200: the caller streams the pattern, and
    /// none for HEAD).
    pub fn error_body(&self) -> &'static [u8] {
        match (self.route, self.head_only) {
            (_, true) | (Route::Bytes(_), _) => b"",
            (Route::NotFound, false) => NOT_FOUND.as_bytes(),
            (Route::MethodNotAllowed, false) => NOT_ALLOWED.as_bytes(),
        }
    }
}

impl Refusal {
    /// The whole response (the connection closes after it).
    pub fn response(self) -> String {
        let (status, body) = match self {
            Refusal::BadRequest => ("400 Bad Request", "bad request\n"),
            Refusal::HeadTooLarge => (
                "431 Request Header Fields Too Large",
                "request head too large\n",
            ),
            Refusal::NotImplemented => (
                "501 Not Implemented",
                "request bodies with Transfer-Encoding are not supported\n",
            ),
        };
        format!(
            "{}{body}",
            head(status, body.len() as u64, false, "text/plain")
        )
    }

    /// The status code, for the console's log line.
    pub fn status(self) -> u16 {
        match self {
            Refusal::BadRequest => 400,
            Refusal::HeadTooLarge => 431,
            Refusal::NotImplemented => 501,
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use alloc::vec;

    fn request(raw: &[u8]) -> Request {
        match parse_request(raw) {
            Parsed::Request(r) => r,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bytes_routes_and_the_response_head() {
        let r = request(b"GET /bytes/1048576 HTTP/1.1\r\nHost: x\r\n\r\nGET /next");
        assert_eq!(r.route, Route::Bytes(1 << 20));
        assert_eq!(r.head_len, 40, "the next request starts after the head");
        assert!(r.keep_alive && !r.head_only);
        assert_eq!(
            r.response_head(),
            "HTTP/1.1 200 OK\r\nContent-Length: 1048576\r\nContent-Type: application/octet-stream\r\n\
             Connection: keep-alive\r\nServer: vchan-guest\r\n\r\n"
        );
        assert_eq!(
            request(b"GET /bytes/0 HTTP/1.1\r\n\r\n").route,
            Route::Bytes(0)
        );
        assert_eq!(
            request(b"GET /bytes/12?x=1 HTTP/1.1\r\n\r\n").route,
            Route::Bytes(12)
        );
        let head = request(b"HEAD /bytes/5 HTTP/1.1\r\n\r\n");
        assert!(head.head_only);
        assert_eq!(head.error_body(), b"");
    }

    #[test]
    fn other_paths_are_404_and_other_methods_405() {
        for path in [
            "/",
            "/bytes",
            "/bytes/",
            "/bytes/-1",
            "/bytes/1k",
            "/bytes/99999999999999999999999",
            "/bytes/5/x",
            "/file",
        ] {
            let raw = format!("GET {path} HTTP/1.1\r\n\r\n");
            let r = request(raw.as_bytes());
            assert_eq!(r.route, Route::NotFound, "{path}");
            assert!(r.response_head().starts_with("HTTP/1.1 404 Not Found\r\n"));
            let len = format!("Content-Length: {}\r\n", r.error_body().len());
            assert!(r.response_head().contains(&len));
        }
        let r = request(b"POST /bytes/5 HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc");
        assert_eq!(
            (r.route, r.status(), r.body_len),
            (Route::MethodNotAllowed, 405, 3)
        );
    }

    #[test]
    fn connection_persistence_follows_the_version_and_the_header() {
        assert!(!request(b"GET /bytes/1 HTTP/1.0\r\n\r\n").keep_alive);
        assert!(request(b"GET /bytes/1 HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").keep_alive);
        let r = request(b"GET /bytes/1 HTTP/1.1\r\nConnection: TE, close\r\n\r\n");
        assert!(!r.keep_alive);
        assert!(r.response_head().contains("Connection: close\r\n"));
    }

    #[test]
    fn partial_heads_wait_and_bad_ones_are_refused() {
        assert_eq!(parse_request(b""), Parsed::Partial);
        assert_eq!(
            parse_request(b"GET /bytes/1 HTTP/1.1\r\nHost:"),
            Parsed::Partial
        );
        assert_eq!(
            parse_request(b"\x16\x03\x01 TLS hello\r\n\r\n"),
            Parsed::Refused(Refusal::BadRequest)
        );
        assert_eq!(
            parse_request(b"GET /bytes/1 HTTP/1.1\r\nContent-Length: lots\r\n\r\n"),
            Parsed::Refused(Refusal::BadRequest)
        );
        assert_eq!(
            parse_request(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Parsed::Refused(Refusal::NotImplemented)
        );
        let mut long = vec![];
        long.extend_from_slice(b"GET /bytes/1 HTTP/1.1\r\nX: ");
        long.resize(MAX_HEAD, b'a');
        assert_eq!(parse_request(&long), Parsed::Refused(Refusal::HeadTooLarge));
        let many: String = (0..40).map(|i| format!("H{i}: v\r\n")).collect();
        let raw = format!("GET /bytes/1 HTTP/1.1\r\n{many}\r\n");
        assert_eq!(
            parse_request(raw.as_bytes()),
            Parsed::Refused(Refusal::HeadTooLarge)
        );
        let response = Refusal::HeadTooLarge.response();
        assert!(response.starts_with("HTTP/1.1 431 "));
        assert!(response.contains("Connection: close\r\n"));
        let body = "request head too large\n";
        assert!(response.ends_with(&format!("\r\n\r\n{body}")));
        assert!(response.contains(&format!("Content-Length: {}\r\n", body.len())));
    }
}
