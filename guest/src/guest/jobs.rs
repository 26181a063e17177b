//! The vchan jobs (`send`, `recv`, `echo` in either role, and `http`) on the channel core's
//! bare driver over xen-pv's devices.
//!
//! A peer that closes, or dies (dom0's kernel clears its live byte and sends the event for a
//! killed process), ends the transfer: `send` reports how far it got, `recv` and `echo` end
//! normally. The data path allocates nothing: the buffers and the pattern are made once.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use core::time::Duration;

use vchan::bare::BareVchan;
use vchan::{Address, Error, RingSizes};
use vchan_guest::http::{self, Parsed, Route};
use vchan_guest::sha256::{self, Sha256};
use vchan_guest::{Chan, Pattern, Role};
use xen_pv::pv::vchan::Devices;
use xen_pv::pv::Platform;
use xen_pv::PvError;

type Endpoint<'d> = BareVchan<'d, Devices>;
type VchanError = Error<PvError>;

/// How long a client waits for its server's keys, and a server for its client.
pub(crate) const CONNECT_WAIT: Duration = Duration::from_secs(60);
/// An HTTP connection that sends no request, or takes none of the response, for this long is
/// closed (the next client must not wait for ever behind it).
const HTTP_IDLE: Duration = Duration::from_secs(30);
/// The read buffer of `recv` and `echo`.
const BUF: usize = 64 * 1024;

/// The error and its causes on one line.
fn describe(e: &VchanError) -> String {
    let mut line = e.to_string();
    let mut source = core::error::Error::source(e);
    while let Some(cause) = source {
        line.push_str(": ");
        line.push_str(&cause.to_string());
        source = cause.source();
    }
    line
}

/// Open the job's channel: publish (server) or connect (client), print `READY`, and (a server)
/// wait for the client.
fn open<'d>(
    platform: &Platform,
    devices: &'d Devices,
    chan: &Chan,
    ring: usize,
) -> Result<Endpoint<'d>, String> {
    let address = Address::Path(chan.path.clone());
    let peer = chan.peer;
    match chan.role {
        Role::Server => {
            let sizes = RingSizes {
                server_read: ring,
                server_write: ring,
            };
            let mut end = BareVchan::server(devices, peer, &address, sizes)
                .map_err(|e| format!("serve domain {peer} at {}: {}", chan.path, describe(&e)))?;
            say!(
                platform,
                "vchan: serving domain {peer} at {}: read ring {}, write ring {} bytes",
                chan.path,
                end.read_capacity(),
                end.write_capacity()
            );
            say!(platform, "READY");
            end.set_timeout(Some(CONNECT_WAIT));
            match end.wait_connected() {
                Ok(state) => say!(platform, "vchan: client {state:?}"),
                Err(Error::TimedOut) => {
                    return Err(format!(
                        "no client from domain {peer} within {} s",
                        CONNECT_WAIT.as_secs()
                    ))
                }
                Err(e) => return Err(format!("wait for the client: {}", describe(&e))),
            }
            end.set_timeout(None);
            Ok(end)
        }
        Role::Client => {
            let end =
                BareVchan::client(devices, peer, &address, Some(CONNECT_WAIT)).map_err(|e| {
                    format!(
                        "connect to domain {peer} at {}: {}",
                        chan.path,
                        describe(&e)
                    )
                })?;
            say!(
                platform,
                "vchan: connected to domain {peer} at {}: read ring {}, write ring {} bytes",
                chan.path,
                end.read_capacity(),
                end.write_capacity()
            );
            say!(platform, "READY");
            Ok(end)
        }
    }
}

fn close(end: Endpoint<'_>) -> Result<(), String> {
    end.close().map_err(|e| format!("close: {}", describe(&e)))
}

/// `send`: write `bytes` bytes of the pattern, then close.
pub(crate) fn send(
    platform: &'static Platform,
    chan: &Chan,
    ring: usize,
    bytes: u64,
) -> Result<(), String> {
    let devices = platform.devices();
    let mut end = open(platform, &devices, chan, ring)?;
    let pattern = Pattern::new();
    let started = platform.now();
    let mut sent = 0u64;
    while sent < bytes {
        match end.write(pattern.chunk(sent, bytes - sent)) {
            Ok(n) => sent += n as u64,
            Err(Error::PeerClosed) => {
                return Err(format!(
                    "the peer closed after {sent} of {bytes} bytes were sent"
                ))
            }
            Err(e) => return Err(format!("write after {sent} bytes: {}", describe(&e))),
        }
    }
    close(end)?;
    say!(
        platform,
        "vchan: sent {sent} bytes in {} ms",
        platform.now().since(started).as_millis()
    );
    Ok(())
}

/// `recv`: read until the peer closes; print the count and the SHA-256.
pub(crate) fn recv(platform: &'static Platform, chan: &Chan, ring: usize) -> Result<(), String> {
    let devices = platform.devices();
    let mut end = open(platform, &devices, chan, ring)?;
    let mut buf = vec![0u8; BUF];
    let mut hash = Sha256::new();
    let started = platform.now();
    let mut received = 0u64;
    loop {
        match end.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                hash.update(&buf[..n]);
                received += n as u64;
            }
            Err(e) => return Err(format!("read after {received} bytes: {}", describe(&e))),
        }
    }
    close(end)?;
    say!(
        platform,
        "vchan: received {received} bytes in {} ms",
        platform.now().since(started).as_millis()
    );
    say!(
        platform,
        "RESULT bytes={received} sha256={}",
        sha256::hex(&hash.finish())
    );
    Ok(())
}

