//! The deployment's wiring: `deploy/k8s/*.yaml` and the `Dockerfile` must agree
//! with the sidecar config they ship, as the sidecar itself reads it
//! (`sidecar::config::parse`). Nothing here is compared with constants: every
//! port, path and name is taken from one file and looked up in another.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize as _;
use serde_json::Value;
use sidecar::config::Config;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn k8s_dir() -> PathBuf {
    root().join("deploy/k8s")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The `.yaml` files of deploy/k8s, by file name.
fn manifest_files() -> BTreeMap<String, PathBuf> {
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(k8s_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            files.insert(
                path.file_name().unwrap().to_string_lossy().into_owned(),
                path,
            );
        }
    }
    files
}

/// Every Kubernetes object in deploy/k8s (all documents of every file but
/// the kustomization).
fn objects() -> Vec<Value> {
    let mut out = Vec::new();
    for (name, path) in manifest_files() {
        if name.starts_with("kustomization.") {
            continue;
        }
        let text = read(&path);
        for doc in serde_norway::Deserializer::from_str(&text) {
            let v = Value::deserialize(doc).unwrap_or_else(|e| panic!("{name}: {e}"));
            if !v.is_null() {
                out.push(v);
            }
        }
    }
    out
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("{pointer}: missing or not a string in {v:#}"))
}

fn array_at<'a>(v: &'a Value, pointer: &str) -> &'a [Value] {
    v.pointer(pointer)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

fn the_one(objects: &[Value], kind: &str) -> Value {
    let found: Vec<&Value> = objects.iter().filter(|o| o["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "expected one {kind} in deploy/k8s");
    found[0].clone()
}

/// The deployment as the tests see it: the pod, its two containers, and the
/// sidecar's config loaded from the ConfigMap at the path the sidecar is
/// started with.
struct Pod {
    objects: Vec<Value>,
    labels: serde_json::Map<String, Value>,
    spec: Value,
    /// The container running `sidecar`, and whether it is an init container.
    sidecar: Value,
    sidecar_is_init: bool,
    /// The container running `user-service`.
    user_service: Value,
    /// The `--config` argument.
    config_path: String,
    config: Config,
}

/// The container whose command runs the binary `name`.
fn running<'a>(containers: &'a [Value], name: &str) -> Option<&'a Value> {
    containers.iter().find(|c| {
        array_at(c, "/command")
            .first()
            .and_then(Value::as_str)
            .is_some_and(|cmd| Path::new(cmd).file_name().is_some_and(|f| f == name))
    })
}

fn env_names(container: &Value) -> BTreeSet<String> {
    array_at(container, "/env")
        .iter()
        .map(|e| str_at(e, "/name").to_owned())
        .collect()
}

fn env_value<'a>(container: &'a Value, name: &str) -> &'a Value {
    array_at(container, "/env")
        .iter()
        .find(|e| e["name"] == name)
        .unwrap_or_else(|| panic!("container {} has no env {name}", container["name"]))
}

/// Mounts of a container: mountPath → (the volume, the mount).
fn mounts(pod_spec: &Value, container: &Value) -> Vec<(String, Value, Value)> {
    array_at(container, "/volumeMounts")
        .iter()
        .map(|m| {
            let name = str_at(m, "/name");
            let volume = array_at(pod_spec, "/volumes")
                .iter()
                .find(|v| v["name"] == name)
                .unwrap_or_else(|| panic!("volumeMount {name}: no such volume"))
                .clone();
            (str_at(m, "/mountPath").to_owned(), volume, m.clone())
        })
        .collect()
}

/// The mount `path` lies under, with the rest of the path.
fn mount_of(mounts: &[(String, Value, Value)], path: &Path) -> Option<(Value, Value, PathBuf)> {
    mounts.iter().find_map(|(at, volume, mount)| {
        path.strip_prefix(at)
            .ok()
            .map(|rest| (volume.clone(), mount.clone(), rest.to_owned()))
    })
}

