//! leakmon kernel probes: fd, thread and process lifecycle of watched processes.
//!
//! Every program checks the in-kernel watched set first and returns at once
//! for other processes. Events go through one ring buffer; a record that does
//! not fit is counted, never silently lost (user space reconciles after it).
#![no_std]
#![no_main]

mod btf;
mod defer;
mod emit;
mod maps;
mod probes;
mod regs;
mod runtime;
