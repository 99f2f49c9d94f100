//! update.conf (read by the engine and locksmithd at every check): any bytes in the admin's
//! file load or fail with an error, never a panic; the value a key gets is the last one the
//! file sets.
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use fastpatch_update_conf::{parse, UpdateConf};
use libfuzzer_sys::fuzz_target;

fn root() -> &'static Path {
    static ROOT: OnceLock<tempfile::TempDir> = OnceLock::new();
    ROOT.get_or_init(|| {
        // On tmpfs when there is one: the repair path fsyncs, and a disk's fsync would make
        // this target a hundred times slower.
        let dir = tempfile::tempdir_in("/dev/shm")
            .or_else(|_| tempfile::tempdir())
            .expect("temp dir");
        std::fs::create_dir_all(dir.path().join("etc/flatcar")).expect("etc/flatcar");
        dir
    })
    .path()
}

fuzz_target!(|data: &[u8]| {
    let path = root().join("etc/flatcar/update.conf");
    std::fs::write(&path, data).expect("write update.conf");
    let loaded = UpdateConf::load(root());
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let conf = loaded.expect("a UTF-8 file that exists loads");
    let pairs = parse(text, &path);
    for (key, _) in &pairs {
        let last = pairs
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str());
        assert_eq!(conf.get(key), last, "key {key:?}");
    }
    let _ = (
        conf.group(),
        conf.server(),
        conf.machine_alias(),
        conf.download_credentials(),
    );
});
