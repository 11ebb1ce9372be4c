use std::{fs::OpenOptions, io::Write as _, os::fd::AsRawFd as _, path::PathBuf};

use super::*;
use crate::http::FAKE_TOKEN;

/// A log of this test process, opened for appending as Python's logging does.
struct Log {
    path: PathBuf,
    file: File,
}

impl Log {
    fn new(name: &str) -> Log {
        let path = std::env::temp_dir().join(format!("leakmon-logscan-{}-{name}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let file = OpenOptions::new().create(true).append(true).open(&path).unwrap();
        Log { path, file }
    }

    fn write(&mut self, text: &str) {
        self.file.write_all(text.as_bytes()).unwrap();
    }

    fn scan(&self, tails: &mut LogTails, budget: u64) -> Scan {
        let files = [(self.file.as_raw_fd() as u32, 1)];
        tails.scan(std::process::id(), files.into_iter(), &mut { budget })
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn token_line() -> String {
    format!("DEBUG headers {{'X-Auth-Token': '{FAKE_TOKEN}'}}\n")
}

#[test]
fn lines_appended_after_the_first_look_are_scanned() {
    let mut log = Log::new("appended");
    log.write(&token_line());
    let mut tails = LogTails::default();
    assert_eq!(
        log.scan(&mut tails, 1 << 20),
        Scan::default(),
        "what was there before is not read"
    );
    log.write("INFO a clean line\n");
    let before = std::fs::metadata(&log.path).unwrap().len();
    log.write(&token_line());
    let scan = log.scan(&mut tails, 1 << 20);
    assert_eq!(
        scan.sightings,
        [Sighting {
            path: log.path.to_string_lossy().into_owned(),
            offset: before,
            kind: SecretKind::AuthHeader,
        }]
    );
    assert_eq!(scan.bytes_scanned, (18 + token_line().len()) as u64);
    assert!(!format!("{scan:?}").contains(FAKE_TOKEN));
    assert_eq!(
        log.scan(&mut tails, 1 << 20),
        Scan::default(),
        "each line is read once"
    );
}

#[test]
fn a_line_written_in_two_parts_is_scanned_once_whole() {
    let mut log = Log::new("parts");
    let mut tails = LogTails::default();
    log.scan(&mut tails, 1 << 20);
    let line = token_line();
    let (head, rest) = line.split_at(30);
    log.write(head);
    assert!(log.scan(&mut tails, 1 << 20).sightings.is_empty());
    log.write(rest);
    let scan = log.scan(&mut tails, 1 << 20);
    assert_eq!(scan.sightings.len(), 1);
    assert_eq!(scan.sightings[0].offset, 0);
}

#[test]
fn a_truncated_log_is_read_again_from_its_start() {
    let mut log = Log::new("truncated");
    let mut tails = LogTails::default();
    log.write("INFO a long clean line, longer than the token line will be ......................\n");
    log.scan(&mut tails, 1 << 20);
    log.file.set_len(0).unwrap();
    log.write(&token_line());
    let scan = log.scan(&mut tails, 1 << 20);
    assert_eq!(scan.sightings.len(), 1);
    assert_eq!(scan.sightings[0].offset, 0);
}

#[test]
fn what_is_appended_beyond_the_budget_is_skipped_and_counted() {
    let mut log = Log::new("budget");
    let mut tails = LogTails::default();
    log.scan(&mut tails, 1 << 20);
    let line = token_line();
    log.write(&line.repeat(10));
    let budget = line.len() as u64 * 3;
    let scan = log.scan(&mut tails, budget);
    assert_eq!(scan.bytes_skipped, line.len() as u64 * 7);
    assert_eq!(scan.bytes_scanned, budget);
    let offsets: Vec<u64> = scan.sightings.iter().map(|s| s.offset).collect();
    let last_three: Vec<u64> = (7..10).map(|i| i * line.len() as u64).collect();
    assert_eq!(offsets, last_three);
}

#[test]
fn files_not_opened_for_appending_are_not_read() {
    let path = std::env::temp_dir().join(format!("leakmon-logscan-{}-plain", std::process::id()));
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)
        .unwrap();
    let mut tails = LogTails::default();
    let files = [(file.as_raw_fd() as u32, 1)];
    tails.scan(std::process::id(), files.into_iter(), &mut (1 << 20));
    file.write_all(token_line().as_bytes()).unwrap();
    let scan = tails.scan(std::process::id(), files.into_iter(), &mut (1 << 20));
    std::fs::remove_file(&path).unwrap();
    assert_eq!(scan, Scan::default());
}

#[test]
fn a_log_no_longer_open_is_read_a_last_time_and_forgotten() {
    let mut log = Log::new("closed");
    let mut tails = LogTails::default();
    log.scan(&mut tails, 1 << 20);
    assert_eq!(tails.tails.len(), 1);
    // Written just before the process closed it (say, to reopen it after rotation).
    log.write(&token_line());
    let scan = tails.scan(std::process::id(), std::iter::empty(), &mut (1 << 20));
    assert_eq!(scan.sightings.len(), 1);
    assert!(tails.tails.is_empty());
}

#[test]
fn a_process_with_many_files_has_them_looked_up_a_few_hundred_at_a_time() {
    let mut log = Log::new("many");
    let others: Vec<File> = (0..LOOKUPS_PER_SCAN)
        .map(|_| OpenOptions::new().append(true).open("/dev/null").unwrap())
        .collect();
    let mut files: Vec<(u32, u64)> = others.iter().map(|f| (f.as_raw_fd() as u32, 1)).collect();
    files.push((log.file.as_raw_fd() as u32, 1));
    let mut tails = LogTails::default();
    let pid = std::process::id();
    tails.scan(pid, files.iter().copied(), &mut (1 << 20));
    assert!(tails.tails.is_empty(), "the log is past this scan's lookups");
    tails.scan(pid, files.iter().copied(), &mut (1 << 20));
    assert_eq!(tails.tails.len(), 1, "the next scan looks it up");
    log.write(&token_line());
    assert_eq!(
        tails
            .scan(pid, files.iter().copied(), &mut (1 << 20))
            .sightings
            .len(),
        1
    );
}
