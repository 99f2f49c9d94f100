//! System extensions updated with the OS, as Flatcar does it: the extensions a machine has
//! enabled (`/usr/share/flatcar/enabled-sysext.conf`, then `/etc/flatcar/enabled-sysext.conf`
//! where `-NAME` disables a vendor one; and `oem-<ID>` from oem-release) are fetched with
//! every update, verified (size, SHA-256 and the CrAU signature with the trusted keys),
//! unpacked and placed for the new version before its slot is staged:
//! `/etc/flatcar/sysext/flatcar-<NAME>-<VERSION>.raw`, `/oem/sysext/oem-<ID>-<VERSION>.raw`
//! (`/etc/flatcar/oem-sysext/` when there is no /oem). At boot, [`activate`] links the booted
//! version's images into `/etc/extensions/`; after a good boot, [`prune`] removes the images
//! of every version but the running one and the fallback's.
//!
//! Durability: an image takes its final name only after it was verified and synced (written
//! as `NAME.raw.tmp`, synced by the installer, renamed, directory synced), so an existing
//! final name is a complete image and a rerun skips it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use fastpatch_payload::install::{self, FileRange, InstallOptions, InstallTarget};
use rsa::RsaPublicKey;

use fastpatch_omaha::{OfferedFile, UpdateOffer};

pub const VENDOR_ENABLED: &str = "usr/share/flatcar/enabled-sysext.conf";
pub const ADMIN_ENABLED: &str = "etc/flatcar/enabled-sysext.conf";
pub const SYSEXT_DIR: &str = "etc/flatcar/sysext";
pub const OEM_DIR: &str = "oem";
pub const OEM_SYSEXT_DIR: &str = "oem/sysext";
pub const OEM_FALLBACK_DIR: &str = "etc/flatcar/oem-sysext";
pub const LINK_DIR: &str = "etc/extensions";
const OEM_RELEASE: [&str; 2] = ["oem/oem-release", "usr/share/oem/oem-release"];
/// Downloads wait here (beside the images, so the rename stays on one file system).
const DOWNLOADS: &str = ".fastpatch-downloads";

#[derive(Debug, thiserror::Error)]
pub enum ExtensionError {
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("extension {0} is enabled on this machine but the update does not offer it")]
    NotOffered(String),
    #[error("extension {name}: {error}")]
    Fetch {
        name: String,
        error: fastpatch_fetch::FetchError,
    },
    #[error("extension {name}: {error}")]
    Unpack {
        name: String,
        error: fastpatch_payload::PayloadError,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ExtensionError + '_ {
    move |error| ExtensionError::Io {
        path: path.to_owned(),
        error,
    }
}

/// Where a machine keeps its extension images, under `root` (`/` in production).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub root: PathBuf,
    /// The Flatcar extensions' directory as the machine sees it (default
    /// `/etc/flatcar/sysext`).
    pub sysext_dir: PathBuf,
}

impl Layout {
    pub fn new(root: &Path, sysext_dir: &Path) -> Layout {
        Layout {
            root: root.to_owned(),
            sysext_dir: sysext_dir.to_owned(),
        }
    }

    /// Flatcar's directories under `root`.
    pub fn flatcar(root: &Path) -> Layout {
        Layout::new(root, &Path::new("/").join(SYSEXT_DIR))
    }

    /// A machine path under `root`.
    fn under(&self, machine_path: &Path) -> PathBuf {
        self.root
            .join(machine_path.strip_prefix("/").unwrap_or(machine_path))
    }

    fn image_dirs(&self) -> [PathBuf; 3] {
        [
            self.under(&self.sysext_dir),
            self.root.join(OEM_SYSEXT_DIR),
            self.root.join(OEM_FALLBACK_DIR),
        ]
    }
}

/// An extension this machine wants with every version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enabled {
    /// `flatcar-docker`, `oem-azure`: the image is `<stem>-<VERSION>.raw`.
    pub stem: String,
    pub oem: bool,
}

impl Enabled {
    /// The name it is offered under: `<stem>.gz`.
    pub fn package(&self) -> String {
        format!("{}.gz", self.stem)
    }
}

