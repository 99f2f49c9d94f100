//! Catalog commands: publish and register packages, list them, and delta payloads.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};

use super::{open, parse_extra_file, DbArgs};
use crate::store::ExternalPackage;

#[derive(Debug, Args)]
pub struct PublishArgs {
    /// The payload file (CrAU, signed); with --signing-key, the /usr image to make it from.
    pub file: PathBuf,
    /// FILE is a /usr image: make both payloads of it, signed with this key (PEM), and host
    /// both as the version: fastpatch's zstd payload, and a Flatcar-compatible bzip2 one that
    /// stock Flatcar clients (update_engine, ue-rs) can apply. Stock clients are offered the
    /// bzip2 one, fastpatch's engine the zstd one.
    #[arg(long, value_name = "KEY.pem", conflicts_with = "base_url")]
    pub signing_key: Option<PathBuf>,
    #[arg(long)]
    pub version: String,
    #[arg(long, default_value = "amd64")]
    pub arch: String,
    /// Name clients download it as (default: the file's name).
    #[arg(long)]
    pub file_name: Option<String>,
    /// Don't host it: clients download from this codebase URL (a CDN) + file name.
    #[arg(long)]
    pub base_url: Option<String>,
    /// Point this channel at the new version.
    #[arg(long)]
    pub channel: Option<String>,
    /// An extra file served next to the payload (repeatable).
    #[arg(long = "extra-file")]
    pub extra_files: Vec<PathBuf>,
}

