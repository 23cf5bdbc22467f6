//! Installing mai-fleet itself (issue 11, item 6): the control plane's compose file
//! comes up on the local engine from the images `manifests/build-images.sh` builds
//! (no registry), with the fleet database refusing plain text, and the controller
//! inside answers `/healthz`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use mai_fleet_e2e::{require_services, try_psql, workspace_root, Fleet};

/// `docker-compose -p PROJECT` in DIR, brought down (volumes too) when dropped.
struct Compose {
    dir: PathBuf,
    project: String,
}

impl Compose {
    fn run(&self, args: &[&str]) -> Output {
        Command::new("docker-compose")
            .arg("-p")
            .arg(&self.project)
            .args(args)
            .current_dir(&self.dir)
            .output()
            .expect("docker-compose (scripts/test.sh installs it)")
    }
}

impl Drop for Compose {
    fn drop(&mut self) {
        let _ = self.run(&["down", "-v", "--timeout", "5"]);
    }
}

fn secrets(dir: &Path) -> String {
    let s = dir.join("secrets");
    mai_fleet_e2e::tls::make_certs_for(&s, &["DNS:postgres"]);
    std::fs::rename(s.join("ca.pem"), s.join("db_ca.pem")).unwrap();
    std::fs::rename(s.join("server.pem"), s.join("db_cert.pem")).unwrap();
    std::fs::rename(s.join("server-key.pem"), s.join("db_key.pem")).unwrap();
    let password = "pw-".to_string() + &format!("{:x}", std::process::id() as u64 * 7919);
    std::fs::write(s.join("db_password"), &password).unwrap();
    // As docs/install.md says: the key is the database user's (999 in the image),
    // readable by it alone.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(s.join("db_key.pem"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let chown = Command::new("chown")
        .args(["999:999"])
        .arg(s.join("db_key.pem"))
        .status()
        .unwrap();
    assert!(chown.success());
    password
}

#[test]
fn the_control_plane_comes_up_from_compose_and_answers_healthz() {
    if !require_services() {
        return;
    }
    let f = Fleet::new("compose");
    let dir = f.dir.join("control-plane");
    std::fs::create_dir_all(&dir).unwrap();
    for file in ["compose.yaml", "pg_hba.conf"] {
        std::fs::copy(
            workspace_root().join("manifests/compose").join(file),
            dir.join(file),
        )
        .unwrap();
    }
    let password = secrets(&dir);
    let (db_port, web_port) = (f.base_port + 10, f.base_port + 11);
    std::fs::write(
        dir.join(".env"),
        format!(
            "MAI_FLEET_DB_PASSWORD={password}\nMAI_FLEET_VERSION={}\nMAI_FLEET_POSTGRES_IMAGE=mai-fleet/postgres:15\n\
             MAI_FLEET_DB_PUBLISH=127.0.0.1:{db_port}\nMAI_FLEET_DASHBOARD_PUBLISH=127.0.0.1:{web_port}\n",
            env!("CARGO_PKG_VERSION")
        ),
    )
    .unwrap();
    let compose = Compose {
        dir: dir.clone(),
        project: f.name.replace('-', ""),
    };
    let up = compose.run(&["up", "-d"]);
    assert!(
        up.status.success(),
        "compose up: {}",
        String::from_utf8_lossy(&up.stderr)
    );
    let started = Instant::now();
    loop {
        let check = compose.run(&["exec", "-T", "controller", "/controller", "healthcheck"]);
        if check.status.success() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "the controller never answered /healthz: {}\n{}",
            String::from_utf8_lossy(&check.stderr),
            String::from_utf8_lossy(&compose.run(&["logs", "--tail", "20"]).stdout)
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    let ps = String::from_utf8_lossy(&compose.run(&["ps"]).stdout).into_owned();
    assert!(ps.contains("Up (healthy)"), "{ps}");
    let body = mai_fleet_e2e::http(web_port, "GET", "/healthz", None, &[]).expect("/healthz");
    assert!(body.contains("\"database\":\"ok\""), "{body}");
    // The database is migrated, reachable over TLS only, with its CA verified.
    let base = format!("postgres://mai_fleet:{password}@127.0.0.1:{db_port}/mai_fleet");
    let plain = try_psql(&format!("{base}?sslmode=disable"), "SELECT 1");
    assert!(plain.is_err(), "plain text accepted: {plain:?}");
    let tls = try_psql(
        &format!(
            "{base}?sslmode=verify-ca&sslrootcert={}",
            dir.join("secrets/db_ca.pem").display()
        ),
        "SELECT count(*) > 0 FROM _sqlx_migrations",
    );
    assert_eq!(tls.as_deref(), Ok("t"), "{tls:?}");
}
