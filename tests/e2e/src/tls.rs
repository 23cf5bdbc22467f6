//! A TLS endpoint for the local engine, as `dockerd --tlsverify` would serve it: a CA,
//! server and client certificates, and stunnel in front of the engine's socket
//! (requiring a client certificate signed by the CA). To the controller the engine
//! is then a remote one (`tcp://` with TLS).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The proxy process, stopped when dropped.
pub struct Proxy(Child);

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, as an operator
/// makes them for `dockerd --tlsverify`; plus a client certificate from another CA.
pub fn make_certs(dir: &Path) {
    make_certs_for(dir, &[]);
}

/// [`make_certs`] with a server certificate also valid for these IP addresses (or
/// `DNS:name`s).
pub fn make_certs_for(dir: &Path, ips: &[&str]) {
    std::fs::create_dir_all(dir).unwrap();
    for (name, cn) in [("ca", "mai-fleet test CA"), ("rogue-ca", "someone else")] {
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "1",
                "-keyout",
                &format!("{name}-key.pem"),
                "-out",
                &format!("{name}.pem"),
                "-subj",
                &format!("/CN={cn}"),
            ],
        );
    }
    let mut san = String::from("IP:127.0.0.1,DNS:localhost");
    for ip in ips {
        if ip.starts_with("DNS:") {
            san.push_str(&format!(",{ip}"));
        } else {
            san.push_str(&format!(",IP:{ip}"));
        }
    }
    std::fs::write(
        dir.join("server.ext"),
        format!("subjectAltName={san}\nextendedKeyUsage=serverAuth\n"),
    )
    .unwrap();
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    for (name, ca, ext) in [
        ("server", "ca", "server.ext"),
        ("client", "ca", "client.ext"),
        ("rogue", "rogue-ca", "client.ext"),
    ] {
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &format!("{name}-key.pem"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                &format!("/CN={name}"),
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                &format!("{ca}.pem"),
                "-CAkey",
                &format!("{ca}-key.pem"),
                "-CAcreateserial",
                "-days",
                "1",
                "-out",
                &format!("{name}.pem"),
                "-extfile",
                ext,
            ],
        );
    }
}

pub fn start_proxy(dir: &Path, port: u16) -> Proxy {
    let conf = dir.join("stunnel.conf");
    let d = dir.display();
    std::fs::write(
        &conf,
        format!(
            "foreground = yes\npid =\n[docker]\naccept = 127.0.0.1:{port}\nconnect = /var/run/docker.sock\n\
             cert = {d}/server.pem\nkey = {d}/server-key.pem\nCAfile = {d}/ca.pem\nverifyChain = yes\nrequireCert = yes\n"
        ),
    )
    .unwrap();
    // Guarded at once, so that a failed start below still reaps the process.
    let proxy = Proxy(
        Command::new("stunnel")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("stunnel is installed (scripts/test.sh installs it)"),
    );
    for _ in 0..50 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return proxy;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the TLS proxy did not start on port {port}");
}

/// `spec` with the first host entry reached over TLS on `port` with `client`'s
/// certificate (`client` or `rogue`).
pub fn over_tls(spec: &str, certs: &Path, port: u16, client: &str) -> String {
    spec.replacen(
        "docker: unix:///var/run/docker.sock",
        &format!(
            "docker: tcp://127.0.0.1:{port}\n    tls: {{ ca: {0}/ca.pem, cert: {0}/{client}.pem, key: {0}/{client}-key.pem }}",
            certs.display()
        ),
        1,
    )
}
