//! Test support: a private PostgreSQL cluster per test binary, fresh databases,
//! servers on loopback, and Omaha request helpers.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};

use fastpatch_omaha::{Event, Request, RequestApp, Response, UpdateCheck, FLATCAR_APP_ID};
use fastpatch_server::{Config, ManualClock, Server, ServerHandle};

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

struct PgCluster {
    base_url: String,
}

static PG: OnceLock<Result<PgCluster, String>> = OnceLock::new();

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("running {cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Starts (once) a PostgreSQL 15 cluster owned by the `postgres` OS user in a
/// temp dir, on a free loopback port; a watchdog stops it and removes the dir
/// when this test process exits. FASTPATCH_TEST_DATABASE_URL overrides.
fn start_cluster() -> Result<PgCluster, String> {
    if let Ok(url) = std::env::var("FASTPATCH_TEST_DATABASE_URL") {
        return Ok(PgCluster {
            base_url: url
                .trim_end_matches('/')
                .rsplit_once('/')
                .map(|(b, _)| b.to_owned())
                .unwrap_or(url),
        });
    }
    let dir = PathBuf::from(format!(
        "/tmp/fastpatch-pg-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(dir.join("sock")).map_err(|e| e.to_string())?;
    run(Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(&dir))?;
    let data = dir.join("data");
    run(Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(format!("{PG_BIN}/initdb"))
        .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
        .arg(&data))?;
    let port = free_port();
    let opts = format!(
        "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300",
        dir.join("sock").display()
    );
    run(Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(format!("{PG_BIN}/pg_ctl"))
        .args(["-w", "-D"])
        .arg(&data)
        .args(["-l"])
        .arg(dir.join("log"))
        .args(["-o", &opts, "start"]))?;
    // Stop the cluster when this process is gone, even after a panic.
    let watchdog = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 1; done; runuser -u postgres -- {PG_BIN}/pg_ctl -D {data} -m immediate stop >/dev/null 2>&1; rm -rf {dir}",
        pid = std::process::id(),
        data = data.display(),
        dir = dir.display()
    );
    Command::new("setsid")
        .args(["sh", "-c", &watchdog])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("starting the watchdog: {e}"))?;
    Ok(PgCluster {
        base_url: format!("postgres://postgres@127.0.0.1:{port}"),
    })
}

/// A fresh, empty database URL for `backend` (SQLite: a file in `dir`).
pub async fn fresh_database(backend: Backend, dir: &Path) -> String {
    match backend {
        Backend::Sqlite => format!("sqlite://{}?mode=rwc", dir.join("test.db").display()),
        Backend::Postgres => {
            let cluster = match PG.get_or_init(start_cluster) {
                Ok(c) => c,
                Err(e) => panic!("PostgreSQL could not be started for the tests (needs {PG_BIN} and the postgres user): {e}"),
            };
            let name = format!("t{}", uuid_like());
            sqlx::any::install_default_drivers();
            use sqlx::Connection;
            let mut conn = sqlx::AnyConnection::connect(&format!("{}/postgres", cluster.base_url))
                .await
                .expect("connecting to the test cluster");
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                .execute(&mut conn)
                .await
                .expect("creating a test database");
            format!("{}/{name}", cluster.base_url)
        }
    }
}

fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0)
    )
}

pub struct TestServer {
    pub handle: ServerHandle,
    pub dir: tempfile::TempDir,
    pub url: String,
    pub db_url: String,
    pub clock: Arc<ManualClock>,
    pub http: reqwest::Client,
}

pub fn start_time() -> chrono::DateTime<chrono::Utc> {
    // A Wednesday, 12:00 UTC.
    chrono::DateTime::parse_from_rfc3339("2026-03-04T12:00:00Z")
        .expect("valid")
        .to_utc()
}

pub async fn server(backend: Backend) -> TestServer {
    let dir = tempfile::tempdir().expect("tempdir");
    let db_url = fresh_database(backend, dir.path()).await;
    server_on(&db_url, dir).await
}

pub async fn server_on(db_url: &str, dir: tempfile::TempDir) -> TestServer {
    server_configured(db_url, dir, |_| {}).await
}

/// A server on a fresh database, with `tune` applied to its config.
pub async fn server_with(backend: Backend, tune: impl FnOnce(&mut Config)) -> TestServer {
    let dir = tempfile::tempdir().expect("tempdir");
    let db_url = fresh_database(backend, dir.path()).await;
    server_configured(&db_url, dir, tune).await
}

/// Another server process on an existing database (its own data dir), with `tune` applied.
pub async fn server_with_db(db_url: &str, tune: impl FnOnce(&mut Config)) -> TestServer {
    server_configured(db_url, tempfile::tempdir().expect("tempdir"), tune).await
}

pub async fn server_configured(
    db_url: &str,
    dir: tempfile::TempDir,
    tune: impl FnOnce(&mut Config),
) -> TestServer {
    let clock = Arc::new(ManualClock::new(start_time()));
    let mut config = Config::for_tests(dir.path());
    config.database_url = Some(db_url.to_owned());
    config.clock = clock.clone();
    tune(&mut config);
    let handle = Server::start(config).await.expect("server starts");
    let url = format!("{}/v1/update/", handle.base_url());
    TestServer {
        handle,
        dir,
        url,
        db_url: db_url.to_owned(),
        clock,
        http: {
            // reqwest may be built with rustls but no provider (the engine's choice, unified
            // across the workspace): install ring before building a client.
            let _ = rustls::crypto::ring::default_provider().install_default();
            reqwest::Client::new()
        },
    }
}

