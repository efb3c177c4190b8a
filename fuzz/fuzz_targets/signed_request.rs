#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| cardvm::fuzzing::signed_request(data));