/// The names enabled by the vendor file, then the admin file (`-NAME` disables one): pure.
pub fn enabled_names(vendor: &str, admin: &str) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for line in vendor.lines().chain(admin.lines()) {
        let line = line.split('#').next().unwrap_or("").trim();
        if let Some(off) = line.strip_prefix('-') {
            names.retain(|n| n != off.trim());
        } else if !line.is_empty() && !names.iter().any(|n| n == line) {
            names.push(line.to_owned());
        }
    }
    names
}

/// The `ID=` of an oem-release file.
pub fn oem_id(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.trim().strip_prefix("ID="))
        .map(|v| v.trim().trim_matches('"').to_owned())
        .filter(|v| !v.is_empty() && !v.contains('/'))
}

fn read_optional(path: &Path) -> Result<String, ExtensionError> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(io(path)(e)),
    }
}

/// What this machine has enabled (an unreadable file is an error, a missing one is empty).
pub fn enabled(root: &Path) -> Result<Vec<Enabled>, ExtensionError> {
    let vendor = read_optional(&root.join(VENDOR_ENABLED))?;
    let admin = read_optional(&root.join(ADMIN_ENABLED))?;
    let mut out: Vec<Enabled> = enabled_names(&vendor, &admin)
        .into_iter()
        .filter(|n| !n.contains('/'))
        .map(|n| Enabled {
            stem: format!("flatcar-{n}"),
            oem: false,
        })
        .collect();
    for rel in OEM_RELEASE {
        if let Some(id) = oem_id(&read_optional(&root.join(rel))?) {
            out.push(Enabled {
                stem: format!("oem-{id}"),
                oem: true,
            });
            break;
        }
    }
    Ok(out)
}

/// Where `e`'s image for `version` lives.
pub fn image_path(layout: &Layout, e: &Enabled, version: &str) -> PathBuf {
    let root = &layout.root;
    let dir = if !e.oem {
        layout.under(&layout.sysext_dir)
    } else if root.join(OEM_DIR).is_dir() {
        root.join(OEM_SYSEXT_DIR)
    } else {
        root.join(OEM_FALLBACK_DIR)
    };
    dir.join(format!("{}-{version}.raw", e.stem))
}

/// Places every enabled extension for `version` from `offers`; returns the images placed
/// now (already placed ones are skipped).
pub async fn place(
    client: &reqwest::Client,
    layout: &Layout,
    offer: &UpdateOffer,
    keys: &[RsaPublicKey],
) -> Result<Vec<PathBuf>, ExtensionError> {
    let version = offer.version.as_str();
    // Every enabled extension must be offered before anything is downloaded.
    let mut wanted = Vec::new();
    for e in enabled(&layout.root)? {
        let target = image_path(layout, &e, version);
        let fallback = layout
            .root
            .join(OEM_FALLBACK_DIR)
            .join(target.file_name().unwrap_or_default());
        if target.exists() || (e.oem && fallback.exists()) {
            continue;
        }
        let name = e.package();
        let file = offer
            .extra_files
            .iter()
            .find(|f| f.name == name)
            .ok_or_else(|| ExtensionError::NotOffered(name.clone()))?;
        wanted.push((target, file, offer.urls_of(file)));
    }
    let mut placed = Vec::new();
    for (target, file, urls) in wanted {
        let name = &file.name;
        let target = match place_one(client, &target, file, &urls, version, keys).await {
            // Flatcar's rule: an OEM image that does not fit on /oem goes under /etc.
            Err(e) if out_of_space(&e) && target.starts_with(layout.root.join(OEM_SYSEXT_DIR)) => {
                let dir = target.parent().unwrap_or(&layout.root);
                let _ = std::fs::remove_dir_all(dir.join(DOWNLOADS));
                let _ = std::fs::remove_file(target.with_extension("raw.tmp"));
                let fallback = layout
                    .root
                    .join(OEM_FALLBACK_DIR)
                    .join(target.file_name().unwrap_or_default());
                tracing::warn!(extension = %name, "/oem is full: the OEM extension goes under /{OEM_FALLBACK_DIR}");
                place_one(client, &fallback, file, &urls, version, keys).await?;
                fallback
            }
            Err(e) => return Err(e),
            Ok(()) => target,
        };
        tracing::info!(image = %target.display(), "system extension placed");
        placed.push(target);
    }
    Ok(placed)
}

