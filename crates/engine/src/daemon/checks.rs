//! The daemon's requests to the update server: update.conf read afresh for each, the Omaha
//! request built from it, update checks answered on the daemon's channel, event requests
//! handed to the reporter.

use std::time::Duration;

use fastpatch_update_conf::{Server, UpdateConf};

use super::omaha::{self, RequestKind};
use super::reporter::ReportJob;
use super::{Daemon, Msg};
use crate::machine::Input;
use crate::report::Event;

impl Daemon {
    pub(super) fn server_url(&self) -> (UpdateConf, Option<String>) {
        match UpdateConf::load(&self.cfg.root) {
            Ok(conf) => {
                if conf.get("SERVER").is_none() {
                    warn_default_server_once(&self.cfg.root);
                }
                let url = match conf.server() {
                    Server::Url(u) => Some(u),
                    Server::Disabled => None,
                };
                (conf, url)
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot read update.conf");
                (UpdateConf::default(), None)
            }
        }
    }

    fn request(
        &self,
        conf: &UpdateConf,
        kind: &RequestKind,
        events: &[Event],
    ) -> Option<fastpatch_omaha::Request<'static>> {
        let mut request = omaha::build_request(
            &self.cfg.app_id,
            &self.cfg.board,
            &self.facts,
            conf,
            self.engine.durable().aleph_version.as_deref(),
            kind,
            events,
        )?;
        let delta = self.delta_okay.load(std::sync::atomic::Ordering::Relaxed);
        for app in &mut request.apps {
            app.delta_okay = Some(if delta { "true" } else { "false" }.into());
        }
        Some(request)
    }

    pub(super) fn send_check(&mut self, kind: RequestKind, events: Vec<Event>) {
        let (conf, url) = self.server_url();
        let Some(url) = url else {
            tracing::info!(
                "update checks are disabled (SERVER=disabled or no readable update.conf)"
            );
            let _ = self.tx.send(Msg::Checked {
                input: Input::CheckFailed {
                    server_error: false,
                },
                answered: false,
                max_failures_per_url: None,
            });
            return;
        };
        let Some(request) = self.request(&conf, &kind, &events) else {
            return;
        };
        let http = self.http.clone();
        let tx = self.tx.clone();
        let app_id = self.cfg.app_id.clone();
        let timeout = Duration::from_secs(self.cfg.download.omaha_timeout_secs);
        tokio::spawn(async move {
            let msg = match omaha::post(&http, &url, &request, timeout).await {
                Ok(body) => {
                    let (input, max) = match kind {
                        RequestKind::Ping => (
                            Input::CheckAnswered {
                                reply: crate::machine::CheckReply::NoUpdate,
                                poll_interval: omaha::ping_poll_interval(&app_id, &body),
                            },
                            None,
                        ),
                        _ => omaha::interpret_check(&app_id, &body),
                    };
                    Msg::Checked {
                        input,
                        answered: true,
                        max_failures_per_url: max,
                    }
                }
                Err(e) => {
                    tracing::warn!(%url, error = %e, "update check failed");
                    Msg::Checked {
                        input: Input::CheckFailed {
                            server_error: e.is_server_error(),
                        },
                        answered: false,
                        max_failures_per_url: None,
                    }
                }
            };
            let _ = tx.send(msg);
        });
    }

    pub(super) fn send_events(&mut self, events: Vec<Event>) {
        let is_error = events
            .iter()
            .any(|e| e.event_result == fastpatch_omaha::event_result::ERROR);
        let (conf, url) = self.server_url();
        let request = url.and_then(|_| self.request(&conf, &RequestKind::Events, &events));
        let _ = self.reporter.send(ReportJob::Send {
            request: request.map(Box::new),
            is_error,
        });
    }
}

/// No update.conf sets SERVER: the machine asks Flatcar's public server, as update_engine does.
/// Said once per process, at the first check, with the files that were looked for.
fn warn_default_server_once(root: &std::path::Path) {
    static SAID: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if SAID.swap(true, std::sync::atomic::Ordering::Relaxed) {
        return;
    }
    let looked: Vec<String> = fastpatch_update_conf::SEARCH_PATHS
        .iter()
        .map(|rel| root.join(rel).display().to_string())
        .collect();
    tracing::warn!(
        "no update.conf sets SERVER (looked for {}): checking the public Flatcar server {}",
        looked.join(", "),
        fastpatch_update_conf::DEFAULT_SERVER
    );
}
