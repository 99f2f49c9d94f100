//! How the Omaha endpoint reads a body: one that arrives with its headers is answered at
//! once; one that arrives in parts is read to its end under the body timeout.

use crate::support;

use std::time::Duration;

use fastpatch_omaha::FLATCAR_APP_ID;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A body sent in two parts with a pause between them is read whole and answered.
#[tokio::test]
async fn a_body_that_arrives_in_parts_is_read_whole() {
    let s = support::server(support::Backend::Sqlite).await;
    let body = support::request("m-split", "3732.0.0", "stable", vec![], true).to_xml();
    let addr = s.handle.base_url().trim_start_matches("http://").to_owned();
    let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
    conn.set_nodelay(true).unwrap();
    let head = format!(
        "POST /v1/update/ HTTP/1.1\r\nHost: {addr}\r\nContent-Type: text/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let (first, rest) = body.as_bytes().split_at(body.len() / 2);
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.write_all(first).await.unwrap();
    conn.flush().await.unwrap();
    // The server has the headers and half the body: its first look at the body finds it
    // incomplete, so the rest is read under the timeout.
    tokio::time::sleep(Duration::from_millis(300)).await;
    conn.write_all(rest).await.unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("<updatecheck status="), "{answer}");
    let row = s
        .handle
        .store()
        .instance(FLATCAR_APP_ID, "m-split")
        .await
        .unwrap();
    assert!(row.is_some(), "the check-in was recorded");
    s.handle.shutdown().await;
}
