//! `locksmithctl`: locksmith's command line, on etcd v3. Output and error texts are locksmith's.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use crate::etcd::{EtcdConfig, EtcdStore};
use crate::flags;
use crate::semaphore::Semaphore;
use crate::store::{CoordError, Coordinator, RetryPolicy};

const VALUE_FLAGS: &[&str] = &[
    "endpoint",
    "group",
    "etcd-cafile",
    "etcd-certfile",
    "etcd-keyfile",
    "etcd-username",
    "etcd-password",
    "machine-id-file",
    "reboot-command",
    "dbus-address",
];
const BOOL_FLAGS: &[&str] = &["h", "help"];

const USAGE: &str = "usage: locksmithctl [flags] <command> [args]

commands:
  status            show the semaphore: available slots, max, holders
  set-max N         set the number of slots
  lock [id]         take a slot for id (default: this machine's id)
  unlock [id]       release id's slot (default: this machine's id)
  reboot            take this machine's slot, then reboot
  send-need-reboot  emit the engine's StatusUpdate(UPDATE_STATUS_UPDATED_NEED_REBOOT)

flags (-flag or --flag; env LOCKSMITHCTL_<FLAG> also works):
  -endpoint URLS        etcd endpoints, comma-separated (default http://127.0.0.1:2379)
  -group NAME           semaphore group (default: the default group)
  -etcd-cafile FILE     CA certificate (alone is enough for TLS)
  -etcd-certfile FILE   client certificate
  -etcd-keyfile FILE    client key
  -etcd-username USER   etcd user
  -etcd-password PASS   etcd password
  -machine-id-file FILE machine id file (default /etc/machine-id)
  -reboot-command CMD   for `reboot`: run CMD instead of logind's Reboot
  -dbus-address ADDR    D-Bus address instead of the system bus
";

/// Reads a machine id file (trimmed); locksmith's error text if missing or empty.
pub fn read_machine_id(path: &std::path::Path) -> Result<String, String> {
    match std::fs::read_to_string(path) {
        Ok(s) if !s.trim().is_empty() => Ok(s.trim().to_string()),
        _ => Err("Cannot read machine-id".to_string()),
    }
}

struct Opts {
    etcd: EtcdConfig,
    group: String,
    machine_id_file: PathBuf,
    reboot_command: Option<String>,
    dbus_address: Option<String>,
}

fn opt(p: &flags::Parsed, name: &str) -> Option<String> {
    p.values.get(name).cloned().or_else(|| {
        let env = format!(
            "LOCKSMITHCTL_{}",
            name.to_ascii_uppercase().replace('-', "_")
        );
        std::env::var(env).ok().filter(|v| !v.is_empty())
    })
}

/// Runs locksmithctl with `args` (without the program name); returns the exit code.
pub fn run(args: &[String], out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    let parsed = match flags::parse(args, VALUE_FLAGS, BOOL_FLAGS) {
        Ok(p) => p,
        Err(e) => {
            let _ = writeln!(err, "{e}\n{USAGE}");
            return 2;
        }
    };
    if parsed.values.contains_key("h") || parsed.values.contains_key("help") {
        let _ = write!(out, "{USAGE}");
        return 0;
    }
    let mut etcd = EtcdConfig::local();
    if let Some(e) = opt(&parsed, "endpoint") {
        etcd = etcd.with_endpoints(&e);
    }
    etcd.ca_file = opt(&parsed, "etcd-cafile").map(PathBuf::from);
    etcd.cert_file = opt(&parsed, "etcd-certfile").map(PathBuf::from);
    etcd.key_file = opt(&parsed, "etcd-keyfile").map(PathBuf::from);
    etcd.username = opt(&parsed, "etcd-username");
    etcd.password = opt(&parsed, "etcd-password");
    let opts = Opts {
        etcd,
        group: opt(&parsed, "group").unwrap_or_default(),
        machine_id_file: opt(&parsed, "machine-id-file")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/etc/machine-id")),
        reboot_command: opt(&parsed, "reboot-command"),
        dbus_address: opt(&parsed, "dbus-address"),
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = writeln!(err, "Error starting runtime: {e}");
            return 1;
        }
    };
    let pos = &parsed.positional;
    let result = rt.block_on(async {
        match pos.first().map(String::as_str) {
            Some("status") if pos.len() == 1 => status(&opts, out).await,
            Some("set-max") if pos.len() == 2 => set_max(&opts, &pos[1], out).await,
            Some("lock") if pos.len() <= 2 => lock(&opts, pos.get(1)).await,
            Some("unlock") if pos.len() <= 2 => unlock(&opts, pos.get(1)).await,
            Some("reboot") if pos.len() == 1 => reboot(&opts).await,
            Some("send-need-reboot") if pos.len() == 1 => send_need_reboot(&opts).await,
            Some(other) => Err(format!(
                "unknown command or wrong arguments: {other}\n{USAGE}"
            )),
            None => Err(USAGE.trim_end().to_string()),
        }
    });
    match result {
        Ok(()) => 0,
        Err(msg) => {
            let _ = writeln!(err, "{msg}");
            1
        }
    }
}

