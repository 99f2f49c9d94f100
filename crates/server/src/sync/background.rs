//! The background sync of `serve --sync-upstream`.

use std::sync::Arc;

use tokio::sync::watch;
use tracing::{info, warn};

use super::{http_client, SyncSettings, Syncer};

/// The background sync of `serve --sync-upstream`: a run at start, then every `every`.
pub async fn run(
    state: Arc<crate::AppState>,
    settings: SyncSettings,
    mut stop: watch::Receiver<bool>,
) {
    let client = match http_client() {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, "upstream sync off: no HTTP client");
            return;
        }
    };
    info!(upstream = %settings.upstream, channels = ?settings.channels, arches = ?settings.arches, every_secs = settings.every.as_secs(), "upstream sync on");
    let machine_id = format!("{{{}}}", uuid::Uuid::new_v4());
    let clock = state.clock.clone();
    let now = move || clock.now().timestamp();
    let mut tick = tokio::time::interval(settings.every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = async { let _ = stop.wait_for(|s| *s).await; } => return,
            _ = tick.tick() => {}
        }
        let syncer = Syncer {
            store: &state.store,
            data_dir: &state.data_dir,
            app: &settings.app,
            settings: &settings,
            client: client.clone(),
            machine_id: machine_id.clone(),
            now: &now,
        };
        tokio::select! {
            // Stopping mid-download keeps the partial file; the next start resumes it.
            _ = async { let _ = stop.wait_for(|s| *s).await; } => return,
            (_, errors) = syncer.run_once() => {
                for (what, e) in errors {
                    warn!(%what, error = %e, "upstream sync failed; the next run tries again");
                }
            }
        }
    }
}
