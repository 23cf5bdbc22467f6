//! A PostgreSQL server of the test's own that accepts TLS connections only, as a
//! fleet database reached across a network is set up: a CA and a server certificate
//! for 127.0.0.1 (`tls::make_certs`), `ssl = on`, and `pg_hba.conf` rejecting every
//! connection without encryption. Stopped and removed when dropped.

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct TlsPostgres {
    pub port: u16,
    pub dir: PathBuf,
    bindir: PathBuf,
}

fn as_postgres(cmd: &Path) -> Command {
    // PostgreSQL refuses to run as root.
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0"));
    if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(cmd);
        c
    } else {
        Command::new(cmd)
    }
}

fn chown_postgres(path: &Path) {
    let _ = Command::new("chown")
        .args(["-R", "postgres:"])
        .arg(path)
        .output();
}

impl TlsPostgres {
    /// A fresh cluster in `dir` on 127.0.0.1:`port`; `dir/certs` holds `ca.pem`
    /// (the server's CA) and `rogue-ca.pem` (another one).
    pub fn start(dir: &Path, port: u16) -> Self {
        Self::start_on(dir, port, &[])
    }

    /// [`TlsPostgres::start`] also listening on `addresses` (this machine's side of
    /// test servers' networks), its certificate valid for them, and password logins
    /// over TLS accepted from 10.77.0.0/16.
    pub fn start_on(dir: &Path, port: u16, addresses: &[&str]) -> Self {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).expect("pg dir");
        let certs = dir.join("certs");
        crate::tls::make_certs_for(&certs, addresses);
        let bindir = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL is installed (scripts/postgres.sh installs it)")
            .filter_map(|e| e.ok())
            .map(|e| e.path().join("bin"))
            .max()
            .expect("a PostgreSQL version");
        let data = dir.join("data");
        std::fs::create_dir_all(&data).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).unwrap();
        chown_postgres(dir);
        let out = as_postgres(&bindir.join("initdb"))
            .args(["-D"])
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8"])
            .output()
            .expect("initdb");
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for f in ["server.pem", "server-key.pem"] {
            std::fs::copy(certs.join(f), data.join(f)).unwrap();
            std::fs::set_permissions(data.join(f), std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        // Encryption or nothing; the superuser (the test's setup) is trusted over TLS.
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all postgres trust\nhostssl all postgres 127.0.0.1/32 trust\n\
             hostssl all all 127.0.0.1/32 scram-sha-256\nhostnossl all all 127.0.0.1/32 reject\n\
             hostssl all all 10.77.0.0/16 scram-sha-256\nhostnossl all all 10.77.0.0/16 reject\n",
        )
        .unwrap();
        chown_postgres(dir);
        let listen = std::iter::once("127.0.0.1")
            .chain(addresses.iter().copied())
            .collect::<Vec<_>>()
            .join(",");
        let opts = format!(
            "-p {port} -k {} -c listen_addresses={listen} -c ssl=on -c ssl_cert_file=server.pem \
             -c ssl_key_file=server-key.pem -c fsync=off",
            data.display()
        );
        let out = as_postgres(&bindir.join("pg_ctl"))
            .args(["-D"])
            .arg(&data)
            .args(["-w", "-l"])
            .arg(dir.join("server.log"))
            .args(["-o", &opts, "start"])
            .output()
            .expect("pg_ctl");
        assert!(
            out.status.success(),
            "pg_ctl start: {}{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(dir.join("server.log")).unwrap_or_default()
        );
        Self {
            port,
            dir: dir.to_path_buf(),
            bindir,
        }
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.join("certs/ca.pem")
    }

    pub fn rogue_ca(&self) -> PathBuf {
        self.dir.join("certs/rogue-ca.pem")
    }

    /// The superuser, over TLS (psql's libpq).
    pub fn admin_url(&self) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/postgres?sslmode=require",
            self.port
        )
    }
}

impl Drop for TlsPostgres {
    fn drop(&mut self) {
        let _ = as_postgres(&self.bindir.join("pg_ctl"))
            .args(["-D"])
            .arg(self.dir.join("data"))
            .args(["-m", "immediate", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
