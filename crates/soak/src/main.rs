//! Load generator for `scripts/soak-server`: mixed traffic against a running
//! fastpatch-server, open loop at a fixed rate (or closed loop to find the maximum),
//! with every answer checked against what that kind of request must get.
//!
//! The mix (per request, seeded): update checks from `--machines` registered machines
//! (a slice of them on an old version, so they ask for the update and meet the group's
//! limits), events (download started/finished, installed, update complete), 5 % bad
//! bodies (truncated XML, an XXE document, protocol 2.0, a body over the size limit),
//! admin API reads and writes, dashboard pages. Latency is measured from the time a
//! request was due, not sent (no coordinated omission). Every 10 s it prints a line with
//! the rate, p50/p99, server errors, wrong answers and the server's RSS; at the end, a
//! summary and `key=value` lines for the script.
//!
//! ```text
//! fastpatch-soak --url http://127.0.0.1:8080 \
//!     --admin-token T --viewer-token V --rate 20000 --duration 600 --server-pid PID
//! ```

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

const APP: &str = "{e96281a6-d1af-4bde-9a0a-97b76e56dc57}";
const APP_ID: &str = "e96281a6-d1af-4bde-9a0a-97b76e56dc57";

#[derive(Parser, Debug)]
struct Args {
    /// The server's base URL (plain HTTP).
    #[arg(long)]
    url: String,
    #[arg(long)]
    admin_token: String,
    #[arg(long)]
    viewer_token: String,
    /// Registered machines `{prefix}{n:08}` the update checks and events come from.
    #[arg(long, default_value_t = 100_000)]
    machines: u64,
    #[arg(long, default_value = "soak-")]
    prefix: String,
    /// The first this-many machines report the old version (they ask for the update).
    #[arg(long, default_value_t = 2_000)]
    old_machines: u64,
    #[arg(long, default_value = "3760.2.0")]
    old_version: String,
    #[arg(long, default_value = "3815.2.0")]
    new_version: String,
    /// Requests per second (0: as fast as the connections go, to find the maximum).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Seconds to run.
    #[arg(long, default_value_t = 60)]
    duration: u64,
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// The server's process id, for its RSS (VmRSS) every interval.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Seconds of warm-up before the RSS baseline is taken.
    #[arg(long, default_value_t = 60)]
    warmup: u64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Stop quietly when the server goes away (the kill -9 phase); otherwise that is an error.
    #[arg(long)]
    expect_kill: bool,
}

/// What one request is, and what it must get.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Check,
    Event,
    Truncated,
    Xxe,
    Protocol2,
    Oversized,
    ApiRead,
    ApiWrite,
    Dashboard,
}

impl Kind {
    /// Per 1000 requests.
    const MIX: [(Kind, u32); 9] = [
        (Kind::Check, 800),
        (Kind::Event, 100),
        (Kind::Truncated, 15),
        (Kind::Xxe, 15),
        (Kind::Protocol2, 15),
        (Kind::Oversized, 5),
        (Kind::ApiRead, 30),
        (Kind::ApiWrite, 5),
        (Kind::Dashboard, 15),
    ];

    fn pick(r: u32) -> Kind {
        let mut acc = 0;
        for (k, w) in Self::MIX {
            acc += w;
            if r < acc {
                return k;
            }
        }
        Kind::Check
    }

    /// The status this kind must get.
    fn expected(self) -> u16 {
        match self {
            Kind::Truncated | Kind::Xxe | Kind::Protocol2 => 400,
            Kind::Oversized => 413,
            _ => 200,
        }
    }

    fn valid(self) -> bool {
        self.expected() == 200
    }
}

#[derive(Default)]
struct Tally {
    sent: u64,
    server_errors: u64,
    wrong: u64,
    /// Wrong answers to valid requests (the rest: a bad body not refused as it should be).
    wrong_valid: u64,
    io_errors: u64,
    events_acked: u64,
    latencies_us: Vec<u32>,
    by_kind: BTreeMap<String, (u64, Vec<u32>)>,
    wrong_examples: Vec<String>,
}