/// Resolves a port (number, or a name declared by one of the pod's
/// containers) to a number.
fn pod_port(pod_spec: &Value, port: &Value) -> u16 {
    if let Some(n) = port.as_u64() {
        return u16::try_from(n).unwrap();
    }
    let name = port.as_str().unwrap_or_else(|| panic!("port {port}"));
    let containers = array_at(pod_spec, "/initContainers")
        .iter()
        .chain(array_at(pod_spec, "/containers"));
    for c in containers {
        if let Some(p) = array_at(c, "/ports").iter().find(|p| p["name"] == name) {
            return u16::try_from(p["containerPort"].as_u64().unwrap()).unwrap();
        }
    }
    panic!("no container of the pod declares a port named {name}")
}

fn container_ports(container: &Value) -> BTreeSet<u16> {
    array_at(container, "/ports")
        .iter()
        .map(|p| u16::try_from(p["containerPort"].as_u64().unwrap()).unwrap())
        .collect()
}

/// Parses a sidecar config as the sidecar would, at `path`, with only the
/// environment variables `env` declared (each set to `<env NAME>`).
fn parse_config(text: &str, path: &Path, env: &BTreeSet<String>) -> Config {
    sidecar::config::parse(text, path, &|name| {
        env.contains(name).then(|| format!("<env {name}>"))
    })
    .unwrap_or_else(|e| panic!("{e:#}"))
}

fn pod() -> Pod {
    let objects = objects();
    let deployment = the_one(&objects, "Deployment");
    let template = deployment.pointer("/spec/template").unwrap().clone();
    let spec = template["spec"].clone();
    let labels = template
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let inits = array_at(&spec, "/initContainers");
    let mains = array_at(&spec, "/containers");
    let (sidecar, sidecar_is_init) = match running(inits, "sidecar") {
        Some(c) => (c.clone(), true),
        None => (
            running(mains, "sidecar")
                .expect("no container runs the sidecar")
                .clone(),
            false,
        ),
    };
    let user_service = running(mains, "user-service")
        .or_else(|| running(inits, "user-service"))
        .expect("no container runs user-service")
        .clone();

    let args: Vec<&str> = array_at(&sidecar, "/command")
        .iter()
        .skip(1)
        .chain(array_at(&sidecar, "/args"))
        .map(|a| a.as_str().unwrap())
        .collect();
    let at = args
        .iter()
        .position(|a| *a == "--config")
        .expect("the sidecar is started without --config");
    let config_path = args[at + 1].to_owned();

    // The ConfigMap mounted where --config points.
    let (volume, _, rest) = mount_of(&mounts(&spec, &sidecar), Path::new(&config_path))
        .unwrap_or_else(|| panic!("--config {config_path} is under no volume mount"));
    let map_name = str_at(&volume, "/configMap/name");
    let rest = rest.to_str().unwrap();
    // With `items`, a key lands at its `path`; without, at its own name.
    let key = array_at(&volume, "/configMap/items")
        .iter()
        .find(|i| i["path"] == rest)
        .map_or(rest, |i| str_at(i, "/key"));
    let map = objects
        .iter()
        .find(|o| o["kind"] == "ConfigMap" && o["metadata"]["name"] == map_name)
        .unwrap_or_else(|| panic!("no ConfigMap {map_name} in deploy/k8s"));
    let text = map["data"][key]
        .as_str()
        .unwrap_or_else(|| panic!("ConfigMap {map_name} has no key {key}"));
    let config = parse_config(text, Path::new(&config_path), &env_names(&sidecar));

    Pod {
        objects,
        labels,
        spec,
        sidecar,
        sidecar_is_init,
        user_service,
        config_path,
        config,
    }
}

fn selects(selector: &Value, labels: &serde_json::Map<String, Value>) -> bool {
    let wanted = selector.as_object().expect("a selector");
    !wanted.is_empty() && wanted.iter().all(|(k, v)| labels.get(k) == Some(v))
}

