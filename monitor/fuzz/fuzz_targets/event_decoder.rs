//! Ring-buffer records as the kernel could (mis)write them: decoding must
//! answer an error, never panic or read out of bounds.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| monitor::fuzzing::event_decoder(data));
