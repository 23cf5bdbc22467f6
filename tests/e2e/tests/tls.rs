//! `tcp://` Docker endpoints with TLS client certificates (issue 2). The engine here
//! listens on a unix socket only, so a local TLS proxy (stunnel, requiring a client
//! certificate signed by the test CA) stands in front of it, as `dockerd --tlsverify`
//! would. (socat 1.7 cannot serve here: it sets no session id context, so OpenSSL
//! aborts a client's TLS session resumption.)

use mai_fleet_e2e::tls::{make_certs, start_proxy};
use mai_fleet_e2e::{require_services, Fleet};

const DEV: &str = "mai-fleet/tenant:dev";

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
    let with_client = |client: &str| mai_fleet_e2e::tls::over_tls(&base, &certs, port, client);

    // A client certificate from another CA: the engine refuses it. That host cannot
    // be observed (unreachable, with the TLS alert as the cause); the other host is
    // applied; exit 3.
    let rogue = f.write_spec(&with_client("rogue"));
    let r = f.apply(&rogue, &[]);
    assert_eq!(r.code, 3, "{}", r.all());
    let line = r
        .stdout
        .lines()
        .find(|l| l.contains(a.as_str()))
        .unwrap_or_default();
    assert!(
        line.contains("unreachable") && line.contains("UnknownCA"),
        "{}",
        r.all()
    );
    assert!(
        f.inspect(&format!("mai-{a}")).is_none(),
        "nothing on the refused host"
    );
    assert!(
        f.inspect(&format!("mai-{b}")).is_some(),
        "the other host applied"
    );

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
