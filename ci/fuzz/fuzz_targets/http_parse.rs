//! Arbitrary bytes through the plain HTTP request and response parsers and the chunked-body
//! follower: they must never panic, never use more bytes than given, and a head they accept is
//! within the CONNECT head limits.
#![no_main]

use fyntr::proto::{
    connect,
    http::{self, ChunkedBody, Parse},
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Parse::Complete { consumed, .. }) = http::parse_request(data) {
        assert!(consumed <= data.len() && consumed <= connect::MAX_HEAD);
    }
    if let Ok(Parse::Complete { consumed, .. }) = http::parse_response(data, false) {
        assert!(consumed <= data.len() && consumed <= connect::MAX_HEAD);
    }
    let mut chunked = ChunkedBody::default();
    if let Ok(used) = chunked.advance(data) {
        assert!(used <= data.len());
    }
});
