//! The HTTP layer against an in-memory fake [`Backend`]: authentication, error answers, body
//! limit, the WebSocket stream, garbage input, and the blocking client round trip.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod client;
mod fake;
mod garbage;
mod harness;
mod ledger;
mod openapi;
mod routes;
mod setup;
mod stream;
mod web;

const TOKEN: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
