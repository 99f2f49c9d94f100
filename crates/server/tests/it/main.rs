//! fastpatch-server's integration tests, one binary: the real server on loopback, SQLite files
//! and a private PostgreSQL cluster (`support`), the dashboard in Chromium.

mod dashboard_support;
#[macro_use]
mod support;

mod api;
mod body_read;
mod checkins;
mod cli;
mod concurrency;
mod dashboard;
mod dashboard_auth;
mod dashboard_browser;
mod dashboard_samples;
mod deltas;
mod external;
mod omaha_route;
mod payload_ops;
mod protocol;
mod rollout;
mod sync;
