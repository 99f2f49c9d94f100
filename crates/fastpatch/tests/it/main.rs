//! The fastpatch binary's integration tests, one binary: its subcommands run as a user runs
//! them (boot, cgpt, image, engine, extensions, locksmith), against real disks images and servers.

mod boot_cli;
mod cgpt_cli;
mod engine_cli;
mod extensions_cli;
mod image_cli;
mod locksmith_cli;