#[derive(Debug, Args)]
pub struct RegisterArgs {
    #[arg(long)]
    pub version: String,
    /// Codebase ending in / (with --file-name) or the payload's full URL.
    #[arg(long)]
    pub url: String,
    #[arg(long)]
    pub file_name: Option<String>,
    #[arg(long, default_value = "amd64")]
    pub arch: String,
    #[arg(long)]
    pub size: u64,
    #[arg(long)]
    pub sha1: String,
    #[arg(long)]
    pub sha256: String,
    /// An extra file next to the payload: NAME:SIZE:SHA1:SHA256 (repeatable).
    #[arg(long = "extra-file")]
    pub extra_files: Vec<String>,
    /// The operations the payload uses, comma-separated (`fastpatch payload inspect` lists
    /// them): REPLACE,REPLACE_BZ for Flatcar's own payloads. A client is offered the payload
    /// only if it applies them; unset, it is offered to every client.
    #[arg(long)]
    pub payload_ops: Option<String>,
    /// Point this channel at the new version.
    #[arg(long)]
    pub channel: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum DeltaCmd {
    /// Host a delta made elsewhere (`fastpatch payload generate --source`), so the server
    /// needs no signing key; it is offered like the deltas the server makes.
    Publish {
        /// The delta payload file (signed like the full payloads).
        file: PathBuf,
        /// The version the delta builds.
        #[arg(long)]
        version: String,
        /// The version it applies to.
        #[arg(long)]
        from: String,
        #[arg(long, default_value = "amd64")]
        arch: String,
    },
    /// Make a delta again that came out not smaller or failed (e.g. after fixing the
    /// signing key): a server running with --delta-signing-key makes it at its next scan.
    Retry {
        /// The version the delta builds.
        version: String,
        /// The version it applies to.
        #[arg(long)]
        from: String,
        #[arg(long, default_value = "amd64")]
        arch: String,
    },
}

pub async fn publish(db: &DbArgs, app: &str, now: i64, a: PublishArgs) -> Result<()> {
    let Some(key) = a.signing_key.clone() else {
        return publish_file(db, app, now, a).await;
    };
    let work = db
        .data_dir
        .join(format!("publish-work-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let result = async {
        let payloads = make_both_payloads(&a.file, &key, &work).await?;
        let name = a
            .file_name
            .clone()
            .unwrap_or_else(|| "flatcar_production_update.gz".to_owned());
        for (i, payload) in payloads.into_iter().enumerate() {
            let args = PublishArgs {
                file: payload,
                signing_key: None,
                file_name: Some(name.clone()),
                // The channel moves once both payloads are hosted.
                channel: if i == 1 { a.channel.clone() } else { None },
                version: a.version.clone(),
                arch: a.arch.clone(),
                base_url: None,
                extra_files: a.extra_files.clone(),
            };
            publish_file(db, app, now, args).await?;
        }
        Ok(())
    }
    .await;
    let _ = std::fs::remove_dir_all(&work);
    result
}

/// Makes fastpatch's zstd payload and the Flatcar-compatible bzip2 payload of `image` in
/// `work`, signed with `key`, with progress on stderr.
async fn make_both_payloads(
    image: &std::path::Path,
    key: &std::path::Path,
    work: &std::path::Path,
) -> Result<Vec<PathBuf>> {
    use fastpatch_payload::generate::{generate, Compression, GenerateOptions};
    let key = fastpatch_payload::keys::load_private_key(key)
        .with_context(|| format!("loading the signing key {}", key.display()))?;
    let mut out = Vec::new();
    for (label, opts) in [
        ("zstd", GenerateOptions::default()),
        (
            "Flatcar-compatible",
            GenerateOptions {
                compression: Compression::Bz2,
                flatcar_compatible: true,
                ..GenerateOptions::default()
            },
        ),
    ] {
        let path = work.join(format!("{}.payload", label.to_ascii_lowercase()));
        let (image, dest, key) = (image.to_owned(), path.clone(), key.clone());
        tokio::task::spawn_blocking(move || {
            let mut shown = 0;
            generate(&image, &[key], &dest, &opts, &mut |done, total| {
                let pct = done * 100 / total.max(1);
                if pct >= shown + 10 || done == total {
                    shown = pct;
                    eprintln!("making the {label} payload: {pct} %");
                }
            })
            .with_context(|| format!("making the {label} payload of {}", image.display()))
        })
        .await
        .context("payload generation stopped")??;
        out.push(path);
    }
    Ok(out)
}

async fn publish_file(db: &DbArgs, app: &str, now: i64, a: PublishArgs) -> Result<()> {
    let PublishArgs {
        file,
        version,
        arch,
        file_name,
        base_url,
        channel,
        extra_files,
        signing_key: _,
    } = a;
    let store = open(db).await?;
    let published = crate::payloads::publish_with_files(
        &store,
        &db.data_dir,
        &crate::payloads::Publish {
            app_id: app,
            version: &version,
            arch: &arch,
            file: &file,
            file_name: file_name.as_deref(),
            base_url: base_url.as_deref(),
        },
        &extra_files,
        now,
    )
    .await
    .with_context(|| format!("publishing {}", file.display()))?;
    let pkg = &published.package;
    match &published.variant {
        None => println!(
            "published {} {} as {} ({} bytes, sha256 {}, sha1 {}, operations {}), package id {}",
            pkg.version,
            pkg.arch,
            pkg.file_name,
            pkg.size,
            pkg.sha256_b64,
            pkg.sha1_b64,
            pkg.payload_ops.as_deref().unwrap_or("not known: offered to every client"),
            pkg.id
        ),
        Some(v) => println!(
            "published {} {} as a second payload of the same image: {} ({} bytes, sha256 {}, operations {}), id {}",
            pkg.version, pkg.arch, v.file_name, v.size, v.sha256_b64, v.payload_ops, v.id
        ),
    }
    if let Some(ch) = channel {
        store.set_channel(app, &ch, &version, now).await?;
        println!("channel {ch} now offers {version}");
    }
    store.close().await;
    Ok(())
}

pub async fn register(db: &DbArgs, app: &str, now: i64, a: RegisterArgs) -> Result<()> {
    let RegisterArgs {
        version,
        url,
        file_name,
        arch,
        size,
        sha1,
        sha256,
        extra_files,
        payload_ops,
        channel,
    } = a;
    let ext = ExternalPackage {
        payload_ops,
        version: version.clone(),
        arch: Some(arch),
        url,
        file_name,
        size,
        sha1,
        sha256,
        extra_files: extra_files
            .iter()
            .map(|e| parse_extra_file(e))
            .collect::<Result<_>>()?,
    };
    let store = open(db).await?;
    let (pkg, files) = store
        .register_external(app, &ext, now)
        .await
        .context("registering the package")?;
    println!(
        "registered {} {} at {}{} ({} bytes, {} extra files), package id {}",
        pkg.version,
        pkg.arch,
        pkg.base_url.as_deref().unwrap_or(""),
        pkg.file_name,
        pkg.size,
        files.len(),
        pkg.id
    );
    if let Some(ch) = channel {
        store.set_channel(app, &ch, &version, now).await?;
        println!("channel {ch} now offers {version}");
    }
    store.close().await;
    Ok(())
}

pub async fn packages(db: &DbArgs, app: &str) -> Result<()> {
    let store = open(db).await?;
    let deltas = store.deltas(app).await?;
    let variants = store.variants(app).await?;
    for p in store.packages(app).await? {
        println!(
            "{:<12} {:<6} {:<32} {:>12} {} {}",
            p.version,
            p.arch,
            p.file_name,
            p.size,
            p.sha256_b64,
            p.base_url.as_deref().unwrap_or("(hosted)")
        );
        println!(
            "  operations {}",
            p.payload_ops
                .as_deref()
                .unwrap_or("not known (offered to every client)")
        );
        for v in variants.iter().filter(|v| v.package_id == p.id) {
            println!(
                "  also {:<30} {:>12} {} operations {} served {} bytes",
                v.file_name, v.size, v.sha256_b64, v.payload_ops, v.served_bytes
            );
        }
        for f in store.package_files(&p.id).await? {
            println!("  + {:<30} {:>12} {}", f.name, f.size, f.sha256_b64);
        }
        for d in deltas.iter().filter(|d| d.package_id == p.id) {
            match d.state {
                crate::store::DeltaState::Ready => println!(
                    "  delta from {:<12} {:>12} bytes ({:.1} % of full) {} served {} bytes",
                    d.source_version,
                    d.size,
                    100.0 * d.size as f64 / p.size.max(1) as f64,
                    d.sha256_b64,
                    d.served_bytes
                ),
                other => println!(
                    "  delta from {:<12} {}: {}",
                    d.source_version,
                    other.as_str(),
                    d.note.as_deref().unwrap_or("")
                ),
            }
        }
    }
    Ok(())
}

pub async fn delta(db: &DbArgs, app: &str, now: i64, cmd: DeltaCmd) -> Result<()> {
    match cmd {
        DeltaCmd::Publish {
            file,
            version,
            from,
            arch,
        } => {
            let store = open(db).await?;
            let d = crate::payloads::publish_delta(
                &store,
                &db.data_dir,
                &crate::payloads::PublishDelta {
                    app_id: app,
                    version: &version,
                    source_version: &from,
                    arch: &arch,
                    file: &file,
                },
                now,
            )
            .await
            .with_context(|| format!("publishing the delta {}", file.display()))?;
            println!(
                "published the delta {from} → {version} ({}) as {} ({} bytes, sha256 {}), id {}",
                d.arch, d.file_name, d.size, d.sha256_b64, d.id
            );
            store.close().await;
            Ok(())
        }
        DeltaCmd::Retry {
            version,
            from,
            arch,
        } => {
            let store = open(db).await?;
            let arch = crate::store::normalize_arch(Some(&arch));
            let was = store.retry_delta(app, &version, &arch, &from, now).await?;
            println!(
                "delta {from} → {version} ({arch}) was {}{}; a server with --delta-signing-key makes it again within its scan period",
                was.state.as_str(),
                was.note.map(|n| format!(" ({n})")).unwrap_or_default()
            );
            store.close().await;
            Ok(())
        }
    }
}
