//! Any bytes from the network: decoding a frame into each message type
//! must return a value or a named error, never panic or over-allocate.
#![no_main]

use cpushare_proto::frame;
use cpushare_proto::msg::{BrokerMsg, Request, Response, SellerMsg};
use cpushare_proto::sandbox::{FromSandbox, ToSandbox};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = frame::decode::<Request>(data);
    let _ = frame::decode::<Response>(data);
    let _ = frame::decode::<SellerMsg>(data);
    let _ = frame::decode::<BrokerMsg>(data);
    // What a (possibly compromised) sandbox child sends its daemon, and back.
    let _ = frame::decode::<FromSandbox>(data);
    let _ = frame::decode::<ToSandbox>(data);
});
