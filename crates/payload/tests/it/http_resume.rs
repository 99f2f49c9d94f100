//! The engine's use of the installer, over real HTTP on loopback: stream the body into
//! `feed`, lose the connection mid-download, come back with `Range: bytes=<resume_offset>-`.

use crate::common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::*;
use fastpatch_payload::generate::Compression;
use fastpatch_payload::install::Installer;

/// Serves `body` with Range support; the first response is cut off after `cut` bytes.
fn serve(body: Arc<Vec<u8>>, cut: usize) -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let requests = Arc::new(AtomicUsize::new(0));
    let count = requests.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut from = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
                    from = v.trim().trim_end_matches('-').parse().unwrap();
                }
            }
            let n = count.fetch_add(1, Ordering::SeqCst);
            let status = if from > 0 {
                "206 Partial Content"
            } else {
                "200 OK"
            };
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nContent-Range: bytes {from}-{}/{}\r\nConnection: close\r\n\r\n",
                body.len() - from,
                body.len() - 1,
                body.len()
            );
            let end = if n == 0 { cut } else { body.len() };
            let _ = stream
                .write_all(head.as_bytes())
                .and_then(|_| stream.write_all(&body[from..end]));
        }
    });
    (port, requests)
}

/// One GET from `from`; feeds the body; returns whether the whole body arrived.
fn download(port: u16, from: u64, installer: &mut Installer) -> bool {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "GET /update.gz HTTP/1.1\r\nHost: localhost\r\nRange: bytes={from}-\r\n\r\n"
    )
    .unwrap();
    let mut reader = BufReader::new(s);
    let mut len = 0u64;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap();
        }
    }
    let mut got = 0u64;
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = reader.read(&mut buf).unwrap();
        if n == 0 {
            return got == len;
        }
        installer.feed(&buf[..n]).unwrap();
        got += n as u64;
    }
}

#[test]
fn interrupted_http_download_resumes_with_a_range_request() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("usr.img");
    let image = make_image(&img, 16 << 20, 41);
    let payload = dir.path().join("update.gz");
    generate(&img, &payload, Compression::Zstd, &[keys().private.clone()]);
    let body = Arc::new(std::fs::read(&payload).unwrap());
    let (port, requests) = serve(body.clone(), body.len() * 3 / 5);

    let disk = standard_disk(dir.path());
    let mut o = opts(vec![keys().public.clone()]);
    o.state_dir = Some(dir.path().join("state"));
    o.payload_id = Some("sha256-of-the-payload".into());
    o.checkpoint_bytes = 2 << 20;

    let mut installer = Installer::new(slot_b(&disk), o.clone()).unwrap();
    assert!(
        !download(port, installer.resume_offset(), &mut installer),
        "first download should be cut"
    );
    drop(installer); // e.g. the daemon restarts

    let mut installer = Installer::new(slot_b(&disk), o).unwrap();
    let from = installer.resume_offset();
    assert!(
        from > 0 && from <= body.len() as u64 * 3 / 5,
        "resume offset {from}"
    );
    assert!(download(port, from, &mut installer));
    let report = installer.finish().unwrap();
    assert_eq!(report.resumed_from, from);
    assert_eq!(requests.load(Ordering::SeqCst), 2);
    assert_eq!(read_slot(&disk, usr_b(), image.len()), image);
}
