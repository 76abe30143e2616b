//! End-to-end tests: the real `herald` binary on an ephemeral port, driven
//! by clients nobody here wrote (reqwest, tokio-tungstenite,
//! eventsource-stream, Node's `eventsource`), also through a real nginx,
//! and by raw sockets where the exact bytes matter.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

#[allow(dead_code)] // not every helper is used by every test yet
mod harness;

mod articles;
mod auth;
mod backoff;
mod backup;
mod bad_input;
mod bench_smoke;
mod browser;
mod cli;
mod client;
mod cluster;
mod dashboard;
mod direct;
mod durability;
mod inspect;
mod limits;
mod live;
mod metrics;
mod node;
mod parked;
mod proxy;
mod publish;
mod resources;
mod slow;
mod sse_wire;
mod tasks;
mod timeouts;
mod tls;
mod transports;
mod ways_in;
mod worker_ws;
