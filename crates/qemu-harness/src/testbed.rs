//! The update scenarios' set-up, shared by the tests and the `see-it-work` example: the real
//! fastpatch-server on the host, a release signing key, the guests' `fastpatch` engine, and
//! machines whose OS is that engine, configured like a fleet member (machine-id, update.conf
//! and an admin engine layer in the initramfs' /etc; `fastpatch.engine=` on the kernel command
//! line).

use std::path::{Path, PathBuf};

use fastpatch_boot_init::ENGINE_ADMIN_LAYER;
use fastpatch_server::store::InstanceRow;

use crate::{FsFile, HostServer, Lab, Machine, OsVersion, Result, SigningKey, ENGINE_IN_USR};

/// The machine-id of the scenario machines (each has its own server, so one id is enough).
pub const MACHINE_ID: &str = "f4a7c3e2d1b04e5f8a9b0c1d2e3f4a5b";

/// The system CA bundle, on the host and (copied) in the guest.
const HOST_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The update group (and channel) the machines follow; safe mode is on by default.
pub const GROUP: &str = "stable";

/// Engine settings for a test machine: check 3 s after start (after the health gate of a
/// healthy first boot has passed), give an unhealthy first boot 5 s, retry failed transfers
/// soon.
pub const TEST_ENGINE_LAYER: &str = "\
[schedule]
initial = 3
initial_fuzz = 0

[health]
timeout_secs = 5
interval_secs = 1
check_timeout_secs = 10

[download]
retry_delay_secs = 2
";

/// Server, key and engine for one scenario.
pub struct Testbed<'a> {
    pub lab: &'a Lab,
    pub dir: PathBuf,
    pub server: HostServer,
    pub key: SigningKey,
    pub engine: PathBuf,
}