/// Whether `e` is a full file system (ENOSPC), wherever it happened.
fn out_of_space(e: &ExtensionError) -> bool {
    let full = |e: &std::io::Error| e.kind() == std::io::ErrorKind::StorageFull;
    match e {
        ExtensionError::Io { error, .. } => full(error),
        ExtensionError::Fetch {
            error: fastpatch_fetch::FetchError::Io { error, .. },
            ..
        } => full(error),
        ExtensionError::Unpack { error, .. } => match error {
            fastpatch_payload::PayloadError::Io { error, .. } => full(error),
            // The installer's writer reports its I/O errors as text.
            other => other.to_string().contains("No space left on device"),
        },
        _ => false,
    }
}

/// Downloads one extension into the directory of `target` and unpacks it there.
async fn place_one(
    client: &reqwest::Client,
    target: &Path,
    file: &OfferedFile,
    urls: &[String],
    version: &str,
    keys: &[RsaPublicKey],
) -> Result<(), ExtensionError> {
    let name = file.name.as_str();
    let dir = target.parent().unwrap_or(Path::new("/")).to_owned();
    let downloads = dir.join(DOWNLOADS);
    std::fs::create_dir_all(&downloads).map_err(io(&downloads))?;
    tracing::info!(extension = %name, %version, size = file.size, "fetching a system extension");
    let want = fastpatch_fetch::Wanted {
        name,
        size: file.size,
        sha256: file.sha256,
        sha1: file.sha1,
        urls,
    };
    let payload = fastpatch_fetch::fetch(client, &downloads, &want, &mut fastpatch_fetch::Quiet)
        .await
        .map_err(|error| ExtensionError::Fetch {
            name: name.to_owned(),
            error,
        })?;
    let (t, k) = (target.to_owned(), keys.to_vec());
    tokio::task::spawn_blocking(move || unpack(&payload, &t, k))
        .await
        .map_err(|e| io(target)(std::io::Error::other(e)))?
        .map_err(|error| match error {
            UnpackError::Io(e) => e,
            UnpackError::Payload(error) => ExtensionError::Unpack {
                name: name.to_owned(),
                error,
            },
        })
}

/// [`place`] for an update, as the daemon's answer to `PlaceExtensions`: `ExtensionsPlaced`,
/// or `Failed` with EXTENSION_ERROR (logged with the reason).
pub async fn place_for_update(
    client: &reqwest::Client,
    layout: &Layout,
    offer: &crate::machine::UpdateOffer,
    trusted_keys: &[PathBuf],
) -> crate::machine::Input {
    let placed = match fastpatch_payload::keys::load_key_set(trusted_keys) {
        Ok(keys) => {
            let keys: Vec<RsaPublicKey> = keys.into_iter().map(|(_, k)| k).collect();
            place(client, layout, offer, &keys)
                .await
                .map_err(|e| e.to_string())
        }
        Err(e) => Err(e.to_string()),
    };
    match placed {
        Ok(_) => crate::machine::Input::ExtensionsPlaced,
        Err(e) => {
            tracing::error!(version = %offer.version, "system extensions not placed, the update stops here: {e}");
            crate::machine::Input::Failed {
                code: crate::report::ErrorCode::EXTENSION_ERROR,
            }
        }
    }
}

