//! Prometheus text metrics on a local Unix socket: connect, (optionally send an HTTP GET),
//! read the exposition, done. `curl --unix-socket PATH http://localhost/metrics` works.
//! The engine and locksmithd both serve theirs through [`serve`], and write it with
//! [`Exposition`].

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;

/// Renders the exposition at each scrape.
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// Binds the socket at `path` (its directory created, a stale socket replaced) and serves
/// `render`'s text until the returned task is dropped or aborted.
pub fn serve(path: &Path, render: Render) -> std::io::Result<tokio::task::JoinHandle<()>> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let listener = UnixListener::bind(path)?;
    Ok(tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            let body = render();
            tokio::spawn(async move {
                // An HTTP client sends a request first; a plain reader sends nothing.
                let mut buf = [0u8; 1024];
                let http = matches!(
                    tokio::time::timeout(Duration::from_millis(200), stream.read(&mut buf)).await,
                    Ok(Ok(n)) if n > 0
                );
                let reply = if http {
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    )
                } else {
                    body
                };
                let _ = stream.write_all(reply.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    }))
}

/// The text exposition format, one metric family at a time.
#[derive(Debug, Default)]
pub struct Exposition {
    text: String,
}

impl Exposition {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts a family: its `# HELP` and `# TYPE` lines (`kind`: gauge or counter).
    pub fn family(&mut self, name: &str, kind: &str, help: &str) -> &mut Self {
        let _ = writeln!(self.text, "# HELP {name} {help}\n# TYPE {name} {kind}");
        self
    }

    /// One sample without labels.
    pub fn value(&mut self, name: &str, v: impl std::fmt::Display) -> &mut Self {
        let _ = writeln!(self.text, "{name} {v}");
        self
    }

    /// One sample with one label (`name{label="value"} v`).
    pub fn labelled(
        &mut self,
        name: &str,
        label: &str,
        value: &str,
        v: impl std::fmt::Display,
    ) -> &mut Self {
        let _ = writeln!(self.text, "{name}{{{label}=\"{value}\"}} {v}");
        self
    }

    pub fn finish(self) -> String {
        self.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn serves_text_to_a_plain_reader_and_http_to_a_client() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/m.sock");
        let mut e = Exposition::new();
        e.family("x_total", "counter", "Things.")
            .labelled("x_total", "kind", "a", 3);
        let text = e.finish();
        let body = text.clone();
        let _task = serve(&path, Arc::new(move || body.clone())).unwrap();

        let mut s = tokio::net::UnixStream::connect(&path).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut got = String::new();
        s.read_to_string(&mut got).await.unwrap();
        assert!(got.starts_with("HTTP/1.1 200 OK"), "{got}");
        assert!(got.ends_with(&text), "{got}");

        let mut s = tokio::net::UnixStream::connect(&path).await.unwrap();
        let mut got = String::new();
        s.read_to_string(&mut got).await.unwrap();
        assert_eq!(
            got,
            "# HELP x_total Things.\n# TYPE x_total counter\nx_total{kind=\"a\"} 3\n"
        );
    }
}
