//! One module per hook family.
pub mod fd;
pub mod fdtable;
pub mod floor;
pub mod sock;
pub mod task;
