//! FleetLock (Zincati's reboot-lock protocol) on the same etcd semaphore: an axum server and a
//! reqwest client.
//!
//! `POST /v1/pre-reboot` takes a slot (re-entrant), `POST /v1/steady-state` releases it
//! (idempotent). Both need the header `fleet-lock-protocol: true` and the body
//! `{"client_params":{"id":"..","group":".."}}`. FleetLock group `default` is locksmith's default
//! semaphore key; any other group `g` is locksmith's group `g`. Slot counts per group come from a
//! config file (`GROUP=SLOTS` lines) that is re-read when it changes, and are applied to the
//! semaphore's max on the next request (never below the current holders).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
pub use fastpatch_locksmith_core::fleetlock::{
    check_request, valid_group, Accepted, ClientParams, ErrorBody, Refused, Request, DEFAULT_GROUP,
};

use crate::etcd::EtcdStore;
use crate::semaphore::SemaphoreError;
use crate::store::{CoordError, Coordinator, RetryPolicy};

fn error(status: StatusCode, kind: &str, value: impl Into<String>) -> Response {
    (
        status,
        Json(ErrorBody {
            kind: kind.into(),
            value: value.into(),
        }),
    )
        .into_response()
}

type Stamp = Option<(SystemTime, u64)>;

/// The group → slots file, re-read when its modification time or size changes.
pub struct GroupConfig {
    path: PathBuf,
    cache: Mutex<(Stamp, BTreeMap<String, i64>)>,
}

impl GroupConfig {
    pub fn new(path: PathBuf) -> Self {
        GroupConfig {
            path,
            cache: Mutex::new((None, BTreeMap::new())),
        }
    }

    /// The current slot counts (the last good reading if the file is unreadable).
    pub fn groups(&self) -> BTreeMap<String, i64> {
        let stamp = std::fs::metadata(&self.path)
            .ok()
            .and_then(|m| Some((m.modified().ok()?, m.len())));
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if stamp.is_some() && stamp != cache.0 {
            if let Ok(text) = std::fs::read_to_string(&self.path) {
                let parsed: BTreeMap<String, i64> = fastpatch_update_conf::parse(&text, &self.path)
                    .into_iter()
                    .filter_map(|(k, v)| {
                        let n = v.parse::<i64>().ok().filter(|n| *n >= 0);
                        if n.is_none() || !valid_group(&k) {
                            tracing::warn!(group = %k, value = %v, "ignoring bad group line");
                        }
                        Some((k, n?))
                    })
                    .filter(|(k, _)| valid_group(k))
                    .collect();
                *cache = (stamp, parsed);
            }
        }
        cache.1.clone()
    }
}

/// Server state.
pub struct Server {
    store: EtcdStore,
    groups: GroupConfig,
}

impl Server {
    pub fn new(store: EtcdStore, groups: GroupConfig) -> Arc<Self> {
        Arc::new(Server { store, groups })
    }

    fn coordinator(&self, group: &str) -> Coordinator<EtcdStore> {
        let g = if group == DEFAULT_GROUP { "" } else { group };
        Coordinator::new(
            self.store.clone(),
            g,
            RetryPolicy::patient(std::time::Duration::from_secs(10)),
        )
    }
}

/// The axum router.
pub fn router(server: Arc<Server>) -> Router {
    Router::new()
        .route("/v1/pre-reboot", post(pre_reboot))
        .route("/v1/steady-state", post(steady_state))
        .with_state(server)
}

/// Validates header and body against the group file as it is now.
#[allow(clippy::result_large_err)]
fn parse(server: &Server, headers: &HeaderMap, body: &[u8]) -> Result<Accepted, Response> {
    let header = headers.get("fleet-lock-protocol").map(|v| v.as_bytes());
    check_request(header, body, &server.groups.groups())
        .map_err(|r| error(StatusCode::BAD_REQUEST, r.kind, r.value))
}

