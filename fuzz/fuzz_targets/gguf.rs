#![no_main]
//! Fuzzes evalmesh_tests::fuzz::gguf (see there for what it checks).

libfuzzer_sys::fuzz_target!(|data: &[u8]| evalmesh_tests::fuzz::gguf(data));
