//! conduit-vchan's endpoint parser on any string: it never panics, and whatever it accepts prints
//! back to a name that parses to the same endpoint.
#![no_main]

use conduit_vchan::Endpoint;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match text.parse::<Endpoint>() {
        Ok(endpoint) => {
            let printed = endpoint.to_string();
            let again: Endpoint = printed
                .parse()
                .unwrap_or_else(|e| panic!("{text:?} printed as {printed:?}, which fails: {e}"));
            assert_eq!(
                again, endpoint,
                "{text:?} -> {printed:?} is another endpoint"
            );
        }
        Err(e) => {
            // The error is one line that names the input.
            let line = e.to_string();
            assert!(!line.contains('\n'), "{line:?}");
        }
    }
});