struct Shared {
    tally: Mutex<Tally>,
    /// Requests due so far (open loop) or sent (closed loop).
    next: AtomicU64,
    stop: AtomicBool,
    server_gone: AtomicBool,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let args = Arc::new(Args::parse());
    let uri: hyper::Uri = args.url.parse().context("--url")?;
    let authority = uri
        .authority()
        .context("--url needs host:port")?
        .to_string();
    let group = fetch_group(&args, &authority).await?;
    let shared = Arc::new(Shared {
        tally: Mutex::new(Tally::default()),
        next: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        server_gone: AtomicBool::new(false),
    });
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..args.connections {
        let (args, shared, authority, group) = (
            args.clone(),
            shared.clone(),
            authority.clone(),
            group.clone(),
        );
        tasks.push(tokio::spawn(async move {
            connection(c, &args, &shared, &authority, &group, start).await
        }));
    }
    let mut rss_base: Option<u64> = None;
    // Requests answered when the warm-up ended, for the rate after it.
    let mut sent_at_warmup: Option<(u64, Instant)> = None;
    let mut rss_max_after: u64 = 0;
    let mut last = (0u64, Instant::now());
    let mut interval = tokio::time::interval(Duration::from_secs(10));
    interval.tick().await;
    while start.elapsed() < Duration::from_secs(args.duration)
        && !shared.server_gone.load(Ordering::Relaxed)
    {
        tokio::select! {
            _ = interval.tick() => {}
            _ = tokio::time::sleep(Duration::from_secs(args.duration).saturating_sub(start.elapsed())) => break,
        }
        let rss = args.server_pid.and_then(rss_kib);
        let t = start.elapsed().as_secs();
        if let Some(r) = rss {
            if t >= args.warmup {
                rss_base.get_or_insert(r);
                rss_max_after = rss_max_after.max(r);
            }
        }
        let mut tally = shared.tally.lock().expect("tally");
        let lat = std::mem::take(&mut tally.latencies_us);
        let n = tally.sent;
        if t >= args.warmup && sent_at_warmup.is_none() {
            sent_at_warmup = Some((n, Instant::now()));
        }
        let rate = (n - last.0) as f64 / last.1.elapsed().as_secs_f64();
        last = (n, Instant::now());
        println!(
            "t={t:>4}s rate={rate:>8.0}/s p50={:>7.2}ms p99={:>7.2}ms 5xx={} wrong={} io_errors={} rss={}",
            pct(&lat, 0.50) as f64 / 1000.0,
            pct(&lat, 0.99) as f64 / 1000.0,
            tally.server_errors,
            tally.wrong,
            tally.io_errors,
            rss.map_or("-".into(), |r| format!("{:.1}MiB", r as f64 / 1024.0)),
        );
    }
    shared.stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let tally = shared.tally.lock().expect("tally");
    println!();
    println!("| kind | requests | p50 ms | p99 ms | p99.9 ms |");
    println!("|---|---|---|---|---|");
    let mut all = Vec::new();
    for (k, (n, lat)) in &tally.by_kind {
        let mut lat = lat.clone();
        lat.sort_unstable();
        println!(
            "| {k} | {n} | {:.2} | {:.2} | {:.2} |",
            pct_sorted(&lat, 0.5) as f64 / 1000.0,
            pct_sorted(&lat, 0.99) as f64 / 1000.0,
            pct_sorted(&lat, 0.999) as f64 / 1000.0
        );
        all.extend(lat);
    }
    all.sort_unstable();
    for e in tally.wrong_examples.iter().take(5) {
        println!("wrong answer: {e}");
    }
    let growth = match rss_base {
        Some(b) if b > 0 => 100.0 * (rss_max_after as f64 - b as f64) / b as f64,
        _ => 0.0,
    };
    println!("requests={}", tally.sent);
    println!("rate={:.0}", tally.sent as f64 / elapsed);
    // The sustained rate: after the warm-up (the whole run without one).
    let sustained = match sent_at_warmup {
        Some((n, at)) if at.elapsed().as_secs_f64() > 1.0 => {
            (tally.sent - n) as f64 / at.elapsed().as_secs_f64()
        }
        _ => tally.sent as f64 / elapsed,
    };
    println!("rate_after_warmup={sustained:.0}");
    println!("p50_ms={:.2}", pct_sorted(&all, 0.5) as f64 / 1000.0);
    println!("p99_ms={:.2}", pct_sorted(&all, 0.99) as f64 / 1000.0);
    println!("server_errors={}", tally.server_errors);
    println!("wrong={}", tally.wrong);
    println!("wrong_valid={}", tally.wrong_valid);
    println!("io_errors={}", tally.io_errors);
    println!("events_acked={}", tally.events_acked);
    println!(
        "rss_base_kib={} rss_max_kib={} rss_growth_pct={growth:.1}",
        rss_base.unwrap_or(0),
        rss_max_after
    );
    if shared.server_gone.load(Ordering::Relaxed) && !args.expect_kill {
        bail!("the server went away");
    }
    Ok(())
}

