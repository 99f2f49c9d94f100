//! Starting the work an offer needs: the download + install onto the passive slot (with the
//! booted slot as a delta's source), and placing the offer's system extensions. Each runs as a
//! task whose outcome comes back to the loop as an [`Input`].

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use fastpatch_payload::install::{InstallOptions, InstallSource, SourceFile};
use fastpatch_update_conf::UpdateConf;
use tokio::sync::mpsc;

use super::{download, extensions, Daemon, Msg};
use crate::machine::{Input, UpdateOffer};
use crate::report::ErrorCode;

impl Daemon {
    /// Starts the download + install of `offer` onto the passive slot; a failure to start is
    /// an `Input::Failed` for the loop, as a failure of the task would be.
    pub(super) fn start_install(&mut self, offer: UpdateOffer) {
        if let Err((code, why)) = self.try_start_install(offer) {
            tracing::error!("cannot start the install: {why}");
            self.metrics.failure("install");
            self.queue.push_back(Input::Failed { code });
        }
    }

    fn try_start_install(&mut self, offer: UpdateOffer) -> Result<(), (ErrorCode, String)> {
        let passive = self.boot.booted().other();
        let target = self
            .boot
            .writable_target(passive)
            .map_err(|e| (ErrorCode::INSTALL_DEVICE_OPEN_ERROR, e.to_string()))?;
        let install = self.install_options()?;
        let credentials = UpdateConf::load(&self.cfg.root).ok().and_then(|c| {
            c.download_credentials()
                .map(|(u, p)| (u.to_string(), p.to_string()))
        });
        tracing::info!(version = %offer.version, size = offer.size, slot = %passive, "downloading the update");
        let spec = download::InstallSpec {
            offer,
            max_failures_per_url: self.max_failures_per_url,
            target,
            install,
            state_dir: self.cfg.install_state_dir.clone(),
            net_rate: self.cfg.limits.download_bytes_per_sec,
            hash_point_every: self.cfg.download.hash_point_bytes,
            retry_delay: Duration::from_secs(self.cfg.download.retry_delay_secs),
            credentials,
        };
        let metrics = self.metrics.clone();
        let (tx, rx) = self.count_install_failures();
        self.install = Some(download::spawn(
            spec,
            self.http.clone(),
            tx,
            Arc::new(move |n| metrics.add_bytes(n)),
        ));
        self.install_rx = Some(rx);
        Ok(())
    }

    /// The installer's settings: the trusted payload keys (logged), the disk rate limit, the
    /// checkpoint interval and the booted slot as a delta's source.
    fn install_options(&self) -> Result<InstallOptions, (ErrorCode, String)> {
        let keys = fastpatch_payload::keys::load_key_set(&self.cfg.trusted_keys).map_err(|e| {
            (
                ErrorCode::DOWNLOAD_PAYLOAD_VERIFICATION_ERROR,
                e.to_string(),
            )
        })?;
        let files: Vec<String> = keys.iter().map(|(p, _)| p.display().to_string()).collect();
        tracing::info!(keys = %files.join(", "), "payload signature keys trusted");
        let mut install = InstallOptions::new(keys.into_iter().map(|(_, key)| key).collect());
        install.disk_rate = self.cfg.limits.disk_bytes_per_sec;
        install.checkpoint_bytes = self.cfg.download.checkpoint_bytes;
        install.source = self.delta_source();
        Ok(install)
    }

    /// The install task's channel to the loop, through a relay that counts its failures; a
    /// delta that does not fit the booted slot means asking for full payloads from now on.
    fn count_install_failures(
        &self,
    ) -> (mpsc::UnboundedSender<Input>, mpsc::UnboundedReceiver<Input>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let (ftx, mut frx) = mpsc::unbounded_channel::<Input>();
        let metrics = self.metrics.clone();
        let delta_okay = self.delta_okay.clone();
        tokio::spawn(async move {
            while let Some(i) = frx.recv().await {
                if let Input::Failed { code } = &i {
                    metrics.failure("install");
                    if *code == ErrorCode::DOWNLOAD_STATE_INITIALIZATION_ERROR
                        && delta_okay.swap(false, Ordering::Relaxed)
                    {
                        tracing::warn!("the delta payload does not fit the booted slot; asking for full payloads from now on");
                    }
                }
                if tx.send(i).is_err() {
                    break;
                }
            }
        });
        (ftx, rx)
    }

    /// Places the offer's enabled system extensions in the background; the loop gets
    /// `ExtensionsPlaced` or `Failed` (EXTENSION_ERROR).
    pub(super) fn place_extensions(&mut self, offer: UpdateOffer) {
        let (layout, http, tx) = (
            self.cfg.extension_layout(),
            self.http.clone(),
            self.tx.clone(),
        );
        let keys = self.cfg.trusted_keys.clone();
        tokio::spawn(async move {
            let input = extensions::place_for_update(&http, &layout, &offer, &keys).await;
            let _ = tx.send(Msg::Input(input));
        });
    }

    /// The booted slot, opened read-only, as the source a delta payload applies to (a full
    /// payload ignores it). None, with a warning, when it cannot be opened.
    fn delta_source(&self) -> Option<Arc<dyn InstallSource>> {
        let booted = self.boot.booted();
        let opened = self
            .boot
            .extent(booted)
            .map_err(|e| e.to_string())
            .and_then(|e| SourceFile::open(&e.device, e.offset, e.len).map_err(|e| e.to_string()));
        match opened {
            Ok(f) => Some(Arc::new(f)),
            Err(e) => {
                tracing::warn!(slot = %booted, "the booted slot cannot be read, so a delta payload would fail: {e}");
                None
            }
        }
    }
}
