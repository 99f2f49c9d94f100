//! fastpatch-omaha's integration tests, one binary: the protocol against Flatcar's and
//! Nebraska's fixtures, and parsers that never panic.

mod no_panic;
mod protocol;
mod responses;
