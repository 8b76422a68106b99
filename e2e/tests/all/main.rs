//! The seed's flow through the real trio, in one process on free ports:
//! main-service → sidecar (with `config/demo.toml`'s policies) → user-service;
//! and the deployment's wiring (`deploy/`, `Dockerfile`).

mod deploy;
mod python_policy;
mod seed_flow;