#[test]
fn sidecar_runs_as_a_native_sidecar_with_the_mounted_config() {
    let pod = pod();
    assert!(
        pod.sidecar_is_init,
        "the sidecar must be in initContainers (a native sidecar)"
    );
    assert_eq!(
        pod.sidecar["restartPolicy"], "Always",
        "a native sidecar needs restartPolicy: Always"
    );
    assert!(
        running(array_at(&pod.spec, "/containers"), "user-service").is_some(),
        "user-service is the app container"
    );
    // Mounted as a directory: a subPath mount never sees ConfigMap updates,
    // and the sidecar's hot reload would have nothing to pick up.
    let (_, mount, rest) = mount_of(
        &mounts(&pod.spec, &pod.sidecar),
        Path::new(&pod.config_path),
    )
    .unwrap();
    assert!(
        mount.get("subPath").is_none(),
        "config mounted with subPath"
    );
    assert_eq!(mount["readOnly"], true);
    assert_eq!(rest.components().count(), 1, "{}", pod.config_path);
    assert_eq!(pod.config.source, Path::new(&pod.config_path));
}

#[test]
fn service_exposes_only_the_proxy_port() {
    let pod = pod();
    let service = the_one(&pod.objects, "Service");
    assert!(
        selects(&service["spec"]["selector"], &pod.labels),
        "the Service does not select the pod"
    );
    let targets: BTreeSet<u16> = array_at(&service, "/spec/ports")
        .iter()
        .map(|p| pod_port(&pod.spec, p.get("targetPort").unwrap_or(&p["port"])))
        .collect();
    let listen = pod.config.listen;
    assert_eq!(targets, BTreeSet::from([listen.port()]));
    assert!(
        container_ports(&pod.sidecar).contains(&listen.port()),
        "the sidecar does not declare its proxy port"
    );
    assert!(
        listen.ip().is_unspecified(),
        "the proxy listens on {listen}: the Service cannot reach it"
    );
    let admin = pod.config.admin.listen.expect("admin listener is off");
    assert!(
        !targets.contains(&admin.port()),
        "admin port in the Service"
    );
}

#[test]
fn probes_hit_the_admin_listener_on_healthz_and_readyz() {
    let pod = pod();
    let admin = pod.config.admin.listen.expect("admin listener is off");
    // Kubelet probes the pod IP, not loopback.
    assert!(
        admin.ip().is_unspecified(),
        "admin listens on {admin}: kubelet's probes cannot reach it"
    );
    for (probe, path) in [
        ("startupProbe", "/readyz"),
        ("readinessProbe", "/readyz"),
        ("livenessProbe", "/healthz"),
    ] {
        let get = pod
            .sidecar
            .pointer(&format!("/{probe}/httpGet"))
            .unwrap_or_else(|| panic!("the sidecar has no {probe} with httpGet"));
        assert_eq!(get["path"], path, "{probe}");
        assert_eq!(pod_port(&pod.spec, &get["port"]), admin.port(), "{probe}");
    }
}

#[test]
fn network_policy_admits_only_the_proxy_port() {
    let pod = pod();
    let policy = the_one(&pod.objects, "NetworkPolicy");
    assert!(selects(
        &policy["spec"]["podSelector"]["matchLabels"],
        &pod.labels
    ));
    let rules = array_at(&policy, "/spec/ingress");
    assert!(!rules.is_empty(), "no ingress rule: the pod admits nothing");
    let mut ports = BTreeSet::new();
    for rule in rules {
        let listed = array_at(rule, "/ports");
        assert!(!listed.is_empty(), "a rule without ports admits every port");
        ports.extend(listed.iter().map(|p| pod_port(&pod.spec, &p["port"])));
    }
    assert_eq!(ports, BTreeSet::from([pod.config.listen.port()]));
}

#[test]
fn policies_and_compile_cache_live_on_mounted_volumes_or_in_the_image() {
    let pod = pod();
    let mounts = mounts(&pod.spec, &pod.sidecar);
    let image = Dockerfile::read().final_stage_files();
    for (name, policy) in &pod.config.policies {
        let on_volume = mount_of(&mounts, &policy.wasm).is_some();
        let baked = image.contains_key(&policy.wasm);
        assert!(
            on_volume || baked,
            "policy {name}: {} is neither under a volume mount of the sidecar nor copied into the image",
            policy.wasm.display()
        );
    }
    if let Some(cache) = &pod.config.compile_cache {
        let (volume, mount, _) = mount_of(&mounts, cache)
            .unwrap_or_else(|| panic!("compile cache {} is on no volume", cache.display()));
        assert!(
            volume.get("emptyDir").is_some(),
            "compile cache not an emptyDir"
        );
        assert_ne!(mount["readOnly"], true, "compile cache mounted read-only");
    }
}

