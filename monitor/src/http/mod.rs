//! HTTP/1.x: just enough, and only the whitelisted fields.
pub mod parse;

/// The token value the unit tests send: obviously fake, and what they look
/// for in every parsed, stored or rendered result to prove it is dropped.
#[cfg(test)]
pub const FAKE_TOKEN: &str = "FAKE-TOKEN-leakmon-test-not-a-credential";
