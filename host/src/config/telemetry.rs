//! `[telemetry]`: OpenTelemetry traces over OTLP (HTTP/protobuf), see
//! `crate::telemetry`. Every key defaults to its standard `OTEL_*`
//! environment variable, so a sidecar deployed beside OpenTelemetry SDKs is
//! configured the same way; a key set here wins over the variable.
//!
//! ```toml
//! [telemetry]
//! endpoint = "http://collector:4318"          # OTEL_EXPORTER_OTLP_ENDPOINT (+ /v1/traces)
//! # traces_endpoint = "http://collector:4318/v1/traces"  # OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, as is
//! headers = { x-honeycomb-team = "${HONEYCOMB_KEY}" }   # OTEL_EXPORTER_OTLP_HEADERS
//! service_name = "edge-sidecar"               # OTEL_SERVICE_NAME ("sidecar")
//! sampler = "parentbased_traceidratio"        # OTEL_TRACES_SAMPLER ("parentbased_always_on")
//! sampler_arg = 0.1                           # OTEL_TRACES_SAMPLER_ARG
//! max_queue_size = 2048                       # OTEL_BSP_MAX_QUEUE_SIZE
//! max_export_batch_size = 512                 # OTEL_BSP_MAX_EXPORT_BATCH_SIZE
//! schedule_delay_ms = 5000                    # OTEL_BSP_SCHEDULE_DELAY
//! export_timeout_ms = 10000                   # OTEL_BSP_EXPORT_TIMEOUT
//! ```
//!
//! Traces are on when an endpoint is set (here or by either variable) and
//! off otherwise; `traces = false`, `OTEL_SDK_DISABLED=true` or
//! `OTEL_TRACES_EXPORTER=none` turn them off whatever the endpoint.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{anyhow, bail};
use http::{HeaderName, HeaderValue, Uri};
use serde::Deserialize;

use super::{expand_str, parse_upstream_like, positive};
use crate::telemetry::{Sampler, TelemetrySettings, TraceSettings};

/// Where OTLP/HTTP collectors listen when no endpoint says otherwise.
pub const DEFAULT_OTLP_ENDPOINT: &str = "http://localhost:4318";

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTelemetry {
    traces: Option<bool>,
    endpoint: Option<String>,
    traces_endpoint: Option<String>,
    headers: Option<BTreeMap<String, String>>,
    service_name: Option<String>,
    sampler: Option<String>,
    sampler_arg: Option<f64>,
    max_queue_size: Option<usize>,
    max_export_batch_size: Option<usize>,
    schedule_delay_ms: Option<u64>,
    export_timeout_ms: Option<u64>,
}

/// A value from the config (named `telemetry.{key}` in errors) or else
/// from the environment (named by its variable).
struct Source<'a, T> {
    value: Option<T>,
    key: &'a str,
    var: &'a str,
}

impl<T> Source<'_, T> {
    fn field(&self) -> String {
        if self.value.is_some() {
            format!("telemetry.{}", self.key)
        } else {
            self.var.to_owned()
        }
    }
}

