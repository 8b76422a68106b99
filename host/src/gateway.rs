//! Config + runtime → what serves requests: routes, each with its chain.
//!
//! A [`Gateway`] is immutable once built; a new config means building a new
//! one off to the side and swapping it in whole, so a request always runs on
//! one consistent set of routes and policies.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use http::Uri;

use crate::chain::Chain;
use crate::config::{Config, ProxySettings};
use crate::wasm::{Policy, PolicySpec, Runtime};

/// One route, ready to serve.
#[derive(Debug)]
pub struct Route {
    pub name: Arc<str>,
    pub prefix: String,
    pub upstream: Option<Uri>,
    pub rewrite: Option<String>,
    pub timeout: Duration,
    pub chain: Chain,
}

impl Route {
    /// Whether `path` is under this route's prefix, on a segment boundary
    /// (`/api` matches `/api`, `/api/x`, `/api?q`, not `/apix`).
    fn matches(&self, path: &str) -> bool {
        if self.prefix == "/" {
            return true;
        }
        path.strip_prefix(self.prefix.as_str())
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/') || rest.starts_with('?'))
    }
}

/// All routes of one config, longest prefix first.
#[derive(Debug)]
pub struct Gateway {
    pub routes: Vec<Route>,
    pub proxy: ProxySettings,
    /// Loaded policies by name, for diagnostics.
    pub policies: Vec<Arc<Policy>>,
}

impl Gateway {
    /// Compiles each policy file once, loads each policy once (validating its
    /// config), and assembles the routes.
    ///
    /// # Errors
    /// A message naming the config file, the policy and the cause.
    pub async fn build(config: &Config, runtime: &Arc<Runtime>) -> anyhow::Result<Self> {
        let file = config.source.display();
        let mut compiled: HashMap<PathBuf, crate::wasm::Component> = HashMap::new();
        let mut loaded: HashMap<&str, Arc<Policy>> = HashMap::new();
        for (name, p) in &config.policies {
            let component = match compiled.get(&p.wasm) {
                Some(c) => c.clone(),
                None => {
                    let c = runtime
                        .compile_file(&p.wasm)
                        .with_context(|| format!("{file}: policy.{name}.wasm"))?;
                    compiled.insert(p.wasm.clone(), c.clone());
                    c
                }
            };
            let spec = PolicySpec {
                name: name.clone(),
                config_json: p.config_json.clone(),
                failure: p.failure,
                limits: p.limits,
            };
            let policy = runtime
                .load(spec, &component)
                .await
                .with_context(|| format!("{file}: policy.{name} ({})", p.wasm.display()))?;
            loaded.insert(name, policy);
        }
        let mut routes: Vec<Route> = config
            .routes
            .iter()
            .map(|r| Route {
                name: r.name.as_str().into(),
                prefix: r.prefix.clone(),
                upstream: r.upstream.clone(),
                rewrite: r.rewrite.clone(),
                timeout: r.timeout,
                // Validation guarantees every name is defined.
                chain: Chain::new(
                    r.policies
                        .iter()
                        .map(|n| loaded[n.as_str()].clone())
                        .collect(),
                ),
            })
            .collect();
        routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        let mut policies: Vec<Arc<Policy>> = loaded.into_values().collect();
        policies.sort_by(|a, b| a.name().cmp(b.name()));
        Ok(Self {
            routes,
            proxy: config.proxy,
            policies,
        })
    }

    /// The route for `path`: the longest matching prefix.
    pub fn route(&self, path: &str) -> Option<&Route> {
        self.routes.iter().find(|r| r.matches(path))
    }
}
