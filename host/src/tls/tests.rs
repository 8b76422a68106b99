use std::path::PathBuf;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};

use super::*;

/// A folder of its own per test, emptied first.
fn dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sidecar-tls-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn ca() -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "unit test CA");
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

/// A `localhost` certificate and its key, as PEM.
fn leaf(ca: &CertifiedIssuer<'static, KeyPair>) -> (String, String) {
    let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, ca).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// Writes `files` (name, content) into `dir`; returns the settings for the
/// first two as cert and key.
fn write(dir: &Path, files: &[(&str, &str)]) {
    for (name, content) in files {
        std::fs::write(dir.join(name), content).unwrap();
    }
}

fn listener(dir: &Path) -> ServerTls {
    ServerTls {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
        client_ca: None,
    }
}

fn server_err(settings: &ServerTls) -> String {
    format!(
        "{:#}",
        server_config(settings, true, "sidecar.toml: server.tls").unwrap_err()
    )
}

#[test]
fn a_valid_pair_loads_and_offers_h2_then_http1_over_alpn() {
    let dir = dir("valid");
    let ca = ca();
    let (cert, key) = leaf(&ca);
    write(&dir, &[("cert.pem", &cert), ("key.pem", &key)]);
    let config = server_config(&listener(&dir), true, "sidecar.toml: server.tls").unwrap();
    assert_eq!(
        config.alpn_protocols,
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    );
    // `[server] http2 = false`: HTTP/1.1 alone.
    let config = server_config(&listener(&dir), false, "sidecar.toml: server.tls").unwrap();
    assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()]);

    write(&dir, &[("ca.pem", &ca.pem())]);
    let mutual = ServerTls {
        client_ca: Some(dir.join("ca.pem")),
        ..listener(&dir)
    };
    assert!(server_config(&mutual, true, "sidecar.toml: server.tls").is_ok());
}

#[test]
fn listener_errors_name_the_field_and_the_file() {
    let dir = dir("listener-errors");
    let ca = ca();
    let (cert, key) = leaf(&ca);
    let (_, other_key) = leaf(&ca);
    let settings = listener(&dir);
    let cert_path = dir.join("cert.pem").display().to_string();
    let key_path = dir.join("key.pem").display().to_string();

    let e = server_err(&settings);
    assert!(
        e.starts_with(&format!(
            "sidecar.toml: server.tls.cert: cannot read {cert_path}"
        )),
        "{e}"
    );

    write(&dir, &[("cert.pem", "just some text\n"), ("key.pem", &key)]);
    let e = server_err(&settings);
    assert!(
        e.contains(&format!(
            "server.tls.cert: {cert_path} holds no certificate"
        )),
        "{e}"
    );

    let broken = "-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n";
    write(&dir, &[("cert.pem", broken)]);
    let e = server_err(&settings);
    assert!(
        e.contains(&format!("server.tls.cert: {cert_path} is not valid PEM")),
        "{e}"
    );

    // A key file that holds a certificate instead.
    write(&dir, &[("cert.pem", &cert), ("key.pem", &cert)]);
    let e = server_err(&settings);
    assert!(
        e.contains(&format!("server.tls.key: {key_path} holds no private key")),
        "{e}"
    );

    write(&dir, &[("key.pem", &other_key)]);
    let e = server_err(&settings);
    assert!(
        e.contains(&format!(
            "server.tls.key: {key_path} cannot serve certificate {cert_path}"
        )),
        "{e}"
    );

    write(&dir, &[("key.pem", &key), ("ca.pem", "no PEM here")]);
    let e = server_err(&ServerTls {
        client_ca: Some(dir.join("ca.pem")),
        ..settings
    });
    assert!(e.contains("server.tls.client_ca: "), "{e}");
    assert!(e.contains("ca.pem holds no certificate"), "{e}");
}

#[test]
fn upstream_errors_name_the_field_and_the_file() {
    let dir = dir("upstream-errors");
    let ca = ca();
    let (cert, key) = leaf(&ca);
    write(
        &dir,
        &[("ca.pem", &ca.pem()), ("me.pem", &cert), ("me.key", &key)],
    );
    let field = "sidecar.toml: route[2].tls";
    let good = UpstreamTls {
        ca: Some(dir.join("ca.pem")),
        client_cert: Some(ClientCert {
            cert: dir.join("me.pem"),
            key: dir.join("me.key"),
        }),
    };
    assert!(client_config(&good, field).is_ok());
    assert!(
        client_config(&UpstreamTls::default(), field).is_ok(),
        "system roots"
    );

    let e = format!(
        "{:#}",
        client_config(
            &UpstreamTls {
                ca: Some(dir.join("missing.pem")),
                ..good.clone()
            },
            field
        )
        .unwrap_err()
    );
    assert!(
        e.starts_with("sidecar.toml: route[2].tls.ca: cannot read "),
        "{e}"
    );
    assert!(e.contains("missing.pem"), "{e}");

    write(
        &dir,
        &[(
            "bad.key",
            "-----BEGIN PRIVATE KEY-----\n%%%\n-----END PRIVATE KEY-----\n",
        )],
    );
    let e = format!(
        "{:#}",
        client_config(
            &UpstreamTls {
                client_cert: Some(ClientCert {
                    cert: dir.join("me.pem"),
                    key: dir.join("bad.key"),
                }),
                ..good.clone()
            },
            field
        )
        .unwrap_err()
    );
    assert!(
        e.starts_with("sidecar.toml: route[2].tls.client_key: "),
        "{e}"
    );
    assert!(e.contains("bad.key is not valid PEM"), "{e}");

    write(&dir, &[("leaf-as-key.pem", &cert)]);
    let e = format!(
        "{:#}",
        client_config(
            &UpstreamTls {
                client_cert: Some(ClientCert {
                    cert: dir.join("leaf-as-key.pem"),
                    key: dir.join("leaf-as-key.pem"),
                }),
                ..good
            },
            field
        )
        .unwrap_err()
    );
    assert!(e.contains("route[2].tls.client_key: "), "{e}");
    assert!(e.contains("holds no private key"), "{e}");
}

#[test]
fn a_broken_replacement_keeps_the_old_certificate_and_a_good_one_replaces_it() {
    let dir = dir("reload");
    let ca = ca();
    let (cert, key) = leaf(&ca);
    write(&dir, &[("cert.pem", &cert), ("key.pem", &key)]);
    let tls = ListenerTls::load(&listener(&dir), true, Path::new("sidecar.toml")).unwrap();
    let serving = || tls.current.read().unwrap().clone();
    let first = serving();
    assert!(!tls.reload_if_changed().unwrap(), "nothing changed");

    write(&dir, &[("cert.pem", "garbage")]);
    let e = format!("{:#}", tls.reload_if_changed().unwrap_err());
    assert!(e.starts_with("sidecar.toml: server.tls.cert: "), "{e}");
    assert!(
        Arc::ptr_eq(&first, &serving()),
        "the old config still serves"
    );

    let (cert, key) = leaf(&ca);
    write(&dir, &[("cert.pem", &cert), ("key.pem", &key)]);
    assert!(tls.reload_if_changed().unwrap());
    assert!(!Arc::ptr_eq(&first, &serving()), "swapped");
}
