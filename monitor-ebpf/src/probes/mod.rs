//! One module per hook family.
pub mod fd;
pub mod fdtable;
pub mod floor;
pub mod http;
pub mod sock;
pub mod task;
pub mod tls;
