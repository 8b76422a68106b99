//! Fixtures for tests: the paths of the policy components built from
//! `plugins/` by this crate's `build.rs` (so tests always run against freshly
//! built policies), and a real `redis-server` ([`redis_server`]).

pub mod redis_server;

include!(concat!(env!("OUT_DIR"), "/policies.rs"));