impl<'a> Testbed<'a> {
    /// Starts the server (data under `dir/server`), makes a signing key and builds (once per
    /// process) the guests' engine.
    pub fn new(lab: &'a Lab, dir: &Path) -> Result<Testbed<'a>> {
        Testbed::start(lab, dir, false)
    }

    /// [`Testbed::new`] with a server that makes delta payloads (signed with the release
    /// key, from the previous 2 versions of each channel, looked for every 500 ms).
    pub fn with_deltas(lab: &'a Lab, dir: &Path) -> Result<Testbed<'a>> {
        Testbed::start(lab, dir, true)
    }

    fn start(lab: &'a Lab, dir: &Path, deltas: bool) -> Result<Testbed<'a>> {
        let engine = lab
            .engine()
            .map_err(crate::HarnessError::Invalid)?
            .to_path_buf();
        let key = SigningKey::generate()?;
        let deltas = if deltas {
            let pem = dir.join("release-key.pem");
            key.write_private_pem(&pem)?;
            let mut d = fastpatch_server::deltas::DeltaSettings::new(pem);
            d.scan_every = std::time::Duration::from_millis(500);
            d.zstd_level = 9;
            Some(d)
        } else {
            None
        };
        Ok(Testbed {
            lab,
            dir: dir.to_path_buf(),
            server: HostServer::start_with(&dir.join("server"), deltas)?,
            key,
            engine,
        })
    }

    /// A version of the OS: the engine plus the release key, healthy or not.
    pub fn version(&self, version: &str, healthy: bool) -> OsVersion {
        OsVersion::with_engine(version, healthy, &self.engine, &self.key)
    }

    /// The files a machine's initramfs adds: its identity and configuration under /etc, and
    /// the CA bundle every OS has (without system roots the engine starts with a warning and
    /// can reach only plain-HTTP servers; the guest only speaks plain HTTP to the host).
    /// `engine_layer` is the admin layer of the engine config.
    pub fn etc_files(&self, engine_layer: &str) -> Result<Vec<FsFile>> {
        let update_conf = format!("GROUP={GROUP}\nSERVER={}\n", self.server.guest_update_url());
        let ca = std::fs::read(HOST_CA_BUNDLE).map_err(crate::io_err(format!(
            "reading {HOST_CA_BUNDLE} for the guest (Debian package ca-certificates)"
        )))?;
        Ok(vec![
            FsFile::new(HOST_CA_BUNDLE.trim_start_matches('/'), ca, 0o644),
            FsFile::new("etc/machine-id", format!("{MACHINE_ID}\n"), 0o444),
            FsFile::new("etc/flatcar/update.conf", update_conf, 0o644),
            FsFile::new(
                format!(
                    "{}/50-machine.toml",
                    ENGINE_ADMIN_LAYER.trim_start_matches('/')
                ),
                engine_layer,
                0o644,
            ),
        ])
    }

    /// A machine with `os` on USR-A whose OS is the engine, configured with `engine_layer`.
    pub fn machine(&self, name: &str, os: &OsVersion, engine_layer: &str) -> Result<Machine<'a>> {
        let mut m = Machine::with_os(self.lab, &self.dir, name, os)?;
        m.with_initramfs_files(&self.etc_files(engine_layer)?)?;
        m.cmdline.push(format!("fastpatch.engine={ENGINE_IN_USR}"));
        Ok(m)
    }

    /// Builds `os`'s image for slots of `slot_size` bytes and its signed payload, publishes
    /// it and points the group's channel at it. Returns the image (what the slot must hold
    /// after the update).
    pub fn release(&self, os: &OsVersion, slot_size: u64) -> Result<PathBuf> {
        let (image, payload) = os.release(&self.key, slot_size, &self.dir)?;
        self.server.publish(&os.version, &payload, GROUP)?;
        Ok(image)
    }

    /// [`Testbed::release`] with system extensions: each `(name, image)` is signed with the
    /// release key as `name` (e.g. `flatcar-demo.gz`) and listed after the payload.
    pub fn release_with_extensions(
        &self,
        os: &OsVersion,
        slot_size: u64,
        extensions: &[(&str, &[u8])],
    ) -> Result<PathBuf> {
        let (image, payload) = os.release(&self.key, slot_size, &self.dir)?;
        let dir = self.dir.join(format!("extensions-{}", os.version));
        std::fs::create_dir_all(&dir)
            .map_err(crate::io_err(format!("creating {}", dir.display())))?;
        let mut files = Vec::new();
        for (name, bytes) in extensions {
            let raw = dir.join(format!("{name}.raw"));
            std::fs::write(&raw, bytes)
                .map_err(crate::io_err(format!("writing {}", raw.display())))?;
            let signed = dir.join(name);
            self.key.sign(&raw, &signed)?;
            files.push(signed);
        }
        self.server
            .publish_with_files(&os.version, &payload, GROUP, &files)?;
        Ok(image)
    }

    /// What the server knows about the machine.
    pub fn instance(&self) -> Result<Option<InstanceRow>> {
        self.server.instance(MACHINE_ID)
    }

    /// What the server knows about machine `id` (panics if it never checked in).
    pub fn instance_of(&self, id: &str) -> InstanceRow {
        self.server
            .instance(id)
            .unwrap_or_else(|e| panic!("reading {id}: {e}"))
            .unwrap_or_else(|| panic!("{id} never checked in"))
    }

    /// The machine's status on the server ("" before its first check-in).
    pub fn status(&self) -> Result<String> {
        Ok(self
            .instance()?
            .map(|i| i.status.as_str().to_owned())
            .unwrap_or_default())
    }

    /// The machine's events on the server, oldest first, as `type/result` (plus
    /// `:errorcode` when one was sent).
    pub fn events(&self) -> Result<Vec<String>> {
        self.events_for(MACHINE_ID)
    }

    /// [`Testbed::events`] of machine `id` (panics when they cannot be read).
    pub fn events_of(&self, id: &str) -> Vec<String> {
        self.events_for(id)
            .unwrap_or_else(|e| panic!("reading {id}'s events: {e}"))
    }

    fn events_for(&self, id: &str) -> Result<Vec<String>> {
        let mut rows = self.server.events(id)?;
        rows.reverse();
        Ok(rows
            .iter()
            .map(|e| match e.error_code {
                Some(code) if code != 0 => {
                    format!("{}/{}:{code}", e.event_type, e.event_result)
                }
                _ => format!("{}/{}", e.event_type, e.event_result),
            })
            .collect())
    }
}
