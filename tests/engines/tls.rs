//! A private certificate authority for TLS tests, made with the `openssl` command.

use std::path::Path;
use std::process::Command;

/// Writes into `dir` a fresh CA (`ca.pem`, `ca.key`) and a server certificate it signed for
/// `127.0.0.1` and `localhost` (`server.pem`, `server.key`), valid two days.
pub fn test_ca(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=ssegate test CA",
        ],
    );
    signed_cert(dir, "server", "IP:127.0.0.1,DNS:localhost");
}

/// Writes into `dir` a certificate `{name}.pem` (key `{name}.key`) for the subject
/// alternative names `san` (`IP:127.0.0.1`, `IP:127.0.0.1,DNS:localhost`), signed by the CA
/// of [`test_ca`] in `dir`, valid two days. Its common name is the first name in `san`.
pub fn signed_cert(dir: &Path, name: &str, san: &str) {
    let first = san.split(',').next().unwrap_or_default();
    let cn = first.split_once(':').map_or(first, |(_, v)| v);
    let (key, csr, ext, pem) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.ext"),
        format!("{name}.pem"),
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            &format!("/CN={cn}"),
        ],
    );
    std::fs::write(dir.join(&ext), format!("subjectAltName={san}\n")).unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "2",
            "-extfile",
            &ext,
        ],
    );
}

/// Runs `openssl args` in `dir`; panics with its output on failure.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl (to make test certificates) is not installed");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
