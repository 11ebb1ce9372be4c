//! Bytes a watched process writes and reads, split anywhere: the parser
//! and the call log must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| monitor::fuzzing::http_parser(data));
