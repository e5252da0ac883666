//! Arbitrary bytes through the SOCKS5 greeting and request parsers: they must never panic, and
//! a request they accept uses no more bytes than it was given nor than the longest request.
#![no_main]

use fyntr::proto::socks5::{self, Parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Parse::Complete { consumed, .. }) = socks5::parse_greeting(data) {
        assert!(consumed <= data.len() && consumed <= 2 + 255);
    }
    if let Ok(Parse::Complete { value, consumed }) = socks5::parse_request(data) {
        assert!(consumed <= data.len() && consumed <= 4 + 1 + 255 + 2);
        assert_ne!(value.port, 0);
    }
});
