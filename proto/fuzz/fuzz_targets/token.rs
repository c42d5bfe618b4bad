//! Token text pasted by a person: decode must never panic.
#![no_main]

use cpushare_proto::token::Token;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Token::decode(text);
    }
});
