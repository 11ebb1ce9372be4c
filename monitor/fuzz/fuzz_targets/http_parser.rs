//! Bytes a watched process writes and reads, split anywhere: the parser
//! and the call log must never panic, and never keep a token value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use monitor::calls::{CallLog, Origin, StreamKey};

fuzz_target!(|data: &[u8]| {
    let _ = monitor::http::parse::requests(data);
    let _ = monitor::http::parse::response(data);
    // The same bytes as a conversation on one stream, cut at a point the input chooses.
    let cut = data.first().map_or(0, |b| *b as usize % (data.len().max(1)));
    let (first, rest) = data.split_at(cut);
    let mut log = CallLog::default();
    let origin = Origin {
        tid: 1,
        fd: Some(3),
        inode: 7,
        tls: false,
        endpoint: None,
        ts_ns: 1,
    };
    let key = StreamKey::Fd(3);
    log.written(key, first, false, origin);
    log.written(key, rest, true, origin);
    log.read(key, rest, 2);
    log.closed(key, 3);
});