/// [`prune`], with what it removed (or why it could not) in the log.
pub fn prune_logged(layout: &Layout, keep: &[String]) {
    match prune(layout, keep) {
        Ok(removed) => {
            for p in removed {
                tracing::info!(image = %p.display(), "old system extension removed");
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot remove old system extensions"),
    }
}

/// [`activate`], with the links made (or why not) in the log.
pub fn activate_logged(layout: &Layout, version: &str) {
    match activate(layout, version) {
        Ok(links) => {
            for (link, target) in links {
                tracing::info!(link = %link.display(), target = %target.display(), "system extension linked for the booted version");
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot link the booted version's system extensions"),
    }
}

enum UnpackError {
    Io(ExtensionError),
    Payload(fastpatch_payload::PayloadError),
}

/// Installs the signed payload `payload` into `target` (via `target.tmp`), then removes it.
fn unpack(payload: &Path, target: &Path, keys: Vec<RsaPublicKey>) -> Result<(), UnpackError> {
    let open = std::fs::File::open(payload).map_err(|e| UnpackError::Io(io(payload)(e)))?;
    let inspection = fastpatch_payload::verify::inspect(std::io::BufReader::new(open))
        .map_err(UnpackError::Payload)?;
    let tmp = target.with_extension("raw.tmp");
    // The operations write whole blocks; the image is cut to its size once written.
    let block = u64::from(inspection.block_size.max(1));
    let file = std::fs::File::create(&tmp).map_err(|e| UnpackError::Io(io(&tmp)(e)))?;
    file.set_len(inspection.image_size.div_ceil(block) * block)
        .map_err(|e| UnpackError::Io(io(&tmp)(e)))?;
    let result = FileRange::whole(&tmp).and_then(|range| {
        let range: Arc<dyn InstallTarget> = Arc::new(range);
        install::install_from_file(payload, range, InstallOptions::new(keys), &mut |_| {})
    });
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(UnpackError::Payload(e));
    }
    file.set_len(inspection.image_size)
        .and_then(|()| file.sync_all())
        .map_err(|e| UnpackError::Io(io(&tmp)(e)))?;
    drop(file);
    std::fs::rename(&tmp, target).map_err(|e| UnpackError::Io(io(target)(e)))?;
    if let Some(dir) = target.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| UnpackError::Io(io(dir)(e)))?;
    }
    let _ = std::fs::remove_file(payload);
    Ok(())
}

/// `(stem, version)` of an extension image name `flatcar-<NAME>-<VERSION>.raw` or
/// `oem-<ID>-<VERSION>.raw` (the version is what follows the last `-`).
pub fn parse_image_name(name: &str) -> Option<(&str, &str)> {
    let base = name.strip_suffix(".raw")?;
    if !(base.starts_with("flatcar-") || base.starts_with("oem-")) {
        return None;
    }
    let (stem, version) = base.rsplit_once('-')?;
    (!version.is_empty() && stem.contains('-')).then_some((stem, version))
}

fn images(layout: &Layout) -> Result<Vec<(PathBuf, String, String)>, ExtensionError> {
    let mut out = Vec::new();
    for dir in layout.image_dirs() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io(&dir)(e)),
        };
        for entry in entries {
            let entry = entry.map_err(io(&dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some((stem, version)) = parse_image_name(&name) {
                out.push((entry.path(), stem.to_owned(), version.to_owned()));
            }
        }
    }
    Ok(out)
}

/// Removes the images of every version but `keep`; returns what it removed.
pub fn prune(layout: &Layout, keep: &[String]) -> Result<Vec<PathBuf>, ExtensionError> {
    let mut removed = Vec::new();
    for (path, _, version) in images(layout)? {
        if !keep.contains(&version) {
            std::fs::remove_file(&path).map_err(io(&path))?;
            removed.push(path);
        }
    }
    Ok(removed)
}