/// The `stable` group's JSON, as the template of the admin writes (to group `soak-w`).
async fn fetch_group(args: &Args, authority: &str) -> Result<serde_json::Value> {
    let mut sender = connect(authority).await?;
    let req = request(
        authority,
        "GET",
        &format!("/api/v1/apps/{APP_ID}/groups/stable"),
        Some(&args.admin_token),
        Bytes::new(),
    )?;
    let resp = sender.send_request(req).await.context("GET group")?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        bail!(
            "GET group stable: {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    serde_json::from_slice(&body).context("group JSON")
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(authority: &str) -> Result<Sender> {
    let tcp = tokio::net::TcpStream::connect(authority)
        .await
        .with_context(|| format!("connecting to {authority}"))?;
    tcp.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

fn request(
    authority: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Bytes,
) -> Result<hyper::Request<Full<Bytes>>> {
    let mut b = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", authority);
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    if !body.is_empty() {
        let ct = if method == "PUT" {
            "application/json"
        } else {
            "text/xml"
        };
        b = b.header("content-type", ct);
    }
    Ok(b.body(Full::new(body))?)
}

async fn connection(
    c: usize,
    args: &Args,
    shared: &Shared,
    authority: &str,
    group: &serde_json::Value,
    start: Instant,
) {
    let mut rng = fastrand::Rng::with_seed(args.seed.wrapping_mul(1_000_003) + c as u64);
    let mut sender: Option<Sender> = None;
    while !shared.stop.load(Ordering::Relaxed) {
        // Open loop: take the next slot of the global schedule and wait for it.
        let seq = shared.next.fetch_add(1, Ordering::Relaxed);
        let due = if args.rate > 0 {
            let due = start + Duration::from_secs_f64(seq as f64 / args.rate as f64);
            tokio::time::sleep_until(due.into()).await;
            due
        } else {
            Instant::now()
        };
        if shared.stop.load(Ordering::Relaxed) {
            break;
        }
        let kind = Kind::pick(rng.u32(0..1000));
        let (method, path, token, body) = build(kind, args, &mut rng, group);
        let Ok(req) = request(authority, method, &path, token, body) else {
            continue;
        };
        if sender.as_ref().is_none_or(|s| s.is_closed()) {
            match connect(authority).await {
                Ok(s) => sender = Some(s),
                Err(_) => {
                    fail_io(shared, args);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            }
        }
        let Some(s) = sender.as_mut() else { continue };
        let result = async {
            s.ready().await?;
            let resp = s.send_request(req).await?;
            let status = resp.status().as_u16();
            let body = resp.into_body().collect().await?.to_bytes();
            anyhow::Ok((status, body))
        }
        .await;
        let latency = due.elapsed().as_micros().min(u32::MAX as u128) as u32;
        match result {
            Ok((status, body)) => record(shared, kind, status, &body, latency),
            Err(_) => {
                sender = None;
                fail_io(shared, args);
            }
        }
    }
}

fn fail_io(shared: &Shared, args: &Args) {
    let mut t = shared.tally.lock().expect("tally");
    t.io_errors += 1;
    if args.expect_kill && t.io_errors > 100 {
        shared.server_gone.store(true, Ordering::Relaxed);
        shared.stop.store(true, Ordering::Relaxed);
    }
}

fn record(shared: &Shared, kind: Kind, status: u16, body: &[u8], latency: u32) {
    let mut t = shared.tally.lock().expect("tally");
    t.sent += 1;
    t.latencies_us.push(latency);
    let e = t.by_kind.entry(format!("{kind:?}")).or_default();
    e.0 += 1;
    e.1.push(latency);
    if status >= 500 {
        t.server_errors += 1;
    }
    let ok = status == kind.expected()
        && match kind {
            Kind::Check => body.windows(11).any(|w| w == b"updatecheck"),
            Kind::Event => body.windows(12).any(|w| w == b"<event statu"),
            _ => true,
        };
    if ok && kind == Kind::Event {
        t.events_acked += 1;
    }
    if !ok {
        t.wrong += 1;
        if kind.valid() {
            t.wrong_valid += 1;
        }
        if t.wrong_examples.len() < 5 {
            t.wrong_examples.push(format!(
                "{kind:?} got {status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            ));
        }
    }
}

/// Method, path, token and body of one request of `kind`.
fn build<'a>(
    kind: Kind,
    args: &'a Args,
    rng: &mut fastrand::Rng,
    group: &serde_json::Value,
) -> (&'static str, String, Option<&'a str>, Bytes) {
    let n = rng.u64(0..args.machines.max(1));
    let machine = format!("{}{n:08}", args.prefix);
    let version = if n < args.old_machines {
        &args.old_version
    } else {
        &args.new_version
    };
    let omaha = |inner: &str, protocol: &str| {
        Bytes::from(format!(
            r#"<?xml version="1.0" encoding="UTF-8"?>
<request protocol="{protocol}" version="update_engine-0.4.10" updaterversion="update_engine-0.4.10" installsource="scheduler" ismachine="1">
    <os version="Chateau" platform="CoreOS" sp="{version}_x86_64"></os>
    <app appid="{APP}" version="{version}" track="stable" bootid="{{7c1f0c64-5d3a-4b6f-9f62-8d0a4f3e2b11}}" oem="qemu" oemversion="0.1.0" alephversion="3510.2.0" machineid="{machine}" machinealias="" lang="en-US" board="amd64-usr" hardware_class="" delta_okay="false">
        {inner}
    </app>
</request>
"#
        ))
    };
    const CHECK: &str = r#"<ping active="1"></ping><updatecheck></updatecheck>"#;
    match kind {
        Kind::Check => ("POST", "/v1/update/".into(), None, omaha(CHECK, "3.0")),
        Kind::Event => {
            let ev = match rng.u32(0..4) {
                0 => r#"<event eventtype="13" eventresult="1"></event>"#.to_owned(),
                1 => r#"<event eventtype="14" eventresult="1"></event>"#.to_owned(),
                2 => r#"<event eventtype="3" eventresult="1"></event>"#.to_owned(),
                _ => format!(
                    r#"<event eventtype="3" eventresult="2" previousversion="{}"></event>"#,
                    args.old_version
                ),
            };
            ("POST", "/v1/update/".into(), None, omaha(&ev, "3.0"))
        }
        Kind::Truncated => {
            let full = omaha(CHECK, "3.0");
            let cut = rng.usize(1..full.len() - 20);
            ("POST", "/v1/update/".into(), None, full.slice(..cut))
        }
        Kind::Xxe => (
            "POST",
            "/v1/update/".into(),
            None,
            Bytes::from_static(
                br#"<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]><request protocol="3.0"><app appid="&x;"/></request>"#,
            ),
        ),
        Kind::Protocol2 => ("POST", "/v1/update/".into(), None, omaha(CHECK, "2.0")),
        Kind::Oversized => {
            // Over the default 64 KiB limit, within what the server drains.
            let pad = " ".repeat(70 * 1024);
            ("POST", "/v1/update/".into(), None, omaha(&format!("{CHECK}{pad}"), "3.0"))
        }
        Kind::ApiRead => {
            let path = match rng.u32(0..3) {
                0 => format!("/api/v1/apps/{APP_ID}/groups"),
                1 => format!("/api/v1/instances?app_id={APP_ID}&limit=50"),
                _ => format!("/api/v1/apps/{APP_ID}/instances/{machine}"),
            };
            ("GET", path, Some(args.admin_token.as_str()), Bytes::new())
        }
        Kind::ApiWrite => {
            let mut g = group.clone();
            g["name"] = "soak-w".into();
            g["max_concurrent"] = serde_json::Value::from(rng.u32(1..100));
            (
                "PUT",
                format!("/api/v1/apps/{APP_ID}/groups/soak-w"),
                Some(args.admin_token.as_str()),
                Bytes::from(g.to_string()),
            )
        }
        Kind::Dashboard => {
            let path = match rng.u32(0..3) {
                0 => "/ui/".to_owned(),
                1 => format!("/ui/apps/{APP_ID}/groups/stable"),
                _ => format!("/ui/instances?app={APP_ID}&group=stable"),
            };
            ("GET", path, Some(args.viewer_token.as_str()), Bytes::new())
        }
    }
}

fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

fn pct(v: &[u32], p: f64) -> u32 {
    let mut v = v.to_vec();
    v.sort_unstable();
    pct_sorted(&v, p)
}

fn pct_sorted(v: &[u32], p: f64) -> u32 {
    if v.is_empty() {
        return 0;
    }
    v[((v.len() - 1) as f64 * p).round() as usize]
}
