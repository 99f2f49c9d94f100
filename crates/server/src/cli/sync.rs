//! `fastpatch-server sync` (one run) and the `serve --sync-*` options (a background sync).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;

use super::{open, DbArgs};
use crate::sync::{SyncSettings, Syncer};

/// Flatcar's public Omaha endpoint.
pub const FLATCAR_UPSTREAM: &str = "https://public.update.flatcar-linux.net/v1/update/";

#[derive(Debug, Clone, Args)]
pub struct SyncArgs {
    /// The upstream Omaha endpoint to mirror.
    #[arg(long, default_value = FLATCAR_UPSTREAM, value_name = "URL")]
    pub upstream: String,
    /// Upstream channels to mirror into the local channels of the same name (repeat or
    /// separate with commas).
    #[arg(long = "channel", value_delimiter = ',', default_value = "stable")]
    pub channels: Vec<String>,
    /// Architectures to mirror (amd64, arm64; repeat or separate with commas).
    #[arg(long = "arch", value_delimiter = ',', default_value = "amd64")]
    pub arches: Vec<String>,
    /// A PEM public key the payloads and extra files must be signed with (repeat for a key
    /// set). Without one, only the upstream's sizes and hashes are checked.
    #[arg(long = "key", value_name = "PEM")]
    pub keys: Vec<PathBuf>,
    /// Register the packages at the upstream's URLs instead of hosting the files here (they
    /// are still downloaded once and checked).
    #[arg(long)]
    pub register_upstream_urls: bool,
}

/// `serve` options for the background sync (off unless --sync-upstream is given).
#[derive(Debug, Clone, Default, Args)]
pub struct ServeSyncArgs {
    /// Mirror channels of this upstream Omaha endpoint in the background (Flatcar's:
    /// https://public.update.flatcar-linux.net/v1/update/).
    #[arg(long, env = "FASTPATCH_SYNC_UPSTREAM", value_name = "URL")]
    pub sync_upstream: Option<String>,
    /// Channels to mirror (default: stable).
    #[arg(
        long = "sync-channel",
        value_delimiter = ',',
        env = "FASTPATCH_SYNC_CHANNELS"
    )]
    pub sync_channels: Vec<String>,
    /// Architectures to mirror (default: amd64).
    #[arg(
        long = "sync-arch",
        value_delimiter = ',',
        env = "FASTPATCH_SYNC_ARCHES"
    )]
    pub sync_arches: Vec<String>,
    /// PEM public key(s) the mirrored files must be signed with.
    #[arg(long = "sync-key", value_name = "PEM")]
    pub sync_keys: Vec<PathBuf>,
    /// Register the upstream's URLs instead of hosting the files.
    #[arg(long)]
    pub sync_register_upstream_urls: bool,
    /// How often to sync: seconds, or with a unit (90s, 15m, 1h). Default: 1h.
    #[arg(long, default_value = "1h", value_parser = parse_every, env = "FASTPATCH_SYNC_EVERY")]
    pub sync_every: Option<Duration>,
}

/// `30`, `30s`, `15m`, `1h`.
pub fn parse_every(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?}: want a number of seconds, or 90s, 15m, 1h"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return Err(format!("{s:?}: the unit is s, m or h")),
    };
    if secs == 0 {
        return Err("the sync period must be longer than 0".into());
    }
    Ok(Duration::from_secs(secs))
}

fn settings(
    app: &str,
    upstream: &str,
    channels: &[String],
    arches: &[String],
    keys: &[PathBuf],
    register: bool,
) -> Result<SyncSettings> {
    if !upstream.starts_with("http://") && !upstream.starts_with("https://") {
        bail!("--upstream {upstream:?}: want an http:// or https:// URL");
    }
    let or = |v: &[String], d: &str| -> Vec<String> {
        let v: Vec<String> = v
            .iter()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect();
        if v.is_empty() {
            vec![d.to_owned()]
        } else {
            v
        }
    };
    let keys = fastpatch_payload::keys::load_public_keys(keys).context("loading --key")?;
    Ok(SyncSettings {
        app: fastpatch_omaha::normalize_appid(app),
        upstream: upstream.to_owned(),
        channels: or(channels, "stable"),
        arches: or(arches, crate::store::DEFAULT_ARCH)
            .iter()
            .map(|a| crate::store::normalize_arch(Some(a)))
            .collect(),
        keys,
        register_upstream_urls: register,
        every: Duration::from_secs(3600),
        progress_on_terminal: false,
    })
}

impl ServeSyncArgs {
    /// The background sync's settings; `None` without --sync-upstream.
    pub fn settings(&self, app: &str) -> Result<Option<SyncSettings>> {
        let Some(upstream) = &self.sync_upstream else {
            return Ok(None);
        };
        let mut s = settings(
            app,
            upstream,
            &self.sync_channels,
            &self.sync_arches,
            &self.sync_keys,
            self.sync_register_upstream_urls,
        )?;
        s.every = self.sync_every.unwrap_or(s.every);
        Ok(Some(s))
    }
}

/// One run over every channel and architecture; fails when any of them failed.
pub async fn sync(db: &DbArgs, app: &str, a: SyncArgs) -> Result<()> {
    let mut s = settings(
        app,
        &a.upstream,
        &a.channels,
        &a.arches,
        &a.keys,
        a.register_upstream_urls,
    )?;
    s.progress_on_terminal = true;
    let store = open(db).await?;
    if !store.app_exists(&s.app).await? {
        bail!("unknown application {} (--app)", s.app);
    }
    let now = || chrono::Utc::now().timestamp();
    let syncer = Syncer {
        store: &store,
        data_dir: &db.data_dir,
        app: &s.app,
        settings: &s,
        client: crate::sync::http_client()?,
        machine_id: format!("{{{}}}", uuid::Uuid::new_v4()),
        now: &now,
    };
    let (reports, errors) = syncer.run_once().await;
    for r in &reports {
        let what = format!("{} ({})", r.channel, r.arch);
        match (&r.held, r.synced.is_empty(), &r.upstream_version) {
            (Some(status), ..) => println!("{what}: the upstream holds the update back ({status})"),
            (None, false, _) => println!("{what}: mirrored {}", r.synced.join(", ")),
            (None, true, Some(v)) => println!("{what}: up to date ({v} is here)"),
            (None, true, None) => println!("{what}: up to date (nothing newer upstream)"),
        }
    }
    for c in &s.channels {
        if let Some(ch) = store.channel(&s.app, c).await? {
            println!(
                "channel {c} -> {}",
                ch.version.as_deref().unwrap_or("(no version)")
            );
        }
    }
    store.close().await;
    if let Some((what, e)) = errors.first() {
        for (w, e) in &errors[1..] {
            eprintln!("error: {w}: {e}");
        }
        bail!("{what}: {e}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_every;
    use std::time::Duration;

    #[test]
    fn periods_read_with_or_without_a_unit() {
        assert_eq!(parse_every("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_every("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_every("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_every("0").is_err());
        assert!(parse_every("1d").is_err());
        assert!(parse_every("soon").is_err());
    }
}