/// Links the images of `version` into `/etc/extensions/<stem>.raw` (absolute targets as the
/// machine sees them) and removes links to other versions' images; returns the links made.
pub fn activate(layout: &Layout, version: &str) -> Result<Vec<(PathBuf, PathBuf)>, ExtensionError> {
    let root = &layout.root;
    let links = root.join(LINK_DIR);
    std::fs::create_dir_all(&links).map_err(io(&links))?;
    let mut made = Vec::new();
    let mut stems = Vec::new();
    for (path, stem, v) in images(layout)? {
        if v != version {
            continue;
        }
        let rel = path.strip_prefix(root).unwrap_or(&path);
        let target = Path::new("/").join(rel);
        let link = links.join(format!("{stem}.raw"));
        let tmp = links.join(format!(".{stem}.raw.tmp"));
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&target, &tmp).map_err(io(&tmp))?;
        std::fs::rename(&tmp, &link).map_err(io(&link))?;
        stems.push(stem);
        made.push((link, target));
    }
    // A link to an extension this version does not have would activate the wrong one.
    for entry in std::fs::read_dir(&links).map_err(io(&links))? {
        let entry = entry.map_err(io(&links))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(stem) = name.strip_suffix(".raw") else {
            continue;
        };
        let ours = std::fs::read_link(entry.path())
            .ok()
            .and_then(|t| t.file_name().map(|n| n.to_string_lossy().into_owned()))
            .and_then(|n| parse_image_name(&n).map(|(s, _)| s.to_owned()));
        if ours.as_deref() == Some(stem) && !stems.iter().any(|s| s == stem) {
            std::fs::remove_file(entry.path()).map_err(io(&entry.path()))?;
        }
    }
    std::fs::File::open(&links)
        .and_then(|d| d.sync_all())
        .map_err(io(&links))?;
    Ok(made)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_admin_file_adds_to_and_removes_from_the_vendor_set() {
        let vendor = "docker\ncontainerd # runtime\n\n";
        let admin = "-docker\npython\npython\n";
        assert_eq!(enabled_names(vendor, admin), ["containerd", "python"]);
        assert_eq!(enabled_names("", ""), Vec::<String>::new());
    }

    #[test]
    fn oem_ids_and_image_names_read_as_flatcar_writes_them() {
        assert_eq!(oem_id("NAME=Azure\nID=azure\n").as_deref(), Some("azure"));
        assert_eq!(oem_id("ID=\"qemu\"").as_deref(), Some("qemu"));
        assert_eq!(oem_id("ID=../x"), None);
        assert_eq!(
            parse_image_name("flatcar-docker-3760.2.0.raw"),
            Some(("flatcar-docker", "3760.2.0"))
        );
        assert_eq!(
            parse_image_name("oem-azure-1.0.0.raw"),
            Some(("oem-azure", "1.0.0"))
        );
        assert_eq!(parse_image_name("docker.raw"), None);
        assert_eq!(parse_image_name("flatcar-docker.raw"), None);
        assert_eq!(parse_image_name("flatcar-docker-1.0.0.raw.tmp"), None);
    }

    #[test]
    fn activation_links_the_booted_version_and_pruning_keeps_two() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir_all(r.join(SYSEXT_DIR)).unwrap();
        for v in ["1.0.0", "2.0.0", "3.0.0"] {
            std::fs::write(r.join(SYSEXT_DIR).join(format!("flatcar-demo-{v}.raw")), v).unwrap();
        }
        std::fs::create_dir_all(r.join(LINK_DIR)).unwrap();
        std::os::unix::fs::symlink("/somewhere/else.raw", r.join(LINK_DIR).join("mine.raw"))
            .unwrap();
        let layout = Layout::flatcar(r);
        let made = activate(&layout, "2.0.0").unwrap();
        let link = r.join(LINK_DIR).join("flatcar-demo.raw");
        assert_eq!(
            made,
            [(
                link.clone(),
                PathBuf::from("/etc/flatcar/sysext/flatcar-demo-2.0.0.raw")
            )]
        );
        assert_eq!(
            std::fs::read_link(&link).unwrap(),
            Path::new("/etc/flatcar/sysext/flatcar-demo-2.0.0.raw")
        );
        assert!(
            r.join(LINK_DIR).join("mine.raw").symlink_metadata().is_ok(),
            "an admin's own link stays"
        );
        // A version without the extension: its link goes.
        activate(&layout, "9.9.9").unwrap();
        assert!(link.symlink_metadata().is_err());
        let removed = prune(&layout, &["2.0.0".into(), "1.0.0".into()]).unwrap();
        assert_eq!(removed, [r.join(SYSEXT_DIR).join("flatcar-demo-3.0.0.raw")]);
        assert!(r.join(SYSEXT_DIR).join("flatcar-demo-1.0.0.raw").exists());
    }
}
