//! What each fuzz target of monitor/fuzz runs on one input. The targets call
//! these, and the unit suite replays the kept corpus through them: CI
//! catches a regression any kept input reaches without a sanitizer build
//! (`cargo xtask fuzz` searches for new inputs).

use crate::calls::{CallLog, Origin, StreamKey};

/// What a fuzz target runs on one input.
pub type Body = fn(&[u8]);

/// The fuzz targets, by name, as in monitor/fuzz/Cargo.toml.
pub const TARGETS: [(&str, Body); 3] = [
    ("http_parser", http_parser),
    ("event_decoder", event_decoder),
    ("config_loader", config_loader),
];

/// Bytes a watched process writes and reads, split anywhere: the parser and
/// the call log must never panic.
pub fn http_parser(data: &[u8]) {
    let _ = crate::http::parse::requests(data);
    let _ = crate::http::parse::response(data);
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
}

/// A ring-buffer record as the kernel could (mis)write it: an error, never a
/// panic or a read out of bounds.
pub fn event_decoder(data: &[u8]) {
    let _ = crate::engine::decode::decode(data);
}

/// Any config file text: a config or an error naming what is wrong.
pub fn config_loader(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::config::Config::parse(text);
    }
}

#[cfg(test)]
mod tests {
    use std::{panic, path::Path};

    use super::TARGETS;

    #[test]
    fn every_kept_fuzz_input_runs_without_a_panic() {
        let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
        let mut failed = Vec::new();
        for (target, run) in TARGETS {
            let dir = corpus.join(target);
            let inputs: Vec<_> = std::fs::read_dir(&dir)
                .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
                .map(|entry| entry.unwrap().path())
                .collect();
            assert!(inputs.len() >= 10, "{target}: only {} kept inputs", inputs.len());
            for input in inputs {
                let data = std::fs::read(&input).unwrap();
                if panic::catch_unwind(|| run(&data)).is_err() {
                    failed.push(input.display().to_string());
                }
            }
        }
        assert!(failed.is_empty(), "inputs that panicked: {failed:?}");
    }
}
