//! The shapes an auth token takes in a log line. Only where a secret is and
//! what kind it is leave this module, never its text.

use std::sync::LazyLock;

use regex::bytes::Regex;
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SecretKind {
    /// `X-Auth-Token`, `X-Subject-Token`, `X-Service-Token` or
    /// `Authorization` followed by a raw value (as a header, a dict or JSON).
    AuthHeader,
    /// A Keystone Fernet token (`gAAAAA` and 100+ URL-safe base64
    /// characters) anywhere in a line.
    FernetToken,
}

/// A header name, a separator, an optional scheme, and a value of 16 or more
/// token characters. keystoneauth logs `{SHA256}<hash>` instead of the token
/// and oslo.log masks with `***`: neither is a token character run.
static AUTH_HEADER: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r#"(?i)(?:x-(?:auth|subject|service)-token|authorization)["']?[ \t]*[:=][ \t]*["']?(?:(?:bearer|basic|token|negotiate)[ \t]+)?([A-Za-z0-9_\-+/=.~{}]{16,})"#,
    )
    .expect("a valid pattern")
});

static FERNET: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"gAAAAA[A-Za-z0-9_\-]{100,}").expect("a valid pattern"));

/// Where secrets are in `text` (whole lines): the offset of each line that
/// holds one, once per line and kind, in order.
pub fn find(text: &[u8]) -> Vec<(usize, SecretKind)> {
    let line_start = |at: usize| text[..at].iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let mut found = Vec::new();
    for captures in AUTH_HEADER.captures_iter(text) {
        let value = captures.get(1).expect("the value group").as_bytes();
        if value.len() >= 4 && value[..4].eq_ignore_ascii_case(b"{sha") {
            continue;
        }
        found.push((
            line_start(captures.get(0).expect("a match").start()),
            SecretKind::AuthHeader,
        ));
    }
    for m in FERNET.find_iter(text) {
        found.push((line_start(m.start()), SecretKind::FernetToken));
    }
    found.sort_unstable();
    found.dedup();
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::http::FAKE_TOKEN;

    /// Spelt apart so that a committed line carries no raw-looking header
    /// (the xtask guard on committed tokens).
    const H: &str = "X-Auth-Token";

    fn kinds(line: &str) -> Vec<SecretKind> {
        find(line.as_bytes()).into_iter().map(|(_, kind)| kind).collect()
    }

    fn fernet() -> String {
        // The shape of a Fernet token (version byte 0x80, then base64url), not one.
        format!("gAAAAABn{}", "x7Y-_q".repeat(30))
    }

    #[test]
    fn a_raw_token_in_any_logged_form_is_found() {
        for line in [
            "REQ: curl -g -i -X GET http://ironic:6385/v1/nodes -H \"X-Auth-Token: FAKE-TOKEN-leakmon-test-not-a-credential\"".to_string(),
            "sending headers {'X-Auth-Token': 'FAKE-TOKEN-leakmon-test-not-a-credential', 'Accept': 'application/json'}".to_string(),
            "{\"headers\": {\"x-auth-token\": \"FAKE-TOKEN-leakmon-test-not-a-credential\"}}".to_string(),
            format!("X-Subject-Token={FAKE_TOKEN}"),
            format!("Authorization: Bearer {FAKE_TOKEN}"),
            format!("'authorization': 'Basic {FAKE_TOKEN}'"),
        ] {
            assert_eq!(kinds(&line), [SecretKind::AuthHeader], "{line}");
        }
        let bare = format!("token issued: {} for project demo", fernet());
        assert_eq!(kinds(&bare), [SecretKind::FernetToken]);
        let both = format!("{H}: {}", fernet());
        assert_eq!(kinds(&both), [SecretKind::AuthHeader, SecretKind::FernetToken]);
    }

    #[test]
    fn hashed_masked_and_placeholder_tokens_and_prose_are_not_secrets() {
        for line in [
            // keystoneauth's own request log.
            format!(
                "REQ: curl -g -i -X GET http://ironic:6385/v1/nodes -H \"{H}: {{SHA256}}4f3c2b1a09e8d7c6b5a4\""
            ),
            // oslo.utils mask_password.
            format!("sending headers {{'{H}': '***', 'Accept': 'application/json'}}"),
            format!("{H}: notused"),
            format!("Authorization header missing; retrying without {H}"),
            "Authorization: <redacted>".to_string(),
            "gAAAAAB-too-short-to-be-a-token".to_string(),
        ] {
            assert!(kinds(&line).is_empty(), "{line}");
        }
    }

    #[test]
    fn each_line_is_reported_once_at_its_start() {
        let text = "first line\nX-Auth-Token: FAKE-TOKEN-leakmon-test-not-a-credential and X-Auth-Token: FAKE-TOKEN-leakmon-test-not-a-credential\nlast\n";
        assert_eq!(find(text.as_bytes()), [(11, SecretKind::AuthHeader)]);
        // A value never spans lines: the separator's blanks are spaces and tabs.
        assert!(find(format!("{H}:\n{FAKE_TOKEN}\n").as_bytes()).is_empty());
    }
}

/// A benchmark, not a test (docs/benchmarks.md): `cargo test --release -p
/// monitor logscan -- --ignored --nocapture` prints how fast lines shaped
/// like nova-compute's debug log are scanned.
#[cfg(test)]
mod throughput {
    #[test]
    #[ignore]
    fn scan_throughput_on_a_nova_debug_log() {
        let header = "X-Auth-Token";
        let lines = format!(
            "2026-12-04 20:51:39.834 14302 DEBUG keystoneauth.session [None req-8396ae0a-f7d9-4c8e-8874-474df556b36c \
             - - - - - -] REQ: curl -g -i -X GET \"http://127.0.0.14:6385/v1/nodes?fields=uuid%2Cpower_state\" \
             -H \"Accept: application/json\" -H \"User-Agent: openstacksdk/4.1.0 keystoneauth1/5.8.0\" \
             -H \"{header}: {{SHA256}}0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\" \
             -H \"X-OpenStack-Ironic-API-Version: 1.46\" _http_log_request keystoneauth1/session.py:517\n\
             2026-12-04 20:51:39.900 14302 DEBUG oslo_concurrency.lockutils [None req-8396ae0a] Acquiring lock \
             \"compute_resources\" by \"nova.compute.resource_tracker.ResourceTracker._update_available_resource\" \
             inner oslo_concurrency/lockutils.py:404\n"
        );
        let text = lines.repeat(4 * 1024 * 1024 / lines.len());
        let rounds = 20;
        let start = std::time::Instant::now();
        for _ in 0..rounds {
            assert!(super::find(text.as_bytes()).is_empty());
        }
        let seconds = start.elapsed().as_secs_f64() / f64::from(rounds);
        println!(
            "{} bytes of nova-like debug log scanned in {:.2} ms: {:.0} MiB/s",
            text.len(),
            seconds * 1e3,
            text.len() as f64 / seconds / 1048576.0
        );
    }
}
