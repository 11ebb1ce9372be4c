//! The root-only unix socket between the CLI and the daemon: one JSON
//! request per line, one JSON response per line.
pub mod client;
pub mod protocol;
pub mod server;
