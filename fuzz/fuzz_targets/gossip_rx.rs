#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    vxnet_fuzz::gossip_rx(data);
});
