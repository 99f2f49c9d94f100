//! etcd with authentication on (users + roles, as a hardened cluster runs it): locksmith's
//! coordinator works with `LOCKSMITHD_ETCD_USERNAME`/`PASSWORD` limited to the rebootlock prefix,
//! and wrong or missing credentials give clear errors without touching the semaphore.

use std::process::Command;

use fastpatch_locksmith::etcd::{EtcdConfig, EtcdStore};
use fastpatch_locksmith::store::{Coordinator, RetryPolicy};
use fastpatch_locksmith::testsupport::EtcdServer;

fn etcdctl(endpoint: &str, user: Option<&str>, args: &[&str]) -> (bool, String) {
    let mut cmd = Command::new("etcdctl");
    cmd.env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"));
    if let Some(u) = user {
        cmd.arg(format!("--user={u}"));
    }
    let o = cmd
        .args(args)
        .output()
        .expect("etcdctl (Debian package etcd-client) must be installed");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    (o.status.success(), text)
}

fn must(endpoint: &str, user: Option<&str>, args: &[&str]) {
    let (ok, text) = etcdctl(endpoint, user, args);
    assert!(ok, "etcdctl {args:?}: {text}");
}

#[tokio::test]
async fn locks_with_a_role_limited_user_and_refuses_bad_credentials() {
    let etcd = EtcdServer::start().unwrap_or_else(|e| panic!("{e}"));
    let ep = etcd.endpoint();
    must(&ep, None, &["user", "add", "root:rootpw"]);
    // etcd 3.4 wants the root user to hold the root role before auth can be enabled.
    let _ = etcdctl(&ep, None, &["user", "grant-role", "root", "root"]);
    must(&ep, None, &["role", "add", "locksmith"]);
    must(
        &ep,
        None,
        &[
            "role",
            "grant-permission",
            "locksmith",
            "--prefix=true",
            "readwrite",
            "coreos.com/updateengine/rebootlock/",
        ],
    );
    must(&ep, None, &["user", "add", "node:nodepw"]);
    must(&ep, None, &["user", "grant-role", "node", "locksmith"]);
    must(&ep, None, &["auth", "enable"]);

    let with = |user: Option<&str>, password: Option<&str>| {
        let mut cfg = EtcdConfig::local().with_endpoints(&ep);
        cfg.username = user.map(str::to_string);
        cfg.password = password.map(str::to_string);
        cfg
    };

    // The limited user can run the whole lock cycle.
    let store = EtcdStore::connect(&with(Some("node"), Some("nodepw")))
        .await
        .expect("connect as node");
    let coord = Coordinator::new(store, "", RetryPolicy::short());
    coord
        .lock("auth-machine", None)
        .await
        .expect("lock as node");
    assert_eq!(coord.get().await.unwrap().holders(), ["auth-machine"]);

    // A wrong password fails with an authentication error, at connect or at first use.
    let wrong = match EtcdStore::connect(&with(Some("node"), Some("wrong"))).await {
        Err(e) => e.to_string(),
        Ok(s) => match Coordinator::new(s, "", RetryPolicy::short()).get().await {
            Err(e) => e.to_string(),
            Ok(sem) => panic!("read the semaphore with a wrong password: {sem:?}"),
        },
    };
    assert!(
        wrong.to_lowercase().contains("auth"),
        "the error should say authentication failed: {wrong}"
    );

    // No credentials at all: refused as well, and nobody changed the holder list.
    let anonymous = match EtcdStore::connect(&with(None, None)).await {
        Err(e) => Err(e.to_string()),
        Ok(s) => Coordinator::new(s, "", RetryPolicy::short())
            .lock("intruder", None)
            .await
            .map_err(|e| e.to_string()),
    };
    assert!(anonymous.is_err(), "an anonymous client took a lock");
    let (_, holders) = etcdctl(
        &ep,
        Some("root:rootpw"),
        &[
            "get",
            "--print-value-only",
            "coreos.com/updateengine/rebootlock/semaphore",
        ],
    );
    assert!(
        holders.contains("auth-machine") && !holders.contains("intruder"),
        "{holders}"
    );

    // The same user outside its prefix is refused by etcd (the role really limits it).
    let (ok, text) = etcdctl(&ep, Some("node:nodepw"), &["put", "other/key", "x"]);
    assert!(!ok && text.to_lowercase().contains("permission"), "{text}");
}
