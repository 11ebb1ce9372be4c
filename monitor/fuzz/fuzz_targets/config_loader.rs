//! Any config file text: a config or an error naming what is wrong, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| monitor::fuzzing::config_loader(data));
