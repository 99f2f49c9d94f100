//! [`LockStore`] on etcd's v3 API (etcd-client, gRPC).
//!
//! Reads are one transaction of three range reads (the semaphore key, the holders' marker
//! keys, the holders' lease keys) so they see one revision. Writes are one transaction guarded
//! by `mod_revision(semaphore key) == expected`.

use std::path::PathBuf;
use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, Identity, PutOptions,
    TlsOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};

use crate::keys;
use crate::semaphore::Semaphore;
use crate::store::{LockStore, Snapshot, StoreError, Write};

/// How to reach etcd (locksmith's flags / `LOCKSMITHD_ETCD_*`).
#[derive(Debug, Clone, Default)]
pub struct EtcdConfig {
    /// `http://host:port` or `https://host:port`, one or more.
    pub endpoints: Vec<String>,
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub username: Option<String>,
    pub password: Option<String>,
    /// Per-request timeout.
    pub timeout: Duration,
}

impl EtcdConfig {
    /// locksmith's default endpoint.
    pub fn local() -> Self {
        EtcdConfig {
            endpoints: vec!["http://127.0.0.1:2379".into()],
            timeout: Duration::from_secs(5),
            ..Default::default()
        }
    }

    /// Splits a comma-separated endpoint list.
    pub fn with_endpoints(mut self, list: &str) -> Self {
        self.endpoints = list
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect();
        self
    }
}

/// Errors setting up the client.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("reading {path}: {error}")]
    ReadFile {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("a client certificate needs both a certificate file and a key file")]
    HalfIdentity,
    #[error("no etcd endpoint given")]
    NoEndpoint,
    #[error("{0}")]
    Client(String),
}

/// The etcd v3 store.
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    timeout: Duration,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore").finish_non_exhaustive()
    }
}

fn read(path: &PathBuf) -> Result<Vec<u8>, ConnectError> {
    std::fs::read(path).map_err(|source| ConnectError::ReadFile {
        path: path.clone(),
        error: source,
    })
}

impl EtcdStore {
    /// Connects. A CA file alone is enough for TLS (no client certificate needed).
    pub async fn connect(cfg: &EtcdConfig) -> Result<Self, ConnectError> {
        if cfg.endpoints.is_empty() {
            return Err(ConnectError::NoEndpoint);
        }
        let timeout = if cfg.timeout.is_zero() {
            Duration::from_secs(5)
        } else {
            cfg.timeout
        };
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(timeout)
            .with_timeout(timeout)
            .with_keep_alive(Duration::from_secs(10), timeout);
        let wants_tls = cfg.ca_file.is_some() || cfg.cert_file.is_some();
        if wants_tls {
            let mut tls = TlsOptions::new();
            if let Some(ca) = &cfg.ca_file {
                tls = tls.ca_certificate(Certificate::from_pem(read(ca)?));
            }
            match (&cfg.cert_file, &cfg.key_file) {
                (Some(c), Some(k)) => tls = tls.identity(Identity::from_pem(read(c)?, read(k)?)),
                (None, None) => {}
                _ => return Err(ConnectError::HalfIdentity),
            }
            opts = opts.with_tls(tls);
        }
        if let Some(user) = &cfg.username {
            opts = opts.with_user(user.clone(), cfg.password.clone().unwrap_or_default());
        }
        // With TLS, plain `http://` endpoints are upgraded (locksmith users often write
        // `http://` by habit; etcd-client refuses TLS options on them).
        let endpoints: Vec<String> = cfg
            .endpoints
            .iter()
            .map(|e| {
                if wants_tls {
                    e.strip_prefix("http://")
                        .map(|rest| format!("https://{rest}"))
                        .unwrap_or_else(|| e.clone())
                } else {
                    e.clone()
                }
            })
            .collect();
        let client = Client::connect(endpoints, Some(opts))
            .await
            .map_err(|e| ConnectError::Client(e.to_string()))?;
        Ok(EtcdStore { client, timeout })
    }

    /// The underlying client (for leases and tests).
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// Grants a lease of `ttl`; returns its id.
    pub async fn grant_lease(&self, ttl: Duration) -> Result<i64, StoreError> {
        let secs = ttl.as_secs().max(1) as i64;
        let resp = self
            .client
            .clone()
            .lease_grant(secs, None)
            .await
            .map_err(classify)?;
        Ok(resp.id())
    }

    /// Refreshes a lease once; `Ok(false)` if the lease no longer exists.
    pub async fn keep_alive_once(&self, lease: i64) -> Result<bool, StoreError> {
        let fut = async {
            let (mut keeper, mut stream) = self
                .client
                .clone()
                .lease_keep_alive(lease)
                .await
                .map_err(classify)?;
            keeper.keep_alive().await.map_err(classify)?;
            match stream.message().await.map_err(classify)? {
                Some(resp) => Ok(resp.ttl() > 0),
                None => Err(StoreError::Unavailable("keep-alive stream closed".into())),
            }
        };
        tokio::time::timeout(self.timeout, fut)
            .await
            .map_err(|_| StoreError::Unavailable("lease keep-alive timed out".into()))?
    }

