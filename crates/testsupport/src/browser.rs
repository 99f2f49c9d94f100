//! A real browser for dashboard tests: Debian's `chromium` driven through `chromedriver`
//! (WebDriver, fantoccini), headless, with its own profile directory.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// chromedriver on a free port, killed when dropped.
pub struct Driver {
    child: Child,
    pub url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts chromedriver on a free loopback port; fails, naming the Debian package, when it or
/// chromium is missing.
pub fn start_driver() -> Driver {
    for (path, pkg) in [(CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")] {
        assert!(
            Path::new(path).exists(),
            "{path} is missing: the dashboard browser test needs Debian's `{pkg}` package \
             (apt-get install chromium chromium-driver; scripts/install-deps does this)"
        );
    }
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let child = Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {CHROMEDRIVER}: {e}"));
    let driver = Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "chromedriver did not listen on port {port} within 20 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    driver
}

/// A headless chromium session (1280x1000) with `profile` as its user-data directory.
pub async fn browser(driver: &Driver, profile: &Path) -> Client {
    let caps = serde_json::json!({
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": CHROMIUM,
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1280,1000", "--lang=en-US",
                format!("--user-data-dir={}", profile.display()),
            ]
        }
    });
    let serde_json::Value::Object(caps) = caps else {
        unreachable!("an object")
    };
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .unwrap_or_else(|e| panic!("chromium did not start through chromedriver: {e}"))
}

/// The project's screenshots (README and docs show them).
pub fn screenshot_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/screenshots")
}

/// Saves the browser's view as `docs/screenshots/<name>.png`.
pub async fn shot(c: &Client, name: &str) {
    let png = c.screenshot().await.expect("screenshot");
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    let dir = screenshot_dir();
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    std::fs::write(dir.join(format!("{name}.png")), png).expect("writing screenshot");
}

/// Logs in through the dashboard's form with `token` and lands on the overview.
pub async fn login(c: &Client, base: &str, token: &str) {
    c.goto(&format!("{base}/ui/")).await.expect("goto");
    // Not logged in: the dashboard sends us to the login form.
    assert!(c
        .current_url()
        .await
        .expect("url")
        .path()
        .ends_with("/ui/login"));
    let field = c.find(Locator::Css("#token")).await.expect("token field");
    // The browser may have remembered the last token: start from an empty field.
    field.clear().await.expect("clear");
    field.send_keys(token).await.expect("type");
    c.find(Locator::Css("button[type=submit]"))
        .await
        .expect("button")
        .click()
        .await
        .expect("click");
    c.wait()
        .for_element(Locator::Css("header.top"))
        .await
        .expect("logged in");
    let h1 = c
        .find(Locator::Css("main h1"))
        .await
        .expect("a heading")
        .text()
        .await
        .expect("text");
    assert_eq!(h1, "Overview");
}
