# syntax=docker/dockerfile:1.7
#
# The sidecar image: `sidecar` and `user-service` built in release, plus the
# shipped policies (auth, logging, cache) and a default config, on a small
# non-root runtime (distroless/cc: glibc and libgcc, no shell).
#
#   docker build -t wasm-policy-sidecar .
#
# Layout of the image (deploy/k8s/ and e2e/tests/all/deploy.rs rely on it):
#   /usr/local/bin/sidecar              ENTRYPOINT; `run --config FILE`
#   /usr/local/bin/user-service         the demo service (same image, other command)
#   /opt/sidecar/policies/*.wasm        the baked policies
#   /etc/sidecar/sidecar.toml           default config (proxy on 0.0.0.0:4000)
#
# Only the proxy port is EXPOSEd: the admin listener (/healthz, /readyz,
# /metrics, /policies, POST /reload) stays inside the container by default.

ARG RUST_VERSION=1.95

# ---- build: binaries and policies --------------------------------------------
FROM rust:${RUST_VERSION}-bookworm AS build
RUN rustup target add wasm32-wasip2
WORKDIR /src
COPY . .
# `dist` is release plus thin LTO (Cargo.toml): what a deployment should run.
# PROFILE=release builds faster.
ARG PROFILE=dist
# The cache mounts keep the registry and the target dirs between builds, so
# the outputs are copied to /out inside the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    --mount=type=cache,target=/src/plugins/target \
    set -eux; \
    cargo build --locked --profile "${PROFILE}" -p sidecar -p user-service; \
    cargo build --locked --release --target wasm32-wasip2 \
        --manifest-path plugins/Cargo.toml -p auth -p logging -p cache; \
    mkdir -p /out/bin /out/policies; \
    cp "target/${PROFILE}/sidecar" "target/${PROFILE}/user-service" /out/bin/; \
    cp plugins/target/wasm32-wasip2/release/auth.wasm \
       plugins/target/wasm32-wasip2/release/logging.wasm \
       plugins/target/wasm32-wasip2/release/cache.wasm /out/policies/

# ---- runtime -----------------------------------------------------------------
FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
COPY --from=build /out/bin/sidecar /out/bin/user-service /usr/local/bin/
COPY --from=build /out/policies/auth.wasm /out/policies/logging.wasm /out/policies/cache.wasm /opt/sidecar/policies/
# The default config: the demo's routes and policies, with the proxy on all
# interfaces and the admin listener on loopback. Kubernetes mounts its own
# (deploy/k8s/configmap.yaml). The quoted delimiter keeps ${JWT_SECRET} for
# the sidecar to expand at run time.
COPY <<"EOF" /etc/sidecar/sidecar.toml
listen = "0.0.0.0:4000"

[admin]
listen = "127.0.0.1:9901"

[wasm]
# The root filesystem may be read-only; compiling three policies takes well
# under a second, so nothing is cached by default.
compile_cache = "off"

[[route]]
name = "user-service"
prefix = "/user-service"
upstream = "http://127.0.0.1:3002"
rewrite = "/"
policies = ["logging", "auth", "cache"]

[[route]]
name = "monitor"
prefix = "/monitor"
policies = ["logging"]

[policy.logging]
wasm = "/opt/sidecar/policies/logging.wasm"
failure = "open"

[policy.auth]
wasm = "/opt/sidecar/policies/auth.wasm"
failure = "closed"
[policy.auth.config]
secret = "${JWT_SECRET}"           # required: the secret user-service signs with
public_paths = ["/user-service/login"]
subject_header = "x-authenticated-user"

[policy.cache]
wasm = "/opt/sidecar/policies/cache.wasm"
failure = "open"
[policy.cache.config]
ttl_secs = 30
identity_header = "x-authenticated-user"
EOF
# distroless "nonroot": uid/gid 65532.
USER 65532:65532
EXPOSE 4000
ENTRYPOINT ["/usr/local/bin/sidecar"]
CMD ["run", "--config", "/etc/sidecar/sidecar.toml"]