async fn pre_reboot(
    State(server): State<Arc<Server>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let Accepted { id, group, slots } = match parse(&server, &headers, &body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let c = server.coordinator(&group);
    let result = c
        .update(|sem, _, _| {
            // Apply a changed slot count first; never below the current holders.
            if sem.max != slots {
                let target = slots.max(sem.holders().len() as i64);
                sem.set_max(target)?;
            }
            sem.lock(&id)
        })
        .await;
    match result {
        Ok(_) => StatusCode::OK.into_response(),
        Err(CoordError::Semaphore(SemaphoreError::Full(_))) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "failed_lock",
            format!("all {slots} semaphore slots currently locked"),
        ),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "failed_lock",
            e.to_string(),
        ),
    }
}

async fn steady_state(
    State(server): State<Arc<Server>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let Accepted { id, group, .. } = match parse(&server, &headers, &body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    match server.coordinator(&group).unlock(&id).await {
        Ok(()) | Err(CoordError::Semaphore(SemaphoreError::NotHolder)) => {
            StatusCode::OK.into_response()
        }
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "failed_unlock",
            e.to_string(),
        ),
    }
}

/// Serves until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, server: Arc<Server>) -> std::io::Result<()> {
    axum::serve(listener, router(server)).await
}

/// FleetLock client errors.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("FleetLock client: {what}: {error}")]
    Setup { what: String, error: String },
    #[error("FleetLock request failed: {0}")]
    Http(String),
    #[error("FleetLock server said {status}: {kind}: {value}")]
    Refused {
        status: u16,
        kind: String,
        value: String,
    },
}

/// The client side (locksmithd's `fleetlock` strategy).
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    group: String,
    id: String,
    http: reqwest::Client,
}

impl Client {
    /// A client trusting the system's root certificates (and, with `ca_file`, that PEM bundle too:
    /// for a FleetLock server behind a private CA).
    pub fn new(
        base: &str,
        group: &str,
        id: &str,
        ca_file: Option<&std::path::Path>,
    ) -> Result<Self, ClientError> {
        install_tls_provider();
        let mut extra = Vec::new();
        if let Some(path) = ca_file {
            let pem = std::fs::read(path).map_err(|e| ClientError::Setup {
                what: format!("reading CA file {}", path.display()),
                error: e.to_string(),
            })?;
            let certs =
                reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| ClientError::Setup {
                    what: format!("parsing CA file {}", path.display()),
                    error: e.to_string(),
                })?;
            if certs.is_empty() {
                return Err(ClientError::Setup {
                    what: format!("parsing CA file {}", path.display()),
                    error: "no PEM certificate in it".into(),
                });
            }
            extra = certs;
        }
        let http = fastpatch_fetch::client::with_system_roots("FleetLock client", || {
            reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(30))
                .tls_certs_merge(extra.clone())
        })
        .map_err(|e| ClientError::Setup {
            what: "building the HTTP client".into(),
            error: e.to_string(),
        })?;
        Ok(Client {
            base: base.trim_end_matches('/').to_string(),
            group: if group.is_empty() {
                DEFAULT_GROUP.into()
            } else {
                group.into()
            },
            id: id.into(),
            http,
        })
    }

    async fn call(&self, path: &str) -> Result<(), ClientError> {
        let body = Request {
            client_params: ClientParams {
                id: self.id.clone(),
                group: self.group.clone(),
            },
        };
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .header("fleet-lock-protocol", "true")
            .json(&body)
            .send()
            .await
            .map_err(|e| ClientError::Http(fastpatch_fetch::client::error_chain(&e)))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let text = resp.text().await.unwrap_or_default();
        let e: ErrorBody = serde_json::from_str(&text).unwrap_or(ErrorBody {
            kind: "unknown".into(),
            value: text,
        });
        Err(ClientError::Refused {
            status: status.as_u16(),
            kind: e.kind,
            value: e.value,
        })
    }

    /// Takes a reboot slot.
    pub async fn pre_reboot(&self) -> Result<(), ClientError> {
        self.call("/v1/pre-reboot").await
    }

    /// Releases the slot.
    pub async fn steady_state(&self) -> Result<(), ClientError> {
        self.call("/v1/steady-state").await
    }
}

/// reqwest is built with rustls but no bundled crypto provider (we use ring, as the engine does,
/// to avoid building aws-lc); a provider must be installed before any client is built.
/// Idempotent: a second install is refused and ignored.
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
