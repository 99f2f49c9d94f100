//! Which payload a client is offered: every payload records the operations it uses, a
//! client says which it applies (`fastpatch_payload_ops`; stock Flatcar clients apply
//! REPLACE and REPLACE_BZ only), and a version can be hosted in two encodings of one image
//! (fastpatch's zstd payload and a Flatcar-compatible one), so nobody downloads bytes it
//! cannot apply.

use std::path::Path;

use fastpatch_omaha::PayloadOps;
use fastpatch_payload::format::OpKind;
use tracing::{info, warn};

use crate::payloads::{payload_dir, PublishError};
use crate::store::{PackageRow, Store, StoreError, VariantRow};

/// What publishing learns from a payload's manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspected {
    pub ops: PayloadOps,
    /// The image the payload writes (`new_partition_info`).
    pub image_sha256: String,
}

/// Reads `file`'s manifest and operations. A file that is not a CrAU payload gives `None`
/// (it is hosted as before, offered to every client, and a warning says so); a delta
/// payload is refused (`delta publish` hosts those).
pub async fn inspect(file: &Path) -> Result<Option<Inspected>, PublishError> {
    let path = file.to_owned();
    let inspection = tokio::task::spawn_blocking(move || {
        let f = std::fs::File::open(&path).map_err(|error| PublishError::Read {
            path: path.clone(),
            error,
        })?;
        Ok::<_, PublishError>(fastpatch_payload::verify::inspect(std::io::BufReader::new(
            f,
        )))
    })
    .await
    .map_err(|e| PublishError::Write(std::io::Error::other(e)))??;
    let inspection = match inspection {
        Ok(i) => i,
        Err(e) => {
            warn!(file = %file.display(), error = %e, "not a CrAU payload: its operations are not known, so it is offered to every client");
            return Ok(None);
        }
    };
    if let Some(src) = &inspection.delta_source {
        return Err(StoreError::Invalid(format!(
            "{} is a delta payload (it applies to {}): host it with `fastpatch-server delta publish`",
            file.display(),
            src.version.as_deref().unwrap_or("another image")
        ))
        .into());
    }
    Ok(Some(Inspected {
        ops: PayloadOps::new(inspection.op_names()),
        image_sha256: inspection.image_sha256,
    }))
}

/// Records the operations of hosted payloads published before the server recorded them (a
/// server upgraded to schema 6), so those too are offered only to clients that apply them.
/// Runs once at start, in the background; stops early when `stop` turns true.
pub async fn record_missing_ops(
    state: std::sync::Arc<crate::AppState>,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let apps = match state.store.apps().await {
        Ok(a) => a,
        Err(e) => {
            warn!(error = %e, "listing applications to record payload operations");
            return;
        }
    };
    for app in apps {
        let packages = match state.store.packages(&app.id).await {
            Ok(p) => p,
            Err(e) => {
                warn!(app = %app.id, error = %e, "listing packages to record payload operations");
                continue;
            }
        };
        for p in packages
            .iter()
            .filter(|p| p.payload_ops.is_none() && p.base_url.is_none())
        {
            if *stop.borrow() {
                return;
            }
            let file = payload_dir(&state.data_dir).join(&p.id);
            let found = match inspect(&file).await {
                Ok(Some(found)) => found,
                Ok(None) => continue,
                Err(e) => {
                    warn!(version = %p.version, arch = %p.arch, error = %e, "payload operations not recorded");
                    continue;
                }
            };
            match state
                .store
                .record_payload_ops(&p.id, &found.ops, &found.image_sha256)
                .await
            {
                Ok(true) => {
                    info!(version = %p.version, arch = %p.arch, ops = %found.ops, "recorded the operations of a payload published before they were recorded")
                }
                Ok(false) => {}
                Err(e) => warn!(version = %p.version, error = %e, "recording payload operations"),
            }
        }
    }
}

