//! Arbitrary inner packets and Ethernet frames through the router helpers.
#![no_main]

use cpushare_vnet::router::arp::EthernetAdapter;
use cpushare_vnet::router::{egress, ipv4, mtu, Subnet};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = ipv4::Header::parse(data);
    let mut out = Vec::new();
    let _ = mtu::fragmentation_needed(data, 1340, &mut out);
    let mut copy = data.to_vec();
    let _ = mtu::clamp_mss(&mut copy, 1300);
    let subnet: Subnet = "10.77.0.0/16".parse().unwrap();
    let me = std::net::Ipv4Addr::new(10, 77, 0, 5);
    if let Ok(dst) = egress::classify(subnet, me, data) {
        assert!(subnet.contains(dst), "egress let {dst} out of the subnet");
    }
    let mut ad = EthernetAdapter::new(subnet);
    let _ = ad.handle_frame(data, &mut out);
});
