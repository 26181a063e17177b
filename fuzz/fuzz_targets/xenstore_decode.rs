//! The xenstore wire decoder on any bytes, as a daemon reads them from a guest: it never panics,
//! never claims more bytes than it was given, and whatever message it accepts encodes back to
//! the same bytes and parses (or is refused) as a request without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xenstore::wire::{decode, Decoded, Request, HEADER_LEN};

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    // A stream of messages, as the daemon decodes them one after another.
    while let Ok(Decoded::Message(message, used)) = decode(rest) {
        assert!(
            used >= HEADER_LEN && used <= rest.len(),
            "used {used} of {}",
            rest.len()
        );
        let mut encoded = message.header().encode().to_vec();
        encoded.extend_from_slice(&message.payload);
        assert_eq!(
            encoded,
            rest[..used],
            "the message does not encode back to its bytes"
        );
        let _ = Request::parse(&message);
        rest = &rest[used..];
    }
});
