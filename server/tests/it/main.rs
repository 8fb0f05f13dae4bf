//! The server over HTTP and SSE, one test binary: each test starts the real
//! server (in process on 127.0.0.1:0, or the real binary) against a real
//! redis-server of its own.

// Test and benchmark code: a failed unwrap is a failed run, with its place.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

mod api;
mod bad_input;
mod cli;
mod cluster;
mod consistency;
mod events;
mod faults;
mod load;
mod operations;
mod postgres;
mod privilege;
mod races;
mod real_size;
mod reload;
mod replicas;
mod security;
mod stream;
mod tables;
mod tls;
