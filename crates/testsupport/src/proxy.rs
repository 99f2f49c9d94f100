//! A TCP proxy on loopback that forwards everything unchanged and keeps what clients sent, so
//! a test against the real server can still assert on raw requests (an Omaha body is never
//! empty; a resumed download asks `Range: bytes=N-`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One HTTP/1.1 request as the client sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedRequest {
    /// `POST`, `GET`, …
    pub method: String,
    pub path: String,
    /// Header names lower-cased, values trimmed.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RecordedRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The start offset of a `Range: bytes=N-` request.
    pub fn range_start(&self) -> Option<u64> {
        self.header("range")?
            .strip_prefix("bytes=")?
            .split('-')
            .next()?
            .parse()
            .ok()
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Client bytes of one connection, with where each read began in the proxy-wide order (so
/// requests on pooled connections can be put back in the order they were sent).
#[derive(Default)]
struct ConnLog {
    bytes: Vec<u8>,
    /// `(offset into bytes, proxy-wide sequence number)` of each read.
    marks: Vec<(usize, u64)>,
}

impl ConnLog {
    fn record(&mut self, chunk: &[u8], seq: u64) {
        self.marks.push((self.bytes.len(), seq));
        self.bytes.extend_from_slice(chunk);
    }

    /// The sequence number of the read that carried byte `offset`.
    fn seq_at(&self, offset: usize) -> u64 {
        self.marks
            .iter()
            .take_while(|(o, _)| *o <= offset)
            .last()
            .map_or(u64::MAX, |(_, s)| *s)
    }
}

type Conn = Arc<Mutex<ConnLog>>;

/// Forwards `127.0.0.1:<port>` to an upstream address; records client → server bytes.
pub struct RecordingProxy {
    addr: SocketAddr,
    conns: Arc<Mutex<Vec<Conn>>>,
    upstream: Arc<Mutex<Option<SocketAddr>>>,
    blackhole: Arc<AtomicBool>,
    hide_range: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl RecordingProxy {
    /// Binds a loopback port; connections wait for [`RecordingProxy::forward_to`] is set
    /// (so a server can be told the proxy's URL before it starts).
    pub async fn bind() -> std::io::Result<RecordingProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let conns: Arc<Mutex<Vec<Conn>>> = Arc::default();
        let upstream: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
        let blackhole: Arc<AtomicBool> = Arc::default();
        let hide_range: Arc<AtomicBool> = Arc::default();
        let task = tokio::spawn(accept_loop(
            listener,
            conns.clone(),
            upstream.clone(),
            (blackhole.clone(), hide_range.clone()),
        ));
        Ok(RecordingProxy {
            addr,
            conns,
            upstream,
            blackhole,
            hide_range,
            task,
        })
    }

    /// While on, new connections are accepted and recorded but never forwarded nor answered
    /// (a request stuck in flight); connections already open are not affected.
    pub fn set_blackhole(&self, on: bool) {
        self.blackhole.store(on, Ordering::SeqCst);
    }

    /// While on, a `Range` header is renamed on its way to the server (recorded as sent), so
    /// the server answers 200 with the whole file: a server or cache that ignores Range.
    pub fn set_hide_range(&self, on: bool) {
        self.hide_range.store(on, Ordering::SeqCst);
    }

    pub fn forward_to(&self, upstream: SocketAddr) {
        if let Ok(mut u) = self.upstream.lock() {
            *u = Some(upstream);
        }
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request sent so far, in the order their first bytes reached the proxy (across
    /// connections: a client's pool may send a later request on an older connection).
    pub fn requests(&self) -> Vec<RecordedRequest> {
        let conns = self.conns.lock().map(|c| c.clone()).unwrap_or_default();
        let mut all: Vec<(u64, RecordedRequest)> = Vec::new();
        for conn in &conns {
            let Ok(log) = conn.lock() else { continue };
            for (start, req) in parse_requests(&log.bytes) {
                all.push((log.seq_at(start), req));
            }
        }
        all.sort_by_key(|(seq, _)| *seq);
        all.into_iter().map(|(_, r)| r).collect()
    }
}

impl Drop for RecordingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    conns: Arc<Mutex<Vec<Conn>>>,
    upstream: Arc<Mutex<Option<SocketAddr>>>,
    (blackhole, hide_range): (Arc<AtomicBool>, Arc<AtomicBool>),
) {
    let seq: Arc<AtomicU64> = Arc::default();
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        let target = upstream.lock().ok().and_then(|u| *u);
        let Some(target) = target else {
            continue; // not forwarding yet: drop the connection
        };
        let rec: Conn = Arc::default();
        if let Ok(mut c) = conns.lock() {
            c.push(rec.clone());
        }
        if blackhole.load(Ordering::SeqCst) {
            tokio::spawn(swallow(client, rec, seq.clone()));
            continue;
        }
        let seq = seq.clone();
        let hide_range = hide_range.load(Ordering::SeqCst);
        tokio::spawn(async move {
            let Ok(server) = TcpStream::connect(target).await else {
                return;
            };
            let (mut cr, mut cw) = client.into_split();
            let (mut sr, mut sw) = server.into_split();
            let up = async move {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = match cr.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    if let Ok(mut r) = rec.lock() {
                        r.record(&buf[..n], seq.fetch_add(1, Ordering::SeqCst));
                    }
                    if hide_range {
                        rename_range_header(&mut buf[..n]);
                    }
                    if sw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                let _ = sw.shutdown().await;
            };
            let down = async move {
                let _ = tokio::io::copy(&mut sr, &mut cw).await;
                let _ = cw.shutdown().await;
            };
            tokio::join!(up, down);
        });
    }
}

/// `Range:` becomes `Xange:` (same length, so nothing else in the stream moves).
fn rename_range_header(bytes: &mut [u8]) {
    let mut i = 0;
    while i + 8 <= bytes.len() {
        if bytes[i..i + 2] == *b"\r\n" && bytes[i + 2..i + 8].eq_ignore_ascii_case(b"range:") {
            bytes[i + 2] = b'X';
        }
        i += 1;
    }
}

/// Records what the client sends until it hangs up; answers nothing.
async fn swallow(mut client: TcpStream, rec: Conn, seq: Arc<AtomicU64>) {
    let mut buf = vec![0u8; 16 * 1024];
    while let Ok(n) = client.read(&mut buf).await {
        if n == 0 {
            break;
        }
        if let Ok(mut r) = rec.lock() {
            r.record(&buf[..n], seq.fetch_add(1, Ordering::SeqCst));
        }
    }
}

/// Splits a connection's bytes into requests (Content-Length bodies; what reqwest sends),
/// each with the offset where it starts.
fn parse_requests(all: &[u8]) -> Vec<(usize, RecordedRequest)> {
    let mut out = Vec::new();
    let mut bytes = all;
    while let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
        let start = all.len() - bytes.len();
        let head = String::from_utf8_lossy(&bytes[..end]).into_owned();
        let mut lines = head.split("\r\n");
        let mut first = lines.next().unwrap_or_default().split(' ');
        let method = first.next().unwrap_or_default().to_string();
        let path = first.next().unwrap_or_default().to_string();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| {
                let (k, v) = l.split_once(':')?;
                Some((k.trim().to_ascii_lowercase(), v.trim().to_string()))
            })
            .collect();
        let len: usize = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let body_end = (end + 4 + len).min(bytes.len());
        let req = RecordedRequest {
            method,
            path,
            headers,
            body: bytes[end + 4..body_end].to_vec(),
        };
        out.push((start, req));
        bytes = &bytes[body_end..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_pipelined_requests_with_bodies() {
        let raw = b"POST /v1/update/ HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhelloGET /p HTTP/1.1\r\nRange: bytes=100-\r\n\r\n";
        let r = parse_requests(raw);
        assert_eq!(r.len(), 2);
        assert_eq!((r[0].0, r[1].0), (0, 62));
        let r: Vec<RecordedRequest> = r.into_iter().map(|(_, r)| r).collect();
        assert_eq!(
            (r[0].method.as_str(), r[0].body_text().as_str()),
            ("POST", "hello")
        );
        assert_eq!((r[1].path.as_str(), r[1].range_start()), ("/p", Some(100)));
        assert!(r[1].body.is_empty());
    }

    #[test]
    fn a_hidden_range_header_keeps_every_other_byte() {
        let mut raw = b"GET /p HTTP/1.1\r\nrange: bytes=5-\r\nX-Arrange: 1\r\n\r\n".to_vec();
        let len = raw.len();
        rename_range_header(&mut raw);
        assert_eq!(raw.len(), len);
        let r = parse_requests(&raw);
        assert_eq!(
            r[0].1.range_start(),
            None,
            "{}",
            String::from_utf8_lossy(&raw)
        );
        assert_eq!(
            String::from_utf8_lossy(&raw),
            "GET /p HTTP/1.1\r\nXange: bytes=5-\r\nX-Arrange: 1\r\n\r\n"
        );
    }

    #[test]
    fn a_request_takes_the_sequence_of_the_read_that_carried_its_first_byte() {
        let mut log = ConnLog::default();
        log.record(b"GET /a HTTP/1.1\r\n", 3);
        log.record(b"\r\n", 4);
        log.record(b"GET /b HTTP/1.1\r\n\r\n", 9);
        let seqs: Vec<u64> = parse_requests(&log.bytes)
            .iter()
            .map(|(start, _)| log.seq_at(*start))
            .collect();
        assert_eq!(seqs, vec![3, 9]);
    }
}
