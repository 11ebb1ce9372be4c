//! HTTP/1.x: just enough, and only the whitelisted fields.
pub mod parse;
