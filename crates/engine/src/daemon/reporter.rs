//! The event reporter: one task that sends event requests one after another, so the server
//! sees 13/1, 14/1, 3/1 in order.

use std::time::Duration;

use fastpatch_update_conf::{Server, UpdateConf};
use tokio::sync::mpsc;

use super::config::DaemonConfig;
use super::{omaha, Msg};
use crate::machine::Input;

/// Work for the event reporter.
pub(super) enum ReportJob {
    Send {
        request: Option<Box<fastpatch_omaha::Request<'static>>>,
        is_error: bool,
    },
    /// Answered once every job queued before it is done.
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// Sends event requests one after another, so the server sees them in order; after an error
/// event (sent or not), tells the machine it was reported.
pub(super) fn spawn_reporter(
    http: reqwest::Client,
    cfg: DaemonConfig,
    tx: mpsc::UnboundedSender<Msg>,
) -> mpsc::UnboundedSender<ReportJob> {
    let (rtx, mut rrx) = mpsc::unbounded_channel::<ReportJob>();
    tokio::spawn(async move {
        let timeout = Duration::from_secs(cfg.download.omaha_timeout_secs);
        while let Some(job) = rrx.recv().await {
            let (request, is_error) = match job {
                ReportJob::Send { request, is_error } => (request, is_error),
                ReportJob::Flush(done) => {
                    let _ = done.send(());
                    continue;
                }
            };
            if let Some(request) = request {
                let url = match UpdateConf::load(&cfg.root).map(|c| c.server()) {
                    Ok(Server::Url(u)) => Some(u),
                    _ => None,
                };
                if let Some(url) = url {
                    if let Err(e) = omaha::post(&http, &url, &request, timeout).await {
                        tracing::warn!(error = %e, "cannot report events to the update server");
                    }
                }
            }
            if is_error {
                let _ = tx.send(Msg::Input(Input::ErrorReported));
            }
        }
    });
    rtx
}
