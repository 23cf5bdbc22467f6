//! `tcp://` Docker endpoints with TLS client certificates (issue 2). The engine here
//! listens on a unix socket only, so a local TLS proxy (stunnel, requiring a client
//! certificate signed by the test CA) stands in front of it, as `dockerd --tlsverify`
//! would. (socat 1.7 cannot serve here: it sets no session id context, so OpenSSL
//! aborts a client's TLS session resumption.)

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use mai_fleet_e2e::{require_services, Fleet};

const DEV: &str = "mai-fleet/tenant:dev";

struct Proxy(Child);

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
fn make_certs(dir: &Path) {
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
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
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

fn start_proxy(dir: &Path, port: u16) -> Proxy {
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

#[test]
fn tls_endpoint_is_applied_with_client_certificates_and_a_foreign_one_is_refused() {
    if !require_services() {
        return;
    }
    let f = Fleet::new("tls");
    let certs = f.dir.join("tls");
    make_certs(&certs);
    let port = f.base_port + 15;
    let _proxy = start_proxy(&certs, port);
    let (a, b) = (f.id("a"), f.id("b"));
    let base = f.spec(&[(&a, "a", DEV, ""), (&b, "b", DEV, "")]);
    let with_client = |client: &str| {
        base.replacen(
            "docker: unix:///var/run/docker.sock",
            &format!(
                "docker: tcp://127.0.0.1:{port}\n    tls: {{ ca: {0}/ca.pem, cert: {0}/{client}.pem, key: {0}/{client}-key.pem }}",
                certs.display()
            ),
            1,
        )
    };

    // A client certificate from another CA: the engine refuses it, and since one host
    // cannot be planned, nothing is created on the other one either.
    let rogue = f.write_spec(&with_client("rogue"));
    let r = f.apply(&rogue, &[]);
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(
        r.stderr.contains(&format!("{}-a", f.name)) && r.stderr.contains("nothing was changed"),
        "{}",
        r.stderr
    );
    assert!(f.containers().is_empty(), "{:?}", f.containers());

    let spec = f.write_spec(&with_client("client"));
    let r = f.apply(&spec, &[]);
    assert_eq!(r.code, 0, "{}", r.all());
    let info = f
        .inspect(&format!("mai-{a}"))
        .expect("created through the TLS endpoint");
    assert_eq!(
        info["Config"]["Labels"]["mai-fleet.host"],
        format!("{}-a", f.name)
    );
    assert_eq!(
        f.health(f.base_port).expect("tenant a serves")["initialized"],
        true
    );
    let again = f.controller(&["plan", spec.to_str().unwrap()]);
    assert_eq!(
        again.code,
        0,
        "nothing to change over TLS either: {}",
        again.all()
    );
}
