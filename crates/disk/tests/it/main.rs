//! fastpatch-disk's integration tests, one binary (the fail-point power cuts are their own,
//! `power_cut.rs`): GPT images checked against sgdisk, corrupted, and walked through A/B updates.

#[path = "../support/mod.rs"]
mod shared;

mod support;

mod ab_walk;
mod corruption;
mod sgdisk_crosscheck;
