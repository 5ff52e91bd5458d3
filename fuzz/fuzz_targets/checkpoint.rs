#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| hpff_fuzz::checkpoint(data));
