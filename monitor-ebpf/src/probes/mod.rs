//! One module per hook family.
pub mod fd;
pub mod floor;
pub mod task;
