//! `ssh://user@host[:port][/path/to/docker.sock]` engines, as the Docker CLI reaches
//! them: through the system's OpenSSH client, so that keys come from ssh-agent or a
//! file and host keys are checked against known_hosts exactly as `ssh` checks them.
//! One `ssh` process per engine forwards a private local socket to the remote
//! engine's; every API call of the apply goes over that one connection.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};

use crate::spec::{SshOptions, SshTarget};

/// An open forward; closing it (drop) ends the `ssh` process and removes the socket.
pub struct SshTunnel {
    child: Child,
    dir: PathBuf,
    pub socket: PathBuf,
}

impl Drop for SshTunnel {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Why a tunnel could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("the host key of {known_as} is not in {known_hosts}; refused. Check the server's fingerprint (on it: `ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub`), then accept it with: {accept}")]
    UnknownHostKey {
        known_as: String,
        known_hosts: String,
        accept: String,
    },
    #[error("the host key of {known_as} CHANGED since it was recorded in {known_hosts}; refused (a reinstalled server, or someone in between). If the server was reinstalled, check its new fingerprint and replace the key with: {replace}")]
    ChangedHostKey {
        known_as: String,
        known_hosts: String,
        replace: String,
    },
    #[error("ssh {destination}: {message}")]
    Failed {
        destination: String,
        message: String,
    },
    #[error("ssh {destination}: no connection within {0}s", .timeout.as_secs())]
    Timeout {
        destination: String,
        timeout: Duration,
    },
}

/// Opens the forward and waits until the local socket answers, the `ssh` process
/// gives up, or `timeout` passes.
pub async fn open(
    target: &SshTarget,
    options: &SshOptions,
    timeout: Duration,
) -> Result<SshTunnel, SshError> {
    let failed = |message: String| SshError::Failed {
        destination: target.destination(),
        message,
    };
    // The forwarded socket is as good as root on the remote engine: a private
    // directory, short enough for a socket path.
    let nonce = crate::crypto::random_bytes::<6>().map_err(|e| failed(e.to_string()))?;
    let dir = std::env::temp_dir().join(format!(
        "mai-fleet-ssh-{}-{}",
        std::process::id(),
        crate::crypto::hex(&nonce)
    ));
    create_private_dir(&dir).map_err(|e| failed(format!("{}: {e}", dir.display())))?;
    let socket = dir.join("docker.sock");
    let connect_timeout = timeout.as_secs().max(1);
    let mut cmd = Command::new("ssh");
    cmd.args(["-N", "-T"])
        .args(["-o", "BatchMode=yes"])
        .args(["-o", "StrictHostKeyChecking=yes"])
        .args(["-o", "ExitOnForwardFailure=yes"])
        .args(["-o", "StreamLocalBindUnlink=yes"])
        .args(["-o", &format!("ConnectTimeout={connect_timeout}")])
        .args(["-o", "ServerAliveInterval=15"])
        .args(["-o", "ServerAliveCountMax=3"])
        .args(["-o", "ControlMaster=no", "-o", "ControlPath=none"])
        .args(["-p", &target.port.to_string()]);
    if let Some(key) = &options.key {
        cmd.arg("-i").arg(key).args(["-o", "IdentitiesOnly=yes"]);
    }
    if let Some(kh) = &options.known_hosts {
        cmd.arg("-o")
            .arg(format!("UserKnownHostsFile={}", kh.display()));
    }
    cmd.arg("-L")
        .arg(format!("{}:{}", socket.display(), target.socket))
        .arg("--")
        .arg(target.destination())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|e| {
        let _ = std::fs::remove_dir_all(&dir);
        failed(format!("cannot run the OpenSSH client `ssh`: {e}"))
    })?;
    match wait_ready(&mut child, &socket, target, options, timeout).await {
        Ok(()) => Ok(SshTunnel { child, dir, socket }),
        Err(e) => {
            let _ = child.start_kill();
            let _ = std::fs::remove_dir_all(&dir);
            Err(e)
        }
    }
}

async fn wait_ready(
    child: &mut Child,
    socket: &Path,
    target: &SshTarget,
    options: &SshOptions,
    timeout: Duration,
) -> Result<(), SshError> {
    let started = Instant::now();
    loop {
        if let Ok(Some(_status)) = child.try_wait() {
            let mut stderr = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut stderr).await;
            }
            return Err(classify(target, options, &stderr));
        }
        if tokio::net::UnixStream::connect(socket).await.is_ok() {
            return Ok(());
        }
        if started.elapsed() >= timeout {
            return Err(SshError::Timeout {
                destination: target.destination(),
                timeout,
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().mode(0o700).create(dir)
}

/// Turns what `ssh` printed into an error a person can act on.
fn classify(target: &SshTarget, options: &SshOptions, stderr: &str) -> SshError {
    let known_hosts = options
        .known_hosts
        .as_ref()
        .map_or("~/.ssh/known_hosts".to_string(), |p| {
            p.display().to_string()
        });
    let known_as = target.known_as();
    let keyscan = format!(
        "ssh-keyscan -p {} {} >> {known_hosts}",
        target.port, target.host
    );
    if stderr.contains("REMOTE HOST IDENTIFICATION HAS CHANGED") {
        return SshError::ChangedHostKey {
            replace: format!("ssh-keygen -R '{known_as}' -f {known_hosts} && {keyscan}"),
            known_as,
            known_hosts,
        };
    }
    if stderr.contains("Host key verification failed") || stderr.contains("host key is known") {
        return SshError::UnknownHostKey {
            accept: keyscan,
            known_as,
            known_hosts,
        };
    }
    let message = stderr
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty() && !l.starts_with("Warning: Permanently added"))
        .unwrap_or("ssh exited without saying why")
        .to_string();
    SshError::Failed {
        destination: target.destination(),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_key_refusals_say_how_to_accept() {
        let t = SshTarget::parse("ssh://root@10.1.2.3:2222").unwrap();
        let o = SshOptions::default();
        let e = classify(
            &t,
            &o,
            "No ED25519 host key is known for [10.1.2.3]:2222 and you have requested strict checking.\nHost key verification failed.\n",
        );
        let text = e.to_string();
        assert!(matches!(e, SshError::UnknownHostKey { .. }), "{text}");
        assert!(
            text.contains("ssh-keyscan -p 2222 10.1.2.3 >> ~/.ssh/known_hosts"),
            "{text}"
        );
        let e = classify(
            &t,
            &o,
            "@@@@@\n@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\nHost key verification failed.\n",
        );
        assert!(
            e.to_string().contains("ssh-keygen -R '[10.1.2.3]:2222'"),
            "{e}"
        );
        let e = classify(
            &t,
            &o,
            "ssh: connect to host 10.1.2.3 port 2222: Connection refused\n",
        );
        assert!(e.to_string().ends_with("Connection refused"), "{e}");
    }
}
