//! A guard on what the repository commits: every X-Auth-Token header in
//! a tracked file (tests, workloads, the fuzz corpus), as a header or as a
//! quoted key (how Python logs a headers dict, or JSON does), carries the
//! tests' obviously fake token, written out (not an interpolated constant,
//! so that a plain `git grep` shows the value). The one test of
//! keystoneauth's public no-auth placeholder spells the header name apart.

#[cfg(test)]
mod tests {
    use std::process::Command;

    /// Split so that this file does not match itself.
    const HEADER: &str = concat!("x-auth", "-token");
    /// What may follow the header's name on the same line.
    const ALLOWED: [&str; 1] = ["FAKE-TOKEN-leakmon-test-not-a-credential"];

    /// What follows the header's name and its separator (`:` or `=`, after
    /// an optional closing quote), if the line has one.
    fn header_value<'a>(line: &'a str, lower: &str) -> Option<&'a str> {
        let at = lower.find(HEADER)? + HEADER.len();
        // Quotes as they stand in a source string too (`\"`).
        let rest = line[at..].trim_start_matches(['\'', '"', '\\']).trim_start();
        rest.strip_prefix([':', '='])
    }

    #[test]
    fn the_header_is_found_as_a_header_and_as_a_quoted_key() {
        fn value(line: &str) -> Option<&str> {
            header_value(line, &line.to_ascii_lowercase())
        }
        assert_eq!(value(concat!("X-Auth", "-Token: abc")), Some(" abc"));
        assert_eq!(value(concat!("{'X-Auth", "-Token': 'abc'}")), Some(" 'abc'}"));
        assert_eq!(
            value(concat!(r#""{\"x-auth"#, r#"-token\": \"abc\"}""#)),
            Some(r#" \"abc\"}""#)
        );
        assert_eq!(value(concat!("the `X-Auth", "-Token` header")), None);
    }

    #[test]
    fn every_committed_auth_token_is_the_fake_one() {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
        let listed = Command::new("git")
            .args(["-C", root, "ls-files", "-z"])
            .output()
            .expect("git ls-files");
        assert!(listed.status.success(), "git ls-files failed");
        let mut offending = Vec::new();
        for path in listed.stdout.split(|&b| b == 0).filter(|p| !p.is_empty()) {
            let path = String::from_utf8_lossy(path);
            let Ok(bytes) = std::fs::read(format!("{root}/{path}")) else {
                continue;
            };
            let text = String::from_utf8_lossy(&bytes);
            for (number, line) in text.lines().enumerate() {
                let lower = line.to_ascii_lowercase();
                let Some(value) = header_value(line, &lower) else {
                    continue;
                };
                if !ALLOWED.iter().any(|allowed| value.contains(allowed)) {
                    offending.push(format!("{path}:{}: {}", number + 1, line.trim()));
                }
            }
        }
        assert!(
            offending.is_empty(),
            "auth tokens that are not the fake one:\n{}",
            offending.join("\n")
        );
    }
}