/// `echo`: write back everything read until the peer closes.
pub(crate) fn echo(platform: &'static Platform, chan: &Chan, ring: usize) -> Result<(), String> {
    let devices = platform.devices();
    let mut end = open(platform, &devices, chan, ring)?;
    let mut buf = vec![0u8; BUF];
    let mut echoed = 0u64;
    let ended = loop {
        let n = match end.read(&mut buf) {
            Ok(0) => break "the peer closed",
            Ok(n) => n,
            Err(e) => return Err(format!("read after {echoed} bytes: {}", describe(&e))),
        };
        match end.write_all(&buf[..n]) {
            Ok(()) => echoed += n as u64,
            // It closed without reading the rest: what it wanted back, it has.
            Err(Error::PeerClosed) => break "the peer closed before reading all of the echo",
            Err(e) => return Err(format!("write after {echoed} bytes: {}", describe(&e))),
        }
    };
    close(end)?;
    say!(platform, "vchan: echoed {echoed} bytes; {ended}");
    Ok(())
}

/// `http PORT`: serve HTTP/1.1 to dom0 at libxenvchan's path for `port`, one connection after
/// another, for ever (until the domain is destroyed); an error here ends the job.
pub(crate) fn http(platform: &'static Platform, port: u32, ring: usize) -> Result<(), String> {
    let devices = platform.devices();
    let client = xen_types::DomId::DOM0;
    let address = Address::Port(port);
    let sizes = RingSizes {
        server_read: ring,
        server_write: ring,
    };
    let pattern = Pattern::new();
    let mut buf = vec![0u8; http::MAX_HEAD];
    for connection in 1u64.. {
        let mut end = BareVchan::server(&devices, client, &address, sizes)
            .map_err(|e| format!("serve port {port}: {}", describe(&e)))?;
        if connection == 1 {
            say!(
                platform,
                "http: serving dom0 at {}: read ring {}, write ring {} bytes",
                address.server_path(client),
                end.read_capacity(),
                end.write_capacity()
            );
            say!(platform, "READY");
        }
        // Wait for the next client as long as it takes.
        end.wait_connected()
            .map_err(|e| format!("wait for a client: {}", describe(&e)))?;
        // Connected: the next client must find no keys until this one is done.
        end.unpublish()
            .map_err(|e| format!("withdraw the keys: {}", describe(&e)))?;
        end.set_timeout(Some(HTTP_IDLE));
        let outcome = serve_connection(&mut end, &mut buf, &pattern);
        let closed = end.close();
        match outcome {
            Ok(log) => say!(platform, "http: connection {connection}: {log}"),
            Err(e) => say!(platform, "http: connection {connection}: ended: {e}"),
        }
        if let Err(e) = closed {
            say!(
                platform,
                "http: connection {connection}: close: {}",
                describe(&e)
            );
        }
        // Pages the last client still mapped come back once it has unmapped them.
        platform.reap_grants();
    }
    Ok(())
}

/// Serve the requests of one connection until the client closes, asks to close, or fails;
/// a summary of the requests on success.
fn serve_connection(
    end: &mut Endpoint<'_>,
    buf: &mut [u8],
    pattern: &Pattern,
) -> Result<String, String> {
    let mut summary = String::new();
    let mut filled = 0;
    loop {
        // Read until a whole head is there (pipelined bytes stay for the next request).
        let request = loop {
            match http::parse_request(&buf[..filled]) {
                Parsed::Request(request) => break request,
                Parsed::Refused(refusal) => {
                    write_all(end, refusal.response().as_bytes())?;
                    summary.push_str(&format!("{} (refused)", refusal.status()));
                    return Ok(summary);
                }
                Parsed::Partial => {}
            }
            match end.read(&mut buf[filled..]) {
                Ok(0) if filled == 0 => {
                    if summary.is_empty() {
                        summary.push_str("closed with no request");
                    }
                    return Ok(summary);
                }
                Ok(0) => return Err(format!("{summary} then closed mid-request")),
                Ok(n) => filled += n,
                Err(e) => return Err(format!("{summary} read: {}", describe(&e))),
            }
        };
        // Drop the head and any body (GET has none; another method is refused with 405).
        let mut skip = request.head_len as u64 + request.body_len;
        while skip > 0 {
            if filled == 0 {
                match end.read(buf) {
                    Ok(0) => return Err(format!("{summary} closed mid-body")),
                    Ok(n) => filled = n,
                    Err(e) => return Err(format!("{summary} read: {}", describe(&e))),
                }
            }
            let drop = skip.min(filled as u64) as usize;
            buf.copy_within(drop..filled, 0);
            filled -= drop;
            skip -= drop as u64;
        }
        write_all(end, request.response_head().as_bytes())?;
        match request.route {
            Route::Bytes(n) if !request.head_only => {
                let mut sent = 0u64;
                while sent < n {
                    match end.write(pattern.chunk(sent, n - sent)) {
                        Ok(w) => sent += w as u64,
                        Err(e) => {
                            return Err(format!(
                                "{summary} {} after {sent} of {n} body bytes: {}",
                                request.status(),
                                describe(&e)
                            ))
                        }
                    }
                }
            }
            _ => write_all(end, request.error_body())?,
        }
        if !summary.is_empty() {
            summary.push_str(", ");
        }
        summary.push_str(&match request.route {
            Route::Bytes(n) => format!("{} /bytes/{n}", request.status()),
            _ => request.status().to_string(),
        });
        if !request.keep_alive {
            return Ok(summary);
        }
    }
}

fn write_all(end: &mut Endpoint<'_>, bytes: &[u8]) -> Result<(), String> {
    end.write_all(bytes)
        .map_err(|e| format!("write: {}", describe(&e)))
}