#[test]
fn route_upstream_is_user_service_on_loopback() {
    let pod = pod();
    let addr = env_value(&pod.user_service, "USER_SERVICE_ADDR")["value"]
        .as_str()
        .expect("USER_SERVICE_ADDR is a plain value");
    let addr: SocketAddr = addr.parse().unwrap();
    assert!(
        addr.ip().is_loopback(),
        "user-service on {addr}: reachable without the sidecar"
    );
    assert!(container_ports(&pod.user_service).contains(&addr.port()));
    let upstreams: Vec<_> = pod
        .config
        .routes
        .iter()
        .flat_map(|r| &r.upstreams)
        .collect();
    assert!(!upstreams.is_empty(), "no route reaches an upstream");
    for upstream in upstreams {
        let authority = upstream.authority().unwrap();
        assert_eq!(authority.port_u16(), Some(addr.port()), "{upstream}");
        assert_eq!(authority.host(), addr.ip().to_string(), "{upstream}");
    }
}

#[test]
fn auth_policy_verifies_with_the_secret_user_service_signs_with() {
    let pod = pod();
    let auth: Value = serde_json::from_str(&pod.config.policies["auth"].config_json).unwrap();
    // parse_config set every declared variable to `<env NAME>`.
    assert_eq!(auth["secret"], "<env JWT_SECRET>");
    let from_sidecar = &env_value(&pod.sidecar, "JWT_SECRET")["valueFrom"]["secretKeyRef"];
    let from_service = &env_value(&pod.user_service, "JWT_SECRET")["valueFrom"]["secretKeyRef"];
    assert!(
        from_sidecar.is_object(),
        "sidecar's JWT_SECRET not from a Secret"
    );
    assert_eq!(from_sidecar, from_service);
}

#[test]
fn image_exposes_the_proxy_port_and_ships_what_the_manifests_run() {
    let pod = pod();
    let docker = Dockerfile::read();
    let stage = docker.stages.last().unwrap();
    let files = docker.final_stage_files();
    assert_eq!(
        stage.exposed,
        BTreeSet::from([pod.config.listen.port()]),
        "EXPOSE"
    );
    for c in [&pod.sidecar, &pod.user_service] {
        let cmd = str_at(c, "/command/0");
        assert!(
            files.contains_key(Path::new(cmd)),
            "{cmd} is not copied into the image"
        );
        assert_eq!(c["image"], pod.sidecar["image"], "one image runs both");
    }
    let user = stage.user.as_deref().expect("the image runs as root");
    assert!(
        !matches!(user.split(':').next(), Some("root" | "0")),
        "USER {user}"
    );

    // The image's own default config: what `docker run` serves.
    let entry: Vec<String> = serde_json::from_str(stage.entrypoint.as_deref().unwrap()).unwrap();
    let cmd: Vec<String> = serde_json::from_str(stage.cmd.as_deref().unwrap()).unwrap();
    assert!(
        files.contains_key(Path::new(&entry[0])),
        "ENTRYPOINT {entry:?}"
    );
    let at = cmd.iter().position(|a| a == "--config").unwrap();
    let path = Path::new(&cmd[at + 1]);
    let text = files[path]
        .as_deref()
        .unwrap_or_else(|| panic!("{} is not written by the Dockerfile", path.display()));
    let config = parse_config(text, path, &BTreeSet::from(["JWT_SECRET".to_owned()]));
    assert!(stage.exposed.contains(&config.listen.port()));
    assert!(config.listen.ip().is_unspecified());
    if let Some(admin) = config.admin.listen {
        assert!(admin.ip().is_loopback(), "image's admin on {admin}");
    }
    for (name, policy) in &config.policies {
        assert!(
            files.contains_key(&policy.wasm),
            "default config's policy {name}: {} not in the image",
            policy.wasm.display()
        );
    }
}

