//! The `fastpatch-server` admin commands, run as the real binary against a
//! SQLite data dir and a real PostgreSQL: publish, register (CDN), channels,
//! promote, policies, instances.

use crate::support;

use std::path::Path;
use std::process::Command;

use fastpatch_omaha::FLATCAR_APP_ID;
use fastpatch_server::Store;
use support::{fresh_database, Backend};

struct Cli<'a> {
    data_dir: &'a Path,
    db_url: Option<String>,
}

impl Cli<'_> {
    fn run(&self, args: &[&str]) -> (bool, String) {
        self.run_env(args, &[])
    }

    /// `run` with extra environment variables.
    fn run_env(&self, args: &[&str], env: &[(&str, std::path::PathBuf)]) -> (bool, String) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_fastpatch-server"));
        cmd.envs(env.iter().map(|(k, v)| (k, v)));
        cmd.arg("--data-dir").arg(self.data_dir);
        if let Some(url) = &self.db_url {
            cmd.arg("--database-url").arg(url);
        }
        let out = cmd
            .args(args)
            .env("RUST_LOG", "warn")
            .output()
            .expect("run the CLI");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    fn ok(&self, args: &[&str]) -> String {
        let (ok, text) = self.run(args);
        assert!(ok, "{args:?} failed:\n{text}");
        text
    }
}

