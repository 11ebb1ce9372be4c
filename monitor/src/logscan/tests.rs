use std::{fs::OpenOptions, io::Write as _, os::fd::AsRawFd as _, path::PathBuf};

use super::*;
use crate::http::FAKE_TOKEN;

/// More than any test writes in one go.
const ENOUGH: u64 = 1 << 20;

/// A file of this test process and the daemon's tails of it.
struct Log {
    path: PathBuf,
    file: File,
    tails: LogTails,
}

impl Log {
    /// Opened for appending, as Python's logging opens a log.
    fn new(name: &str) -> Log {
        Log::open(name, OpenOptions::new().create(true).append(true))
    }

    /// As [`Log::new`], and seen once by the daemon (which reads on from there).
    fn seen(name: &str) -> Log {
        let mut log = Log::new(name);
        log.scan();
        log
    }

    fn open(name: &str, options: &OpenOptions) -> Log {
        let path = std::env::temp_dir().join(format!("leakmon-logscan-{}-{name}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let file = options.open(&path).unwrap();
        Log {
            path,
            file,
            tails: LogTails::default(),
        }
    }

    fn fd(&self) -> (u32, u64) {
        (self.file.as_raw_fd() as u32, 1)
    }

    fn write(&mut self, text: &str) {
        self.file.write_all(text.as_bytes()).unwrap();
    }

    fn scan(&mut self) -> Scan {
        self.scan_within(ENOUGH)
    }

    fn scan_within(&mut self, budget: u64) -> Scan {
        self.scan_of(&[self.fd()], budget)
    }

    /// A scan of the process holding `files` open (not necessarily this one).
    fn scan_of(&mut self, files: &[(u32, u64)], budget: u64) -> Scan {
        let pid = std::process::id();
        self.tails.scan(pid, files.iter().copied(), &mut { budget })
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn token_line() -> String {
    "DEBUG headers {'X-Auth-Token': 'FAKE-TOKEN-leakmon-test-not-a-credential'}\n".to_string()
}

#[test]
fn lines_appended_after_the_first_look_are_scanned() {
    let mut log = Log::new("appended");
    log.write(&token_line());
    assert_eq!(log.scan(), Scan::default(), "what was there before is not read");
    log.write("INFO a clean line\n");
    let before = std::fs::metadata(&log.path).unwrap().len();
    log.write(&token_line());
    let scan = log.scan();
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
    assert_eq!(log.scan(), Scan::default(), "each line is read once");
}

#[test]
fn a_line_written_in_two_parts_is_scanned_once_whole() {
    let mut log = Log::seen("parts");
    let line = token_line();
    let (head, rest) = line.split_at(30);
    log.write(head);
    assert!(log.scan().sightings.is_empty());
    log.write(rest);
    let scan = log.scan();
    assert_eq!(scan.sightings.len(), 1);
    assert_eq!(scan.sightings[0].offset, 0);
}

#[test]
fn a_truncated_log_is_read_again_from_its_start() {
    let mut log = Log::new("truncated");
    log.write("INFO a long clean line, longer than the token line will be ......................\n");
    log.scan();
    log.file.set_len(0).unwrap();
    log.write(&token_line());
    let scan = log.scan();
    assert_eq!(scan.sightings.len(), 1);
    assert_eq!(scan.sightings[0].offset, 0);
}

#[test]
fn what_is_appended_beyond_the_budget_is_skipped_and_counted() {
    let mut log = Log::seen("budget");
    let line = token_line();
    log.write(&line.repeat(10));
    let budget = line.len() as u64 * 3;
    let scan = log.scan_within(budget);
    assert_eq!(scan.bytes_skipped, line.len() as u64 * 7);
    assert_eq!(scan.bytes_scanned, budget);
    let offsets: Vec<u64> = scan.sightings.iter().map(|s| s.offset).collect();
    let last_three: Vec<u64> = (7..10).map(|i| i * line.len() as u64).collect();
    assert_eq!(offsets, last_three);
}

#[test]
fn files_not_opened_for_appending_are_not_read() {
    let mut log = Log::open(
        "plain",
        OpenOptions::new().create(true).truncate(true).write(true),
    );
    log.scan();
    log.write(&token_line());
    assert_eq!(log.scan(), Scan::default());
}

#[test]
fn a_log_no_longer_open_is_read_a_last_time_and_forgotten() {
    let mut log = Log::seen("closed");
    assert_eq!(log.tails.tails.len(), 1);
    // Written just before the process closed it (say, to reopen it after rotation).
    log.write(&token_line());
    let scan = log.scan_of(&[], ENOUGH);
    assert_eq!(scan.sightings.len(), 1);
    assert!(log.tails.tails.is_empty());
}

#[test]
fn a_process_with_many_files_has_them_looked_up_a_few_hundred_at_a_time() {
    let mut log = Log::new("many");
    let others: Vec<File> = (0..LOOKUPS_PER_SCAN)
        .map(|_| OpenOptions::new().append(true).open("/dev/null").unwrap())
        .collect();
    let mut files: Vec<(u32, u64)> = others.iter().map(|f| (f.as_raw_fd() as u32, 1)).collect();
    files.push(log.fd());
    log.scan_of(&files, ENOUGH);
    assert!(log.tails.tails.is_empty(), "the log is past this scan's lookups");
    log.scan_of(&files, ENOUGH);
    assert_eq!(log.tails.tails.len(), 1, "the next scan looks it up");
    log.write(&token_line());
    assert_eq!(log.scan_of(&files, ENOUGH).sightings.len(), 1);
}
