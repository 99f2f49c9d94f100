//! `fastpatch engine link-extensions`, the boot-time step of fastpatch-extensions.service:
//! the real binary links the booted version's extension images and drops links to others.

use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_fastpatch");

fn link_extensions(config: &Path) -> (bool, String) {
    let out = Command::new(BIN)
        .args(["engine", "link-extensions", "--config"])
        .arg(config)
        .output()
        .expect("running fastpatch");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn link_extensions_links_the_booted_versions_images() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let images = root.join("etc/flatcar/sysext");
    std::fs::create_dir_all(&images).unwrap();
    std::fs::create_dir_all(root.join("usr/lib")).unwrap();
    for v in ["1.0.0", "2.0.0"] {
        std::fs::write(images.join(format!("flatcar-demo-{v}.raw")), v).unwrap();
    }
    let config = dir.path().join("engine.toml");
    std::fs::write(
        &config,
        format!("root = {:?}\n", root.display().to_string()),
    )
    .unwrap();
    let link = root.join("etc/extensions/flatcar-demo.raw");

    for (version, want) in [
        ("2.0.0", Some("2.0.0")),
        ("1.0.0", Some("1.0.0")),
        ("3.0.0", None),
    ] {
        std::fs::write(
            root.join("usr/lib/os-release"),
            format!("ID=flatcar\nVERSION={version}\n"),
        )
        .unwrap();
        let (ok, out) = link_extensions(&config);
        assert!(ok, "{out}");
        match want {
            Some(v) => {
                let target = format!("/etc/flatcar/sysext/flatcar-demo-{v}.raw");
                assert_eq!(std::fs::read_link(&link).unwrap(), Path::new(&target));
                assert!(out.contains(&target), "{out}");
            }
            None => {
                assert!(
                    link.symlink_metadata().is_err(),
                    "a link to another version's image goes"
                );
                assert!(
                    out.contains("no system extension images for 3.0.0"),
                    "{out}"
                );
            }
        }
    }
    // No os-release: a clear error.
    std::fs::remove_file(root.join("usr/lib/os-release")).unwrap();
    let (ok, out) = link_extensions(&config);
    assert!(!ok && out.contains("reading the booted version"), "{out}");
}