/// Whether `new` writes the same image as the published `existing` with other operations:
/// then it is hosted as a second payload of that package.
/// Only a package hosted here gets one: its extra files are then served next to the variant.
pub fn is_other_encoding(existing: &PackageRow, new: &PackageRow) -> bool {
    existing.base_url.is_none()
        && existing.sha256_b64 != new.sha256_b64
        && existing.image_sha256.is_some()
        && existing.image_sha256 == new.image_sha256
        && matches!((existing.ops(), new.ops()), (Some(a), Some(b)) if a != b)
}

/// Hosts the synced file `incoming` as another payload of `existing` and registers it.
/// The file is renamed into place before the row exists and removed if the row is refused.
pub async fn publish(
    store: &Store,
    data_dir: &Path,
    existing: &PackageRow,
    new: &PackageRow,
    incoming: &Path,
) -> Result<VariantRow, PublishError> {
    let v = VariantRow {
        id: uuid::Uuid::new_v4().simple().to_string(),
        package_id: existing.id.clone(),
        payload_ops: new.payload_ops.clone().unwrap_or_default(),
        file_name: new.file_name.clone(),
        size: new.size,
        sha1_b64: new.sha1_b64.clone(),
        sha256_b64: new.sha256_b64.clone(),
        served_bytes: 0,
        created_at: new.created_at,
    };
    let dest = payload_dir(data_dir).join(&v.id);
    std::fs::rename(incoming, &dest).map_err(PublishError::Write)?;
    match store.add_variant(existing, &v).await {
        Ok(stored) => {
            if stored.id != v.id {
                let _ = std::fs::remove_file(&dest);
            } else {
                info!(version = %existing.version, arch = %existing.arch, ops = %v.payload_ops, bytes = v.size, "published a second payload of the version");
            }
            Ok(stored)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&dest);
            Err(e.into())
        }
    }
}

/// One of a package's payloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chosen<'a> {
    Package(&'a PackageRow),
    Variant(&'a VariantRow),
}

impl Chosen<'_> {
    /// Sorts the payload made for capable clients before the stock one, then by size.
    fn preference(&self) -> (bool, i64) {
        let (ops, size) = match self {
            Chosen::Package(p) => (p.ops().unwrap_or_default(), p.size),
            Chosen::Variant(v) => (v.ops(), v.size),
        };
        (PayloadOps::stock_flatcar().covers(&ops), size)
    }
}

/// The payload of `pkg` to offer a client that applies `applies`, among those whose operations
/// it applies: one that needs more than stock Flatcar's operations first (a client that
/// announces zstd gets the zstd payload, which installs several times faster than bzip2 at
/// about the same size), then the smallest. A package payload whose operations are not known
/// (registered without them, or published before they were recorded) is offered when nothing
/// known fits. `None`: the client applies none of them. Pure.
pub fn choose<'a>(
    pkg: &'a PackageRow,
    variants: &'a [VariantRow],
    applies: &PayloadOps,
) -> Option<Chosen<'a>> {
    let own = pkg.ops();
    let known = own
        .as_ref()
        .filter(|ops| applies.covers(ops))
        .map(|_| Chosen::Package(pkg));
    let fitting = variants
        .iter()
        .filter(|v| v.package_id == pkg.id && applies.covers(&v.ops()))
        .map(Chosen::Variant);
    known
        .into_iter()
        .chain(fitting)
        .min_by_key(Chosen::preference)
        .or_else(|| own.is_none().then_some(Chosen::Package(pkg)))
}

