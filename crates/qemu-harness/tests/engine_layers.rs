//! The engine config layers the initramfs /init writes, loaded by the engine's own config
//! loader in the order /init passes them (no QEMU needed): a typo or a key the engine does not
//! know would otherwise only show up as a guest that never updates.

use std::path::PathBuf;
use std::time::Duration;

use fastpatch_boot_init::{engine_launch, ENGINE_INSTALL_STATE_DIR, ENGINE_STATE_FILE};
use fastpatch_disk::{USR_A_INDEX, USR_B_INDEX};
use fastpatch_engine::daemon::config::{BootedSlot, DaemonConfig};
use fastpatch_qemu_harness::TEST_ENGINE_LAYER;

/// Writes the four layers under `dir` and loads them as the guest's engine would.
fn load(slot_index: u32, vendor: &str, admin: &str) -> DaemonConfig {
    let dir = tempfile::tempdir().unwrap();
    let launch = engine_launch("/usr/bin/fastpatch", slot_index, "/dev/vda").unwrap();
    let defaults = dir.path().join("engine-defaults.toml");
    let vendor_dir = dir.path().join("vendor.d");
    let admin_dir = dir.path().join("admin.d");
    let boot = dir.path().join("engine-boot.toml");
    std::fs::create_dir(&vendor_dir).unwrap();
    std::fs::create_dir(&admin_dir).unwrap();
    std::fs::write(&defaults, &launch.defaults).unwrap();
    std::fs::write(vendor_dir.join("10-vendor.toml"), vendor).unwrap();
    std::fs::write(admin_dir.join("50-machine.toml"), admin).unwrap();
    std::fs::write(&boot, &launch.boot).unwrap();
    // The same order as the --config arguments /init passes.
    assert_eq!(launch.args.iter().filter(|a| *a == "--config").count(), 4);
    DaemonConfig::load_layers(&[defaults, vendor_dir, admin_dir, boot])
        .unwrap_or_else(|e| panic!("the engine refuses the init's layers: {e}"))
}

#[test]
fn the_inits_layers_configure_the_engine_as_the_whole_os() {
    let cfg = load(USR_B_INDEX, "", TEST_ENGINE_LAYER);
    assert_eq!(cfg.booted_slot, BootedSlot::B);
    assert_eq!(cfg.disk, Some(PathBuf::from("/dev/vda")));
    assert_eq!(cfg.root, PathBuf::from("/"));
    assert!(!cfg.dbus, "no D-Bus in the guest");
    assert!(cfg.reboot_after_update, "no locksmithd in the guest");
    assert_eq!(cfg.reboot_command, ["/init", "reboot"]);
    assert_eq!(cfg.health.commands, [vec!["/init", "health"]]);
    assert_eq!(cfg.state_file, PathBuf::from(ENGINE_STATE_FILE));
    assert_eq!(
        cfg.install_state_dir,
        PathBuf::from(ENGINE_INSTALL_STATE_DIR)
    );
    assert_eq!(
        cfg.trusted_keys,
        [PathBuf::from(
            "/usr/share/update_engine/update-payload-key.pub.pem"
        )]
    );
    // The test machine's admin layer.
    assert_eq!(cfg.schedule.initial, Duration::from_secs(3));
    assert_eq!(cfg.schedule.initial_fuzz, Duration::ZERO);
    assert_eq!(cfg.health.timeout_secs, 5);
}

#[test]
fn vendor_and_admin_layers_override_the_defaults_but_not_the_boot_facts() {
    let vendor = "[health]\ncommands = [[\"/usr/bin/true\"]]\n";
    // An admin layer cannot move the machine to another slot or disk.
    let admin = "booted_slot = \"b\"\ndisk = \"/dev/sdz\"\nreboot_after_update = false\n";
    let cfg = load(USR_A_INDEX, vendor, admin);
    assert_eq!(cfg.health.commands, [vec!["/usr/bin/true"]]);
    assert!(!cfg.reboot_after_update);
    assert_eq!(cfg.booted_slot, BootedSlot::A);
    assert_eq!(cfg.disk, Some(PathBuf::from("/dev/vda")));
}