pub(super) fn telemetry_settings(
    raw: RawTelemetry,
    env: &dyn Fn(&str) -> Option<String>,
) -> anyhow::Result<TelemetrySettings> {
    let env = |name: &str| env(name).filter(|v| !v.trim().is_empty());
    let service_name = match raw.service_name {
        Some(s) if s.is_empty() => bail!("telemetry.service_name: must not be empty"),
        Some(s) => s,
        None => env("OTEL_SERVICE_NAME").unwrap_or_else(|| "sidecar".to_owned()),
    };

    let mut headers = Vec::new();
    match raw.headers {
        Some(map) => {
            for (k, v) in map {
                let at = format!("telemetry.headers.{k}");
                let value = expand_str(&v, &env).map_err(|e| anyhow!("{at}: {e}"))?;
                headers.push(header(&at, &k, &value)?);
            }
        }
        None => {
            if let Some(list) = env("OTEL_EXPORTER_OTLP_HEADERS") {
                headers = header_list("OTEL_EXPORTER_OTLP_HEADERS", &list)?;
            }
        }
    }

    let endpoint = Source {
        value: raw.endpoint,
        key: "endpoint",
        var: "OTEL_EXPORTER_OTLP_ENDPOINT",
    };
    let base = match &endpoint.value {
        Some(e) => Some(expand_str(e, &env).map_err(|e| anyhow!("telemetry.endpoint: {e}"))?),
        None => env("OTEL_EXPORTER_OTLP_ENDPOINT"),
    };
    if let Some(b) = &base {
        parse_upstream_like(b, true).map_err(|e| anyhow!("{}: {e}", endpoint.field()))?;
    }
    let traces_url = Source {
        value: raw.traces_endpoint,
        key: "traces_endpoint",
        var: "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    };
    let traces_url_text = match &traces_url.value {
        Some(e) => {
            Some(expand_str(e, &env).map_err(|e| anyhow!("telemetry.traces_endpoint: {e}"))?)
        }
        None => env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
    };
    if let Some(p) =
        env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL").or_else(|| env("OTEL_EXPORTER_OTLP_PROTOCOL"))
        && p != "http/protobuf"
    {
        bail!(
            "OTEL_EXPORTER_OTLP_PROTOCOL: `{p}` is not supported; the sidecar exports OTLP over HTTP/protobuf (\"http/protobuf\", port 4318)"
        );
    }

    let disabled = env("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
        || env("OTEL_TRACES_EXPORTER").is_some_and(|v| v == "none");
    let wanted = match raw.traces {
        Some(on) => on,
        None => !disabled && (traces_url_text.is_some() || base.is_some()),
    };
    // Checked whether or not traces are on: a typo does not wait for the
    // day someone turns them on.
    let sampler = parse_sampler(raw.sampler, raw.sampler_arg, &env)?;
    let max_queue_size = Source {
        value: raw.max_queue_size,
        key: "max_queue_size",
        var: "OTEL_BSP_MAX_QUEUE_SIZE",
    };
    let max_export_batch_size = Source {
        value: raw.max_export_batch_size,
        key: "max_export_batch_size",
        var: "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
    };
    let schedule_delay = Source {
        value: raw.schedule_delay_ms,
        key: "schedule_delay_ms",
        var: "OTEL_BSP_SCHEDULE_DELAY",
    };
    let export_timeout = Source {
        value: raw.export_timeout_ms,
        key: "export_timeout_ms",
        var: "OTEL_BSP_EXPORT_TIMEOUT",
    };
    let max_queue_size = count(max_queue_size, &env)?.unwrap_or(2048);
    let max_export_batch_size = count(max_export_batch_size, &env)?.unwrap_or(512);
    let schedule_delay =
        count(schedule_delay, &env)?.map_or(Duration::from_secs(5), Duration::from_millis);
    let export_timeout =
        count(export_timeout, &env)?.map_or(Duration::from_secs(10), Duration::from_millis);
    let traces = if wanted {
        let url = match traces_url_text {
            Some(u) => {
                parse_upstream_like(&u, true).map_err(|e| anyhow!("{}: {e}", traces_url.field()))?
            }
            None => signal_url(base.as_deref(), "traces")
                .map_err(|e| anyhow!("{}: {e}", endpoint.field()))?,
        };
        Some(TraceSettings {
            url,
            sampler,
            max_queue_size,
            max_export_batch_size,
            schedule_delay,
            export_timeout,
        })
    } else {
        None
    };
    Ok(TelemetrySettings {
        service_name,
        traces,
        endpoint: base,
        headers,
    })
}

/// `base` + `/v1/{signal}` (the OTLP/HTTP rule for the shared endpoint
/// variable), or the default collector's.
pub(super) fn signal_url(base: Option<&str>, signal: &str) -> anyhow::Result<Uri> {
    let base = base.unwrap_or(DEFAULT_OTLP_ENDPOINT).trim_end_matches('/');
    parse_upstream_like(&format!("{base}/v1/{signal}"), true)
}

/// A positive number from the config, or from its variable.
fn count<T>(
    source: Source<'_, T>,
    env: &dyn Fn(&str) -> Option<String>,
) -> anyhow::Result<Option<T>>
where
    T: PartialEq + Default + Copy + std::str::FromStr,
{
    let field = source.field();
    let value = match source.value {
        Some(v) => Some(v),
        None => match env(source.var) {
            Some(text) => Some(
                text.trim()
                    .parse::<T>()
                    .map_err(|_| anyhow!("{field}: `{text}` is not a whole number"))?,
            ),
            None => None,
        },
    };
    positive(&field, value)
}

fn parse_sampler(
    name: Option<String>,
    arg: Option<f64>,
    env: &dyn Fn(&str) -> Option<String>,
) -> anyhow::Result<Sampler> {
    let (name, name_field) = match name {
        Some(n) => (n, "telemetry.sampler"),
        None => match env("OTEL_TRACES_SAMPLER") {
            Some(n) => (n, "OTEL_TRACES_SAMPLER"),
            None => return Ok(Sampler::ParentBased(Box::new(Sampler::AlwaysOn))),
        },
    };
    let ratio = || -> anyhow::Result<f64> {
        let (value, field) = match arg {
            Some(a) => (a, "telemetry.sampler_arg"),
            None => match env("OTEL_TRACES_SAMPLER_ARG") {
                Some(text) => (
                    text.trim().parse::<f64>().map_err(|_| {
                        anyhow!("OTEL_TRACES_SAMPLER_ARG: `{text}` is not a number between 0 and 1")
                    })?,
                    "OTEL_TRACES_SAMPLER_ARG",
                ),
                None => return Ok(1.0),
            },
        };
        if !(0.0..=1.0).contains(&value) {
            bail!("{field}: {value} is not between 0 and 1");
        }
        Ok(value)
    };
    Ok(match name.as_str() {
        "always_on" => Sampler::AlwaysOn,
        "always_off" => Sampler::AlwaysOff,
        "traceidratio" => Sampler::Ratio(ratio()?),
        "parentbased_always_on" => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
        "parentbased_always_off" => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
        "parentbased_traceidratio" => Sampler::ParentBased(Box::new(Sampler::Ratio(ratio()?))),
        other => bail!(
            "{name_field}: `{other}` is not one of \"always_on\", \"always_off\", \"traceidratio\", \"parentbased_always_on\", \"parentbased_always_off\", \"parentbased_traceidratio\""
        ),
    })
}

fn header(at: &str, name: &str, value: &str) -> anyhow::Result<(HeaderName, HeaderValue)> {
    let name =
        HeaderName::try_from(name).map_err(|_| anyhow!("{at}: `{name}` is not a header name"))?;
    let value =
        HeaderValue::try_from(value).map_err(|_| anyhow!("{at}: not a valid header value"))?;
    Ok((name, value))
}

/// `OTEL_EXPORTER_OTLP_HEADERS`: `key1=value1,key2=value2`, values
/// percent-encoded (W3C baggage format).
pub(super) fn header_list(var: &str, list: &str) -> anyhow::Result<Vec<(HeaderName, HeaderValue)>> {
    let mut out = Vec::new();
    for pair in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| anyhow!("{var}: `{pair}` is not key=value"))?;
        out.push(header(var, k.trim(), &percent_decode(v.trim()))?);
    }
    Ok(out)
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(b) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(toml: &str, vars: &[(&str, &str)]) -> anyhow::Result<TelemetrySettings> {
        let raw: RawTelemetry = toml::from_str(toml)?;
        let env = |name: &str| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        };
        telemetry_settings(raw, &env)
    }

    #[test]
    fn traces_are_off_without_an_endpoint() {
        let s = settings("", &[]).unwrap();
        assert_eq!(s.traces, None);
        assert_eq!(s.service_name, "sidecar");
    }

    #[test]
    fn standard_variables_configure_traces() {
        let s = settings(
            "",
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/"),
                ("OTEL_SERVICE_NAME", "edge"),
                ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
                ("OTEL_BSP_MAX_QUEUE_SIZE", "100"),
                ("OTEL_BSP_SCHEDULE_DELAY", "250"),
                ("OTEL_EXPORTER_OTLP_HEADERS", "api-key=a%20b, x-team=core"),
            ],
        )
        .unwrap();
        let t = s.traces.unwrap();
        assert_eq!(t.url, "http://collector:4318/v1/traces");
        assert_eq!(
            t.sampler,
            Sampler::ParentBased(Box::new(Sampler::Ratio(0.25)))
        );
        assert_eq!(t.max_queue_size, 100);
        assert_eq!(t.schedule_delay, Duration::from_millis(250));
        assert_eq!(s.service_name, "edge");
        assert_eq!(s.headers[0].1, "a b");
        assert_eq!(s.headers[1].0, "x-team");
    }

    #[test]
    fn the_config_wins_over_the_variables() {
        let s = settings(
            "endpoint = \"http://a:4318\"\nservice_name = \"mine\"\nsampler = \"always_on\"",
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://b:4318"),
                ("OTEL_SERVICE_NAME", "theirs"),
                ("OTEL_TRACES_SAMPLER", "always_off"),
            ],
        )
        .unwrap();
        assert_eq!(s.traces.unwrap().url, "http://a:4318/v1/traces");
        assert_eq!(s.service_name, "mine");
    }

    #[test]
    fn a_signal_endpoint_is_taken_as_is() {
        let s = settings(
            "",
            &[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://c:9/t")],
        )
        .unwrap();
        assert_eq!(s.traces.unwrap().url, "http://c:9/t");
    }

    #[test]
    fn traces_can_be_turned_off_whatever_the_endpoint() {
        let vars = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://b:4318")];
        assert_eq!(settings("traces = false", &vars).unwrap().traces, None);
        let off = [vars[0], ("OTEL_SDK_DISABLED", "true")];
        assert_eq!(settings("", &off).unwrap().traces, None);
        let none = [vars[0], ("OTEL_TRACES_EXPORTER", "none")];
        assert_eq!(settings("", &none).unwrap().traces, None);
        // On with no endpoint: the default collector's.
        let on = settings("traces = true", &[]).unwrap().traces.unwrap();
        assert_eq!(on.url, "http://localhost:4318/v1/traces");
    }

    #[test]
    fn bad_values_name_their_key_or_variable() {
        let e =
            |toml: &str, vars: &[(&str, &str)]| format!("{:#}", settings(toml, vars).unwrap_err());
        assert!(e("sampler = \"sometimes\"", &[]).starts_with("telemetry.sampler: `sometimes`"));
        assert!(
            e(
                "",
                &[
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://x:4318"),
                    ("OTEL_TRACES_SAMPLER", "nope")
                ]
            )
            .starts_with("OTEL_TRACES_SAMPLER: `nope`")
        );
        assert!(
            e(
                "sampler = \"traceidratio\"\nsampler_arg = 2.0\ntraces = true",
                &[]
            )
            .starts_with("telemetry.sampler_arg: 2")
        );
        assert!(
            e("traces = true", &[("OTEL_BSP_MAX_QUEUE_SIZE", "lots")])
                .starts_with("OTEL_BSP_MAX_QUEUE_SIZE: `lots`")
        );
        assert!(
            e("traces = true\nmax_queue_size = 0", &[])
                .starts_with("telemetry.max_queue_size: must be")
        );
        assert!(e("endpoint = \"ftp://x\"", &[]).starts_with("telemetry.endpoint:"));
        assert!(
            e(
                "",
                &[
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://x:4317"),
                    ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
                ]
            )
            .starts_with("OTEL_EXPORTER_OTLP_PROTOCOL: `grpc` is not supported")
        );
        assert!(e("", &[("OTEL_EXPORTER_OTLP_HEADERS", "novalue")]).contains("not key=value"));
        assert!(e("colour = 1", &[]).contains("unknown field"));
    }
}
