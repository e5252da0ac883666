//! Arbitrary bytes through the CONNECT head parser: it must never panic, and whatever it accepts
//! must respect the limits (the same property the proptest in the normal suite checks).
#![no_main]

use fyntr::proto::{self, connect, Parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match proto::parse(data) {
        Ok(Parse::Complete { request, consumed }) => {
            assert!(consumed <= connect::MAX_HEAD && consumed <= data.len());
            assert_ne!(request.target.port, 0);
        }
        Ok(Parse::Partial) => assert!(data.len() <= connect::MAX_HEAD),
        Err(_) => {}
    }
});
