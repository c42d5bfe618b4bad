//! The bundle parser on arbitrary bytes: it must return an error, never
//! panic, and what it accepts must re-encode to the same bytes.
#![no_main]

use cpushare_proto::bundle::{self, Entry, Packer, MAX_BUNDLE};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(entries) = bundle::parse(data, MAX_BUNDLE) else {
        return;
    };
    let mut p = Packer::new(MAX_BUNDLE);
    for e in &entries {
        match e {
            Entry::Dir { path } => p.dir(path).expect("accepted path re-packs"),
            Entry::File { path, data } => p.file(path, data).expect("accepted file re-packs"),
        }
    }
    assert_eq!(p.finish(), data);
});
