//! Any byte stream as TCP input: record-marking reassembly must stay
//! within its bound and end in a record or a named error, never panic.
#![no_main]

use cpushare_buyer::share::rpc::read_record;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut input = data;
    let mut buf = Vec::new();
    while read_record(&mut input, &mut buf, 4096).is_ok() {
        assert!(buf.len() <= 4096);
    }
});
