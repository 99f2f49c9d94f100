//! Integration tests of the image builder: real `mkfs.ext4`, `veritysetup`, `debugfs` and
//! `sgdisk` on the files it makes (one test binary; fixtures in `tree`).

mod build;
mod refusals;
mod tree;
