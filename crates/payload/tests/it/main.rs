//! fastpatch-payload's integration tests, one binary (the fail-point tests are their own,
//! `failpoints.rs`): CrAU payloads and deltas made, signed, served over HTTP and installed.

#[path = "../common/mod.rs"]
mod shared;

mod common;

mod cli;
mod delta;
mod delta_real;
mod fuzz_parser;
mod http_resume;
mod install;
mod install_resume;
