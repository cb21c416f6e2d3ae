#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| certbound::fuzzing::forward_auth(data));