impl TestServer {
    /// Publishes `bytes` as `version` for amd64 and points `channel` at it.
    pub async fn publish(
        &self,
        version: &str,
        bytes: &[u8],
        channel: Option<&str>,
    ) -> fastpatch_server::store::PackageRow {
        let file = self.dir.path().join(format!("payload-{version}.gz"));
        std::fs::write(&file, bytes).expect("writing payload");
        let now = self.clock.now_ts();
        let pkg = fastpatch_server::payloads::publish(
            self.handle.store(),
            self.dir.path(),
            &fastpatch_server::payloads::Publish {
                app_id: FLATCAR_APP_ID,
                version,
                arch: "amd64",
                file: &file,
                file_name: Some("flatcar_production_update.gz"),
                base_url: None,
            },
            now,
        )
        .await
        .expect("publish");
        if let Some(ch) = channel {
            self.handle
                .store()
                .set_channel(FLATCAR_APP_ID, ch, version, now)
                .await
                .expect("set channel");
        }
        pkg
    }

    pub async fn post(&self, body: impl Into<reqwest::Body>) -> (u16, String) {
        let r = self
            .http
            .post(&self.url)
            .body(body)
            .send()
            .await
            .expect("POST");
        (r.status().as_u16(), r.text().await.expect("body"))
    }

    /// One app, update check, optional events; returns the parsed response.
    pub async fn check(
        &self,
        machine: &str,
        version: &str,
        track: &str,
        events: Vec<Event>,
        update_check: bool,
    ) -> Response {
        let req = request(machine, version, track, events, update_check);
        let (status, body) = self.post(req.to_xml()).await;
        assert_eq!(status, 200, "{body}");
        Response::parse(body.as_bytes()).unwrap_or_else(|e| panic!("bad response {e}: {body}"))
    }

    pub async fn instance_status(&self, machine: &str) -> String {
        self.handle
            .store()
            .instance(FLATCAR_APP_ID, machine)
            .await
            .expect("db")
            .expect("instance")
            .status
            .as_str()
            .to_owned()
    }
}

pub trait NowTs {
    fn now_ts(&self) -> i64;
}
impl NowTs for ManualClock {
    fn now_ts(&self) -> i64 {
        use fastpatch_server::Clock;
        self.now().timestamp()
    }
}

pub fn request<'a>(
    machine: &'a str,
    version: &'a str,
    track: &'a str,
    events: Vec<Event>,
    update_check: bool,
) -> Request<'a> {
    Request {
        protocol: "3.0".into(),
        version: Some("update_engine-0.4.10".into()),
        updater_version: Some("update_engine-0.4.10".into()),
        install_source: Some("scheduler".into()),
        is_machine: Some("1".into()),
        os: None,
        apps: vec![RequestApp {
            appid: format!("{{{FLATCAR_APP_ID}}}").into(),
            version: Some(version.into()),
            track: Some(track.into()),
            machine_id: Some(machine.into()),
            machine_alias: Some("".into()),
            board: Some("amd64-usr".into()),
            ping: Some(fastpatch_omaha::Ping {
                active: Some("1".into()),
                ..Default::default()
            }),
            update_check: update_check.then(UpdateCheck::default),
            events,
            ..Default::default()
        }],
        extra: vec![],
    }
}

/// The update offered to the first app, if any.
pub fn offered(resp: &Response) -> Option<fastpatch_omaha::UpdateOffer> {
    match resp.apps[0]
        .update_check
        .as_ref()?
        .validate()
        .expect("valid updatecheck")
    {
        fastpatch_omaha::CheckOutcome::Update(o) => Some(o),
        fastpatch_omaha::CheckOutcome::NoUpdate { .. } => None,
    }
}

/// Generates `<name>_sqlite` and `<name>_postgres` tests from `async fn name(b: Backend)`.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::support::Backend::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::support::Backend::Postgres).await
                }
            )*
        }
    };
}

/// Writes `image` and its signed payload (zstd, fastpatch's default, or Flatcar-compatible
/// bzip2) under `dir` as `NAME.payload`.
pub fn signed_payload(
    dir: &Path,
    name: &str,
    image: &[u8],
    key: &rsa::RsaPrivateKey,
    flatcar: bool,
) -> PathBuf {
    use fastpatch_payload::generate::{Compression, GenerateOptions};
    let img = dir.join(format!("{name}.img"));
    std::fs::write(&img, image).unwrap();
    let out = dir.join(format!("{name}.payload"));
    let opts = GenerateOptions {
        compression: if flatcar {
            Compression::Bz2
        } else {
            Compression::Zstd
        },
        flatcar_compatible: flatcar,
        ..GenerateOptions::default()
    };
    fastpatch_payload::generate::generate(
        &img,
        std::slice::from_ref(key),
        &out,
        &opts,
        &mut |_, _| {},
    )
    .unwrap();
    out
}

/// A new key pair in `dir` (`k.pem`, `k.pub.pem`).
pub fn signing_key(dir: &Path) -> rsa::RsaPrivateKey {
    fastpatch_payload::keys::write_key_pair(&dir.join("k.pem"), &dir.join("k.pub.pem")).unwrap()
}

/// Checks the newest `group_policy_changed` entry of `group`: the one entry every
/// transport (CLI, REST API, dashboard) writes for a policy change, word for word.
pub async fn assert_policy_entry(
    store: &fastpatch_server::Store,
    app: &str,
    group: &str,
    message: &str,
) {
    let entries = store
        .activity(None, 100)
        .await
        .expect("read the activity feed");
    let newest = entries
        .iter()
        .find(|a| a.kind == "group_policy_changed" && a.group_name.as_deref() == Some(group))
        .unwrap_or_else(|| panic!("no policy entry for group {group} in {entries:#?}"));
    assert_eq!(newest.app_id.as_deref(), Some(app));
    assert_eq!(newest.version, None);
    assert_eq!(newest.message, message);
}
