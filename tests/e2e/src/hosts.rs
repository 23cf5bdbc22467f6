//! More servers on this machine: each a Docker engine of its own in a network
//! namespace of its own (`tests/hosts/engine.sh`), reached as a real server is, over
//! `ssh://` through an OpenSSH server or over `tcp://` with TLS client certificates.
//! Torn down when dropped, also when the test fails.

use std::path::{Path, PathBuf};
use std::process::Command;

/// How the controller reaches an engine.
pub enum Access {
    /// OpenSSH on port 22 of the namespace, root with the key in `key`.
    Ssh { key: PathBuf },
    /// `tcp://ADDRESS:2376`, the server certificate from `certs` (made for ADDRESS).
    Tls { certs: PathBuf },
}

pub struct RemoteEngine {
    pub name: String,
    pub index: u8,
    pub dir: PathBuf,
}

fn script() -> PathBuf {
    crate::workspace_root().join("tests/hosts/engine.sh")
}

fn run(args: &[&str]) -> std::process::Output {
    Command::new("bash")
        .arg(script())
        .args(args)
        .output()
        .expect("run tests/hosts/engine.sh")
}

impl RemoteEngine {
    /// Starts engine `name` at 10.77.`index`.2 (this machine is 10.77.`index`.1 to it).
    pub fn start(name: &str, index: u8, dir: &Path, access: &Access) -> Self {
        let engine = Self {
            name: name.to_string(),
            index,
            dir: dir.to_path_buf(),
        };
        let idx = index.to_string();
        let mut args = vec!["up", name, &idx, dir.to_str().expect("utf-8 path")];
        let extra: String;
        match access {
            Access::Ssh { key } => {
                extra = format!("{}.pub", key.display());
                args.extend(["--ssh", &extra]);
            }
            Access::Tls { certs } => {
                extra = certs.display().to_string();
                args.extend(["--tls", &extra]);
            }
        }
        let out = run(&args);
        assert!(
            out.status.success(),
            "engine {name} did not start: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        engine
    }

    /// The server's address, as the controller reaches it.
    pub fn address(&self) -> String {
        format!("10.77.{}.2", self.index)
    }

    /// This machine's address as the server sees it (the database is there).
    pub fn gateway(&self) -> String {
        format!("10.77.{}.1", self.index)
    }

    /// The engine's socket, to look at it from here.
    pub fn socket(&self) -> String {
        format!("unix://{}/run/docker.sock", self.dir.display())
    }

    /// `docker -H <this engine> args…`, its stdout.
    pub fn docker(&self, args: &[&str]) -> String {
        let out = Command::new("docker")
            .arg("-H")
            .arg(self.socket())
            .args(args)
            .output()
            .expect("docker CLI");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Names of the containers on this engine, running or not, sorted.
    pub fn containers(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .docker(&["ps", "-a", "--format", "{{.Names}}"])
            .lines()
            .map(str::to_string)
            .collect();
        names.sort();
        names
    }

    /// `docker inspect` of one container, as JSON.
    pub fn inspect(&self, name: &str) -> Option<serde_json::Value> {
        let text = self.docker(&["inspect", name]);
        serde_json::from_str::<Vec<serde_json::Value>>(&text)
            .ok()
            .and_then(|mut v| v.pop())
    }

    /// The OpenSSH server stopped (sessions too), as a server that went away.
    pub fn stop_sshd(&self) {
        let out = run(&[
            "sshd-stop",
            &self.name,
            self.dir.to_str().unwrap_or_default(),
        ]);
        assert!(out.status.success(), "sshd-stop");
    }

    pub fn start_sshd(&self) {
        let out = run(&[
            "sshd-start",
            &self.name,
            self.dir.to_str().unwrap_or_default(),
        ]);
        assert!(
            out.status.success(),
            "sshd-start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The server's host key line for a known_hosts file, as an operator records it
    /// once the fingerprint is checked.
    pub fn known_hosts_line(&self) -> String {
        let key =
            std::fs::read_to_string(self.dir.join("ssh_host_ed25519_key.pub")).expect("host key");
        let mut parts = key.split_whitespace();
        format!(
            "{} {} {}\n",
            self.address(),
            parts.next().unwrap_or_default(),
            parts.next().unwrap_or_default()
        )
    }
}

impl Drop for RemoteEngine {
    fn drop(&mut self) {
        let _ = run(&["down", &self.name, self.dir.to_str().unwrap_or_default()]);
    }
}

/// An ed25519 key pair at `path` (and `path.pub`), for ssh.
pub fn ssh_key(path: &Path) {
    let _ = std::fs::remove_file(path);
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path)
        .output()
        .expect("ssh-keygen (openssh-client)");
    assert!(out.status.success(), "ssh-keygen");
}
