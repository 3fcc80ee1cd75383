#![no_main]
use libfuzzer_sys::fuzz_target;

/// Lets the target check that a refused frame length allocated nothing.
#[global_allocator]
static ALLOC: vxnet_fuzz::alloc_probe::PeakAlloc = vxnet_fuzz::alloc_probe::PeakAlloc;

fuzz_target!(|data: &[u8]| {
    vxnet_fuzz::mgmt_frame(data);
});