    /// Revokes a lease (its keys go at once).
    pub async fn revoke_lease(&self, lease: i64) -> Result<(), StoreError> {
        self.client
            .clone()
            .lease_revoke(lease)
            .await
            .map_err(classify)?;
        Ok(())
    }

    /// Checks that etcd answers (best-effort strategy's probe).
    pub async fn healthy(&self) -> bool {
        tokio::time::timeout(self.timeout, self.client.clone().status())
            .await
            .map(|r| r.is_ok())
            .unwrap_or(false)
    }
}

/// Sorts etcd-client errors into retryable and not.
fn classify(e: etcd_client::Error) -> StoreError {
    use etcd_client::Error as E;
    match &e {
        E::GRpcStatus(s) => match s.code() {
            tonic_code::Unauthenticated
            | tonic_code::PermissionDenied
            | tonic_code::InvalidArgument
            | tonic_code::FailedPrecondition => StoreError::Refused(s.message().to_string()),
            _ => StoreError::Unavailable(s.message().to_string()),
        },
        E::InvalidArgs(m) => StoreError::Refused(m.clone()),
        _ => StoreError::Unavailable(e.to_string()),
    }
}

mod tonic_code {
    pub use tonic::Code::*;
}

fn ids_under(prefix: &str, kvs: &[etcd_client::KeyValue]) -> std::collections::BTreeSet<String> {
    kvs.iter()
        .filter_map(|kv| kv.key_str().ok())
        .filter_map(|k| k.strip_prefix(prefix))
        .filter_map(keys::query_unescape)
        .collect()
}

impl LockStore for EtcdStore {
    async fn read(&self, key: &str) -> Result<Snapshot, StoreError> {
        let leased = keys::leased_prefix(key);
        let alive = keys::alive_prefix(key);
        let txn = Txn::new().and_then([
            TxnOp::get(key, None),
            TxnOp::get(leased.as_str(), Some(GetOptions::new().with_prefix())),
            TxnOp::get(alive.as_str(), Some(GetOptions::new().with_prefix())),
        ]);
        let resp = self.client.clone().txn(txn).await.map_err(classify)?;
        let revision = resp.header().map_or(0, |h| h.revision());
        let mut gets = resp.op_responses().into_iter().filter_map(|r| match r {
            TxnOpResponse::Get(g) => Some(g),
            _ => None,
        });
        let (Some(sem), Some(marks), Some(lives)) = (gets.next(), gets.next(), gets.next()) else {
            return Err(StoreError::Unavailable("short transaction response".into()));
        };
        let (value, mod_revision) = match sem.kvs().first() {
            Some(kv) => (
                Some(Semaphore::decode(kv.value()).map_err(StoreError::Corrupt)?),
                kv.mod_revision(),
            ),
            None => (None, 0),
        };
        Ok(Snapshot {
            value,
            mod_revision,
            revision,
            leased: ids_under(&leased, marks.kvs()),
            alive: ids_under(&alive, lives.kvs()),
        })
    }

    async fn write(&self, key: &str, w: &Write) -> Result<bool, StoreError> {
        let mut ops = vec![TxnOp::put(key, w.value.encode(), None)];
        for id in &w.detach {
            ops.push(TxnOp::delete(keys::leased_key(key, id), None));
            ops.push(TxnOp::delete(keys::alive_key(key, id), None));
        }
        for (id, lease) in &w.attach {
            ops.push(TxnOp::put(keys::leased_key(key, id), id.as_str(), None));
            ops.push(TxnOp::put(
                keys::alive_key(key, id),
                id.as_str(),
                Some(PutOptions::new().with_lease(*lease)),
            ));
        }
        let txn = Txn::new()
            .when([Compare::mod_revision(
                key,
                CompareOp::Equal,
                w.expect_mod_revision,
            )])
            .and_then(ops);
        let resp = self.client.clone().txn(txn).await.map_err(classify)?;
        Ok(resp.succeeded())
    }

    async fn wait_change(
        &self,
        key: &str,
        revision: i64,
        timeout: Duration,
        only_free: bool,
    ) -> Result<(), StoreError> {
        let fut = async {
            let opts = WatchOptions::new().with_start_revision(revision + 1);
            let mut stream = self
                .client
                .clone()
                .watch(key, Some(opts))
                .await
                .map_err(classify)?;
            loop {
                match stream.message().await.map_err(classify)? {
                    Some(resp) if resp.canceled() => return Ok(()),
                    Some(resp) if !resp.events().is_empty() => {
                        let free = |e: &etcd_client::Event| match e.kv() {
                            Some(kv) if !kv.value().is_empty() => Semaphore::decode(kv.value())
                                .map(|s| s.semaphore > 0)
                                .unwrap_or(true),
                            _ => true, // deleted: a new key will have a slot
                        };
                        if !only_free || resp.events().iter().any(free) {
                            return Ok(());
                        }
                    }
                    Some(_) => continue,
                    None => return Err(StoreError::Unavailable("watch stream closed".into())),
                }
            }
        };
        match tokio::time::timeout(timeout, fut).await {
            Ok(r) => r,
            Err(_) => Ok(()),
        }
    }
}