async fn admin_commands(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let db_url = fresh_database(b, dir.path()).await;
    let data_dir = dir.path().join("data");
    let cli = Cli {
        data_dir: &data_dir,
        db_url: (b == Backend::Postgres).then(|| db_url.clone()),
    };
    let payload = dir.path().join("flatcar_production_update.gz");
    std::fs::write(&payload, vec![5u8; 4096]).unwrap();
    let out = cli.ok(&[
        "publish",
        payload.to_str().unwrap(),
        "--version",
        "3732.0.0",
        "--channel",
        "alpha",
    ]);
    assert!(
        out.contains("published 3732.0.0 amd64")
            && out.contains("channel alpha now offers 3732.0.0"),
        "{out}"
    );
    let out = cli.ok(&["promote", "--from", "alpha", "--to", "beta"]);
    assert!(out.contains("channel beta now offers 3732.0.0"), "{out}");
    let out = cli.ok(&["channel", "list"]);
    assert!(
        out.lines()
            .any(|l| l.split_whitespace().eq(["beta", "3732.0.0"])),
        "{out}"
    );
    let (ok, out) = cli.run(&["channel", "set", "stable", "9.9.9"]);
    assert!(!ok && out.contains("no package for version 9.9.9"), "{out}");

    cli.ok(&[
        "group",
        "set",
        "beta",
        "--max-concurrent",
        "3",
        "--max-per-period",
        "10",
        "--period-secs",
        "7200",
        "--office-hours",
        "true",
        "--tz",
        "Europe/Berlin",
        "--days",
        "mon,tue,wed",
        "--hours",
        "08:30-16:00",
        "--safe-mode",
        "false",
        "--rollout-secs",
        "86400",
    ]);
    let (ok, out) = cli.run(&["group", "set", "beta", "--tz", "Mars/Phobos"]);
    assert!(!ok && out.contains("IANA"), "{out}");

    let sha1 = "a94a8fe5ccb19ba61c4c0873d391e987982fbbd3";
    let sha256 = "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae";
    let extra = format!("oem-azure.gz:77:{sha1}:{sha256}");
    let out = cli.ok(&[
        "register",
        "--version",
        "3815.2.0",
        "--url",
        "https://cdn.example/3815.2.0/",
        "--file-name",
        "flatcar_production_update.gz",
        "--size",
        "1000",
        "--sha1",
        sha1,
        "--sha256",
        sha256,
        "--extra-file",
        &extra,
        "--channel",
        "stable",
    ]);
    assert!(
        out.contains("1 extra files") && out.contains("channel stable now offers 3815.2.0"),
        "{out}"
    );
    let (ok, out) = cli.run(&[
        "register",
        "--version",
        "3816.0.0",
        "--url",
        "https://cdn.example/u.gz",
        "--size",
        "1",
        "--sha1",
        "x",
        "--sha256",
        sha256,
    ]);
    assert!(!ok && out.contains("sha1"), "{out}");
    let out = cli.ok(&["packages"]);
    assert!(
        out.contains("https://cdn.example/3815.2.0/")
            && out.contains("(hosted)")
            && out.contains("+ oem-azure.gz"),
        "{out}"
    );
    // Bytes that are no payload are not hosted as a delta.
    let (ok, out) = cli.run(&[
        "delta",
        "publish",
        payload.to_str().unwrap(),
        "--version",
        "3815.2.0",
        "--from",
        "3732.0.0",
    ]);
    assert!(!ok && out.contains("is not a payload"), "{out}");
    // No delta was ever made: a retry says so and fails.
    let (ok, out) = cli.run(&["delta", "retry", "3815.2.0", "--from", "3602.2.0"]);
    assert!(
        !ok && out.contains("not found: delta 3602.2.0 → 3815.2.0 (amd64)"),
        "{out}"
    );

    cli.ok(&[
        "seed-instances",
        "--count",
        "3",
        "--group",
        "stable",
        "--version",
        "3602.2.0",
        "--prefix",
        "cli-",
    ]);
    let out = cli.ok(&["instances", "--group", "stable", "--limit", "2"]);
    let ids: Vec<&str> = out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(ids, ["cli-00000000", "cli-00000001"], "{out}");
    let out = cli.ok(&["instances", "--after", "cli-00000001"]);
    assert!(out.starts_with("cli-00000002"), "{out}");
    let out = cli.ok(&["instances", "--status", "undefined", "--limit", "1"]);
    assert!(out.starts_with("cli-00000000"), "{out}");
    let out = cli.ok(&["floor", "add", "3732.0.0"]);
    assert_eq!(out.trim(), "3732.0.0");
    let out = cli.ok(&["floor", "add", "3732.0.0"]);
    assert!(out.contains("3732.0.0 was a floor already"), "{out}");
    let out = cli.ok(&["floor", "remove", "3732.0.0"]);
    assert_eq!(out.trim(), "");
    let (ok, out) = cli.run(&["instances", "--status", "bogus"]);
    assert!(
        !ok && out.contains("unknown instance status \"bogus\""),
        "{out}"
    );

    // What the commands wrote, read back through the store.
    let url = match b {
        Backend::Sqlite => format!(
            "sqlite://{}?mode=rwc",
            data_dir.join("fastpatch.db").display()
        ),
        Backend::Postgres => db_url,
    };
    let store = Store::open(&url).await.unwrap();
    let g = store.group(FLATCAR_APP_ID, "beta").await.unwrap().unwrap();
    assert_eq!(
        (g.max_concurrent, g.max_updates_per_period, g.period_secs),
        (Some(3), Some(10), 7200)
    );
    assert!(g.office_hours && !g.safe_mode);
    assert_eq!(
        (
            g.office_tz.as_str(),
            g.office_days,
            g.office_start_minute,
            g.office_end_minute
        ),
        ("Europe/Berlin", 0b111, 510, 960)
    );
    assert_eq!(g.rollout_duration_secs, 86400);
    // One entry, from the `group set` that worked; the refused one wrote none.
    support::assert_policy_entry(
        &store,
        FLATCAR_APP_ID,
        "beta",
        "group beta policy: safe mode on → off; max updates per period unlimited → 10; \
         period 3600 s → 7200 s; max concurrent unlimited → 3; office hours off → on; \
         office window mon,tue,wed,thu,fri 09:00–17:00 UTC → mon,tue,wed 08:30–16:00 Europe/Berlin; \
         staged rollout 0 s → 86400 s",
    )
    .await;
    let beta_entries = store.activity(None, 100).await.unwrap();
    let beta_entries = beta_entries
        .iter()
        .filter(|a| a.kind == "group_policy_changed" && a.group_name.as_deref() == Some("beta"));
    assert_eq!(beta_entries.count(), 1);
    let entries = store.activity(None, 100).await.unwrap();
    let floors: Vec<&str> = entries
        .iter()
        .filter(|a| a.kind.starts_with("floor_"))
        .map(|a| a.message.as_str())
        .collect();
    assert_eq!(
        floors,
        [
            "floor 3732.0.0 removed",
            "floor 3732.0.0 added (by an operator): machines below it pass through it first"
        ]
    );
    let beta = store
        .channel(FLATCAR_APP_ID, "beta")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(beta.version.as_deref(), Some("3732.0.0"));
    let pkg = store
        .find_package(FLATCAR_APP_ID, "3815.2.0", "amd64")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(store.package_files(&pkg.id).await.unwrap()[0].size, 77);
    store.close().await;
}