/// What a client must apply to be offered a delta: every operation fastpatch's installer
/// applies (deltas use SOURCE_COPY and SOURCE_ZSTD, which no stock Flatcar client reads).
pub fn delta_ops() -> PayloadOps {
    PayloadOps::new(OpKind::ALL.map(|k| k.name()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkg(ops: Option<&str>, size: i64) -> PackageRow {
        PackageRow {
            id: "p1".into(),
            app_id: "app".into(),
            version: "2.0.0".into(),
            arch: "amd64".into(),
            file_name: "update.gz".into(),
            base_url: None,
            size,
            sha1_b64: "a".into(),
            sha256_b64: "b".into(),
            created_at: 0,
            payload_ops: ops.map(str::to_owned),
            image_sha256: Some("img".into()),
        }
    }

    fn variant(id: &str, ops: &str, size: i64) -> VariantRow {
        VariantRow {
            id: id.into(),
            package_id: "p1".into(),
            payload_ops: ops.into(),
            file_name: "flatcar_production_update.gz".into(),
            size,
            sha1_b64: "c".into(),
            sha256_b64: "d".into(),
            served_bytes: 0,
            created_at: 0,
        }
    }

    #[test]
    fn a_stock_client_gets_the_flatcar_compatible_variant_and_fastpatch_the_zstd_one() {
        let p = pkg(Some("REPLACE,REPLACE_ZSTD"), 100);
        let vs = [variant("v1", "REPLACE,REPLACE_BZ", 130)];
        let stock = PayloadOps::stock_flatcar();
        assert_eq!(choose(&p, &vs, &stock), Some(Chosen::Variant(&vs[0])));
        assert_eq!(choose(&p, &vs, &delta_ops()), Some(Chosen::Package(&p)));
        // The zstd one even when the bzip2 one is a little smaller (it installs faster).
        let vs = [variant("v1", "REPLACE,REPLACE_BZ", 90)];
        assert_eq!(choose(&p, &vs, &delta_ops()), Some(Chosen::Package(&p)));
        // Among payloads of one kind, the smallest, whichever is the package's own.
        let stock = pkg(Some("REPLACE,REPLACE_BZ"), 100);
        let vs = [variant("v1", "REPLACE", 90)];
        assert_eq!(
            choose(&stock, &vs, &PayloadOps::stock_flatcar()),
            Some(Chosen::Variant(&vs[0]))
        );
    }

    #[test]
    fn nothing_a_client_applies_is_none() {
        let p = pkg(Some("REPLACE,REPLACE_ZSTD"), 100);
        assert_eq!(choose(&p, &[], &PayloadOps::stock_flatcar()), None);
        // Another package's variant does not count.
        let mut other = variant("v1", "REPLACE_BZ", 10);
        other.package_id = "p2".into();
        assert_eq!(
            choose(
                &p,
                std::slice::from_ref(&other),
                &PayloadOps::stock_flatcar()
            ),
            None
        );
    }

    #[test]
    fn unknown_operations_are_offered_only_when_nothing_known_fits() {
        let p = pkg(None, 100);
        assert_eq!(
            choose(&p, &[], &PayloadOps::stock_flatcar()),
            Some(Chosen::Package(&p))
        );
        let vs = [variant("v1", "REPLACE,REPLACE_BZ", 130)];
        assert_eq!(
            choose(&p, &vs, &PayloadOps::stock_flatcar()),
            Some(Chosen::Variant(&vs[0]))
        );
    }

    #[test]
    fn a_second_encoding_is_the_same_image_with_other_operations() {
        let a = pkg(Some("REPLACE,REPLACE_ZSTD"), 100);
        let mut b = pkg(Some("REPLACE,REPLACE_BZ"), 130);
        b.sha256_b64 = "other".into();
        assert!(is_other_encoding(&a, &b));
        let mut other_image = b.clone();
        other_image.image_sha256 = Some("img2".into());
        assert!(!is_other_encoding(&a, &other_image));
        let mut same_ops = b.clone();
        same_ops.payload_ops = a.payload_ops.clone();
        assert!(!is_other_encoding(&a, &same_ops));
        let mut unknown = b.clone();
        unknown.payload_ops = None;
        assert!(!is_other_encoding(&a, &unknown));
        let mut external = a.clone();
        external.base_url = Some("https://cdn.example/".into());
        assert!(!is_other_encoding(&external, &b));
    }
}