/// Connects and initializes the key (creates it with max 1 if absent), like locksmith's client.
async fn client(opts: &Opts) -> Result<Coordinator<EtcdStore>, String> {
    let init = |e: &dyn std::fmt::Display| format!("Error initializing etcd client: {e}");
    let store = EtcdStore::connect(&opts.etcd).await.map_err(|e| init(&e))?;
    let c = Coordinator::new(store, &opts.group, RetryPolicy::short());
    c.get().await.map_err(|e| init(&e))?;
    Ok(c)
}

/// locksmith's status text.
pub fn format_status(sem: &Semaphore) -> String {
    let mut s = format!("Available: {}\nMax: {}\n", sem.semaphore, sem.max);
    if !sem.holders().is_empty() {
        s.push_str("\nMACHINE ID\n");
        for h in sem.holders() {
            s.push_str(h);
            s.push('\n');
        }
    }
    s
}

async fn status(opts: &Opts, out: &mut dyn Write) -> Result<(), String> {
    let c = client(opts).await?;
    let sem = c
        .get()
        .await
        .map_err(|e| format!("Error retrieving semaphore: {e}"))?;
    out.write_all(format_status(&sem).as_bytes())
        .map_err(|e| e.to_string())
}

async fn set_max(opts: &Opts, n: &str, out: &mut dyn Write) -> Result<(), String> {
    let max: i64 = n
        .parse()
        .map_err(|_| format!("Error setting value: invalid max {n:?}"))?;
    let c = client(opts).await?;
    let (old, sem) = c
        .set_max(max)
        .await
        .map_err(|e| format!("Error setting value: {e}"))?;
    write!(out, "Old-Max: {old}\nMax: {}\n", sem.max).map_err(|e| e.to_string())
}

fn id_or_machine(opts: &Opts, id: Option<&String>) -> Result<String, String> {
    match id {
        Some(id) => Ok(id.clone()),
        None => read_machine_id(&opts.machine_id_file),
    }
}

async fn lock(opts: &Opts, id: Option<&String>) -> Result<(), String> {
    let id = id_or_machine(opts, id)?;
    let c = client(opts).await?;
    c.lock(&id, None)
        .await
        .map(|_| ())
        .map_err(|e| format!("Error locking: {e}"))
}

async fn unlock(opts: &Opts, id: Option<&String>) -> Result<(), String> {
    let id = id_or_machine(opts, id)?;
    let c = client(opts).await?;
    c.unlock(&id)
        .await
        .map_err(|e: CoordError| format!("Error unlocking: {e}"))
}

async fn reboot(opts: &Opts) -> Result<(), String> {
    let id = read_machine_id(&opts.machine_id_file)?;
    let c = client(opts).await?;
    c.lock(&id, None)
        .await
        .map_err(|e| format!("Error locking: {e}"))?;
    crate::reboot::reboot(opts.reboot_command.as_deref(), opts.dbus_address.as_deref())
        .await
        .map_err(|e| format!("Error rebooting: {e}"))
}

async fn send_need_reboot(opts: &Opts) -> Result<(), String> {
    let conn = crate::dbus::connect(opts.dbus_address.as_deref())
        .await
        .map_err(|e| format!("Error connecting to D-Bus: {e}"))?;
    crate::dbus::send_need_reboot(&conn)
        .await
        .map_err(|e| format!("Error sending signal: {e}"))?;
    // Give the bus a moment to route the signal before the connection closes.
    tokio::time::sleep(Duration::from_millis(50)).await;
    Ok(())
}