/// `fastpatch-server` with no arguments: serves on SQLite under the data dir,
/// says where and how to publish, and stops cleanly on SIGTERM.
#[test]
fn no_arguments_serves_with_defaults() {
    use std::io::{BufRead, BufReader, Read};
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_fastpatch-server"))
        .env("FASTPATCH_DATA_DIR", dir.path().join("data"))
        .env("FASTPATCH_LISTEN", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = child.stderr.take().unwrap();
    let log = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = err.read_to_string(&mut text);
        text
    });
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut banner = String::new();
    while !banner.contains("publish flatcar_production_update.gz") {
        let mut line = String::new();
        if out.read_line(&mut line).unwrap() == 0 {
            panic!("server exited early:\n{banner}");
        }
        banner.push_str(&line);
    }
    assert!(
        banner.contains(&format!("listening on http://127.0.0.1:{port}")),
        "{banner}"
    );
    // No transparent huge pages for the server (see `disable_transparent_huge_pages`).
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    assert!(
        status
            .lines()
            .any(|l| l.split_whitespace().eq(["THP_enabled:", "0"])),
        "transparent huge pages are on for the server: {status}"
    );
    assert!(
        banner.contains("SQLite") && banner.contains("/v1/update/"),
        "{banner}"
    );
    assert!(
        banner.contains("delta payloads:   off (--delta-signing-key turns them on)"),
        "the banner says deltas are off and how to turn them on: {banner}"
    );
    assert!(
        banner.contains("upstream sync:    off (--sync-upstream URL"),
        "the banner says the upstream sync is off and how to turn it on: {banner}"
    );
    assert!(
        banner.contains(&format!("dashboard:        http://127.0.0.1:{port}/ui/"))
            && banner.contains("log in with the admin token"),
        "the banner says where the dashboard is and how to log in: {banner}"
    );
    let get = |path: &str| {
        let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        std::io::Write::write_all(&mut conn, format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
            .unwrap();
        let mut answer = String::new();
        conn.read_to_string(&mut answer).unwrap();
        answer
    };
    let health = get("/health");
    assert!(
        health.starts_with("HTTP/1.0 200") || health.starts_with("HTTP/1.1 200"),
        "{health}"
    );
    let ui = get("/ui/");
    assert!(
        ui.contains(" 303 ") && ui.contains("location: /ui/login"),
        "the dashboard the banner names answers (with its login page): {ui}"
    );
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    let mut rest = String::new();
    let _ = out.read_to_string(&mut rest);
    assert!(status.success(), "exit status {status:?}");
    assert!(dir.path().join("data/fastpatch.db").exists());
    let token = dir.path().join("data/admin-token");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&token).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the generated admin token is private");
    // A log written to a pipe carries no colour codes.
    let log = log.join().unwrap();
    assert!(log.contains("INFO"), "the server logged: {log}");
    assert!(
        !log.contains('\u{1b}'),
        "ANSI escape codes in a piped log: {log}"
    );
}

/// An admin token file whose mode was widened is put back to 0600 at the next start.
#[test]
fn a_widened_admin_token_file_is_made_private_again() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let token = data.join("admin-token");
    std::fs::write(&token, "0123456789abcdef\n").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_fastpatch-server"))
        .env("FASTPATCH_DATA_DIR", &data)
        .env("FASTPATCH_LISTEN", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The banner's first line comes after the token was read.
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let mode = std::fs::metadata(&token).unwrap().permissions().mode();
    assert!(line.contains("listening"), "{line}");
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(
        std::fs::read_to_string(&token).unwrap(),
        "0123456789abcdef\n",
        "token kept"
    );
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("readable by others"), "{log}");
}

both_backends!(admin_commands);