#[test]
fn kustomization_lists_every_manifest() {
    let files = manifest_files();
    let text = read(&files["kustomization.yaml"]);
    let k: Value = serde_norway::from_str(&text).unwrap();
    let listed: BTreeSet<&str> = array_at(&k, "/resources")
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    let present: BTreeSet<&str> = files
        .keys()
        .map(String::as_str)
        .filter(|f| *f != "kustomization.yaml")
        .collect();
    assert_eq!(listed, present);
}

/// The parts of a Dockerfile the tests need, per stage.
#[derive(Debug, Default)]
struct Stage {
    exposed: BTreeSet<u16>,
    /// `COPY` sources and destination (heredoc sources as `<<` + content).
    copies: Vec<(Vec<String>, String)>,
    heredocs: Vec<(String, String)>,
    user: Option<String>,
    entrypoint: Option<String>,
    cmd: Option<String>,
}

#[derive(Debug)]
struct Dockerfile {
    stages: Vec<Stage>,
}

impl Dockerfile {
    fn read() -> Self {
        let text = read(&root().join("Dockerfile"));
        let mut stages: Vec<Stage> = Vec::new();
        let mut lines = text.lines();
        while let Some(first) = lines.next() {
            let trimmed = first.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            // Continuation lines.
            let mut line = trimmed.to_owned();
            while line.ends_with('\\') {
                line.pop();
                match lines.next() {
                    Some(next) if next.trim_start().starts_with('#') => {}
                    Some(next) => line.push_str(next.trim()),
                    None => break,
                }
            }
            let (instr, rest) = line
                .split_once(char::is_whitespace)
                .unwrap_or((line.as_str(), ""));
            let rest = rest.trim().to_owned();
            // A heredoc (`<<EOF`, `<<"EOF"`, `<<-EOF`): its lines follow.
            let heredoc = rest.find("<<").map(|at| {
                let delim: String = rest[at + 2..]
                    .trim_start_matches('-')
                    .split_whitespace()
                    .next()
                    .unwrap()
                    .trim_matches(|c| c == '"' || c == '\'')
                    .to_owned();
                let mut body = String::new();
                for l in lines.by_ref() {
                    if l.trim() == delim {
                        break;
                    }
                    body.push_str(l);
                    body.push('\n');
                }
                body
            });
            let instr = instr.to_ascii_uppercase();
            if instr == "FROM" {
                stages.push(Stage::default());
                continue;
            }
            let Some(stage) = stages.last_mut() else {
                continue; // ARG before the first FROM
            };
            match instr.as_str() {
                "EXPOSE" => stage.exposed.extend(
                    rest.split_whitespace()
                        .map(|p| p.split('/').next().unwrap().parse::<u16>().unwrap()),
                ),
                "COPY" | "ADD" => {
                    let words: Vec<String> = rest
                        .split_whitespace()
                        .filter(|w| !w.starts_with("--"))
                        .map(str::to_owned)
                        .collect();
                    let (dest, sources) = words.split_last().unwrap();
                    match heredoc {
                        Some(body) => stage.heredocs.push((dest.clone(), body)),
                        None => stage.copies.push((sources.to_vec(), dest.clone())),
                    }
                }
                "USER" => stage.user = Some(rest),
                "ENTRYPOINT" => stage.entrypoint = Some(rest),
                "CMD" => stage.cmd = Some(rest),
                _ => {}
            }
        }
        assert!(!stages.is_empty(), "Dockerfile: no FROM");
        Self { stages }
    }

    /// The files the final stage puts into the image: path → the content of
    /// those written from a heredoc.
    fn final_stage_files(&self) -> BTreeMap<PathBuf, Option<String>> {
        let stage = self.stages.last().unwrap();
        let mut files = BTreeMap::new();
        for (sources, dest) in &stage.copies {
            for source in sources {
                let path = if dest.ends_with('/') || sources.len() > 1 {
                    Path::new(dest).join(Path::new(source).file_name().unwrap())
                } else {
                    PathBuf::from(dest)
                };
                files.insert(path, None);
            }
        }
        for (dest, body) in &stage.heredocs {
            files.insert(PathBuf::from(dest), Some(body.clone()));
        }
        files
    }
}