#[test]
fn publish_with_a_signing_key_hosts_both_payloads_of_an_image() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let cli = Cli {
        data_dir: &data_dir,
        db_url: None,
    };
    let (key, public) = (dir.path().join("k.pem"), dir.path().join("k.pub.pem"));
    fastpatch_payload::keys::write_key_pair(&key, &public).unwrap();
    let image = dir.path().join("usr.img");
    let text: Vec<u8> = (0..1 << 20).map(|i| b"usr image text "[i % 15]).collect();
    std::fs::write(&image, text).unwrap();
    // A key that is not a key: a clear error, nothing published, no work files left.
    let (ok, out) = cli.run(&[
        "publish",
        image.to_str().unwrap(),
        "--version",
        "2.0.0",
        "--signing-key",
        public.to_str().unwrap(),
    ]);
    assert!(!ok && out.contains("loading the signing key"), "{out}");
    let out = cli.ok(&[
        "publish",
        image.to_str().unwrap(),
        "--version",
        "2.0.0",
        "--channel",
        "stable",
        "--signing-key",
        key.to_str().unwrap(),
    ]);
    assert!(
        out.contains("making the zstd payload: 100 %")
            && out.contains("published 2.0.0 amd64 as flatcar_production_update.gz")
            && out.contains("as a second payload of the same image")
            && out.contains("channel stable now offers 2.0.0"),
        "{out}"
    );
    let listed = cli.ok(&["packages"]);
    let ops: Vec<&str> = listed
        .lines()
        .filter(|l| l.contains("operations"))
        .collect();
    assert_eq!(ops.len(), 2, "{listed}");
    assert!(ops[0].contains("REPLACE_ZSTD"), "{listed}");
    assert!(
        ops[1].trim_start().starts_with("also") && ops[1].ends_with("served 0 bytes"),
        "{listed}"
    );
    assert!(
        ops[1].contains("operations REPLACE,REPLACE_BZ ")
            || ops[1].contains("operations REPLACE_BZ "),
        "{listed}"
    );
    let left: Vec<String> = std::fs::read_dir(&data_dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("publish-work"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// `sync` mirrors another server's channel once, prints what it did with download progress,
/// and says "up to date" the second time; a bad upstream URL is a one-line error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_mirrors_an_upstream_channel_once() {
    let dir = tempfile::tempdir().unwrap();
    let up = support::server(Backend::Sqlite).await;
    let key = support::signing_key(dir.path());
    let image: Vec<u8> = (0..1 << 20).map(|i| b"upstream usr "[i % 13]).collect();
    let payload = support::signed_payload(dir.path(), "os", &image, &key, true);
    up.publish("2.0.0", &std::fs::read(&payload).unwrap(), Some("stable"))
        .await;
    let data_dir = dir.path().join("data");
    let upstream = up.url.clone();
    let public = dir.path().join("k.pub.pem");
    let run = move |args: Vec<String>| {
        let data_dir = data_dir.clone();
        tokio::task::spawn_blocking(move || {
            let cli = Cli {
                data_dir: &data_dir,
                db_url: None,
            };
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            // No system CA certificates (a minimal OS): a plain-HTTP upstream still works.
            let no_ca = [
                ("SSL_CERT_FILE", data_dir.join("no-ca-bundle.pem")),
                ("SSL_CERT_DIR", data_dir.join("no-ca-dir")),
            ];
            cli.run_env(&args, &no_ca)
        })
    };
    let args = vec![
        "sync".to_owned(),
        "--upstream".to_owned(),
        upstream.clone(),
        "--key".to_owned(),
        public.display().to_string(),
    ];
    let (ok, out) = run(args.clone()).await.unwrap();
    assert!(ok, "{out}");
    assert!(
        out.contains("stable 2.0.0 (amd64) flatcar_production_update.gz:")
            && out.contains("(100%)")
            && out.contains("stable (amd64): mirrored 2.0.0")
            && out.contains("channel stable -> 2.0.0"),
        "{out}"
    );
    let (ok, out) = run(args).await.unwrap();
    assert!(ok && out.contains("stable (amd64): up to date"), "{out}");
    let (ok, out) = run(vec!["sync".into(), "--upstream".into(), "ftp://x/".into()])
        .await
        .unwrap();
    assert!(
        !ok && out.contains("want an http:// or https:// URL"),
        "{out}"
    );
    up.handle.shutdown().await;
}
