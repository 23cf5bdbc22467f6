//! `ssh://user@host[:port][/path/to/docker.sock]` engines, as the Docker CLI reaches
//! them: through the system's OpenSSH client, so that keys come from ssh-agent or a
//! file and host keys are checked against known_hosts exactly as `ssh` checks them.
//! A private local socket is forwarded to the remote engine's; every API call of the
//! apply goes over that one connection.
//!
//! The connection outlives the command by `MAI_FLEET_SSH_PERSIST` (default 60s;
//! `0` for none), as OpenSSH's ControlPersist keeps it: a master process per server,
//! its control socket in a private directory (`MAI_FLEET_SSH_CONTROL_DIR`, default
//! `~/.cache/mai-fleet/ssh`), so that an apply right after another (a plan, then an
//! apply) does not pay the SSH handshake again. Each command adds its own forward to
//! the master and cancels it when done.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};

use crate::spec::{SshOptions, SshTarget};

/// An open forward; closing it (drop) ends it and removes the socket.
pub struct SshTunnel {
    via: Via,
    dir: PathBuf,
    pub socket: PathBuf,
}

enum Via {
    /// An `ssh` process of this command's own.
    Own(Child),
    /// A forward added to a persistent master: cancelled on drop with `cancel`.
    Master { cancel: Vec<OsString> },
}

impl Drop for SshTunnel {
    fn drop(&mut self) {
        match &mut self.via {
            Via::Own(child) => {
                let _ = child.start_kill();
            }
            Via::Master { cancel } => {
                // Not waited for: it completes on its own, also once this command
                // has exited.
                let _ = std::process::Command::new("ssh")
                    .args(cancel.iter())
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn();
            }
        }
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

/// How long a master connection outlives the command (`None`: no master).
fn persist() -> Option<Duration> {
    let d = match crate::env::raw("MAI_FLEET_SSH_PERSIST") {
        Some(v) => mai_fleet_core::duration::parse(&v).ok()?,
        None => Duration::from_secs(60),
    };
    (!d.is_zero()).then_some(d)
}

/// The control sockets' directory, made owner-only (a control socket is the
/// connection to the server).
fn control_dir() -> Option<PathBuf> {
    let dir = match crate::env::os("MAI_FLEET_SSH_CONTROL_DIR") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(crate::env::os("HOME")?).join(".cache/mai-fleet/ssh"),
    };
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .ok()?;
    let meta = std::fs::metadata(&dir).ok()?;
    (meta.permissions().mode() & 0o077 == 0).then_some(dir)
}

/// What every `ssh` call for `target` says: batch mode, strict host keys, the key,
/// known_hosts, timeouts, the port.
fn common_args(target: &SshTarget, options: &SshOptions, timeout: Duration) -> Vec<OsString> {
    let mut args: Vec<OsString> = Vec::new();
    let mut opt = |o: String| {
        args.push("-o".into());
        args.push(o.into());
    };
    opt("BatchMode=yes".into());
    opt("StrictHostKeyChecking=yes".into());
    opt(format!("ConnectTimeout={}", timeout.as_secs().max(1)));
    opt("ServerAliveInterval=15".into());
    opt("ServerAliveCountMax=3".into());
    opt("StreamLocalBindUnlink=yes".into());
    if let Some(kh) = &options.known_hosts {
        opt(format!("UserKnownHostsFile={}", kh.display()));
    }
    if let Some(key) = &options.key {
        opt("IdentitiesOnly=yes".into());
        args.push("-i".into());
        args.push(key.into());
    }
    args.push("-p".into());
    args.push(target.port.to_string().into());
    args
}

/// Opens the forward and waits until the local socket answers, `ssh` gives up, or
/// `timeout` passes.
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
    let forward = format!("{}:{}", socket.display(), target.socket);
    let result = match (persist(), control_dir()) {
        (Some(persist), Some(control)) => {
            open_via_master(target, options, timeout, &dir, &forward, persist, &control).await
        }
        _ => open_own(target, options, timeout, &forward).await,
    };
    let via = match result {
        Ok(via) => via,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
    };
    let mut tunnel = SshTunnel { via, dir, socket };
    let ready = match &mut tunnel.via {
        Via::Own(child) => wait_ready(Some(child), &tunnel.socket, target, options, timeout).await,
        Via::Master { .. } => wait_ready(None, &tunnel.socket, target, options, timeout).await,
    };
    ready.map(|()| tunnel)
}

/// One `ssh -N -L` of this command's own.
async fn open_own(
    target: &SshTarget,
    options: &SshOptions,
    timeout: Duration,
    forward: &str,
) -> Result<Via, SshError> {
    let mut cmd = Command::new("ssh");
    cmd.args(["-N", "-T"])
        .args(common_args(target, options, timeout))
        .args(["-o", "ExitOnForwardFailure=yes"])
        .args(["-o", "ControlMaster=no", "-o", "ControlPath=none"])
        .arg("-L")
        .arg(forward)
        .arg("--")
        .arg(target.destination())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd.spawn().map_err(|e| SshError::Failed {
        destination: target.destination(),
        message: format!("cannot run the OpenSSH client `ssh`: {e}"),
    })?;
    Ok(Via::Own(child))
}

/// The server's master connection (started when there is none), then this
/// command's forward added to it.
async fn open_via_master(
    target: &SshTarget,
    options: &SshOptions,
    timeout: Duration,
    dir: &Path,
    forward: &str,
    persist: Duration,
    control: &Path,
) -> Result<Via, SshError> {
    let mut args = common_args(target, options, timeout);
    args.push("-o".into());
    args.push(format!("ControlPath={}/%C", control.display()).into());
    let run = |extra: Vec<OsString>, stderr: Stdio| {
        let mut cmd = Command::new("ssh");
        cmd.args(&args)
            .args(extra)
            .arg("--")
            .arg(target.destination())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .kill_on_drop(true);
        cmd
    };
    let failed = |message: String| SshError::Failed {
        destination: target.destination(),
        message,
    };
    let add_forward = || async {
        run(
            vec!["-O".into(), "forward".into(), "-L".into(), forward.into()],
            Stdio::piped(),
        )
        .output()
        .await
        .map_err(|e| failed(e.to_string()))
    };
    // The common case first: a master runs, and adding the forward is all it takes.
    let out = add_forward().await?;
    if !out.status.success() {
        // Two hosts of one spec on one server start one master, not two.
        static STARTING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
        let _starting = STARTING.lock().await;
        let alive = run(vec!["-O".into(), "check".into()], Stdio::null())
            .status()
            .await
            .is_ok_and(|s| s.success());
        if !alive {
            // `-f` leaves the master running in the background once authenticated:
            // its stderr goes to a file, not to a pipe that would stay open with it.
            let log = dir.join("master.log");
            let file = std::fs::File::create(&log).map_err(|e| failed(e.to_string()))?;
            let mut cmd = run(
                vec![
                    "-M".into(),
                    "-N".into(),
                    "-f".into(),
                    "-o".into(),
                    format!("ControlPersist={}", persist.as_secs().max(1)).into(),
                ],
                Stdio::from(file),
            );
            let status = tokio::time::timeout(timeout, cmd.status())
                .await
                .map_err(|_| SshError::Timeout {
                    destination: target.destination(),
                    timeout,
                })?
                .map_err(|e| failed(format!("cannot run the OpenSSH client `ssh`: {e}")))?;
            if !status.success() {
                let said = std::fs::read_to_string(&log).unwrap_or_default();
                return Err(classify(target, options, &said));
            }
        }
        let out = add_forward().await?;
        if !out.status.success() {
            return Err(classify(
                target,
                options,
                &String::from_utf8_lossy(&out.stderr),
            ));
        }
    }
    Ok(Via::Master {
        cancel: cancel_args(&args, forward, &target.destination()),
    })
}

/// `ssh … -O cancel -L FORWARD -- DESTINATION`: without the destination ssh prints
/// its usage and the forward stays in the master, one more each command.
fn cancel_args(args: &[OsString], forward: &str, destination: &str) -> Vec<OsString> {
    let mut cancel = args.to_vec();
    cancel.extend(["-O", "cancel", "-L", forward, "--", destination].map(OsString::from));
    cancel
}

async fn wait_ready(
    mut child: Option<&mut Child>,
    socket: &Path,
    target: &SshTarget,
    options: &SshOptions,
    timeout: Duration,
) -> Result<(), SshError> {
    let started = Instant::now();
    loop {
        if let Some(child) = child.as_deref_mut() {
            if let Ok(Some(_status)) = child.try_wait() {
                let mut stderr = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = e.read_to_string(&mut stderr).await;
                }
                return Err(classify(target, options, &stderr));
            }
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
        .map_or("ssh exited without saying why".to_string(), |l| {
            // The server's words can end up here: printable and short.
            crate::bounded(l, 400)
        });
    SshError::Failed {
        destination: target.destination(),
        message,
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_forward_is_cancelled_on_its_own_destination() {
        let args: Vec<OsString> = ["-o", "ControlPath=/x/%C"].map(OsString::from).to_vec();
        let cancel = cancel_args(&args, "/tmp/f.sock:/var/run/docker.sock", "deploy@10.0.0.2");
        let text: Vec<&str> = cancel.iter().filter_map(|a| a.to_str()).collect();
        assert_eq!(
            text[2..],
            [
                "-O",
                "cancel",
                "-L",
                "/tmp/f.sock:/var/run/docker.sock",
                "--",
                "deploy@10.0.0.2"
            ]
        );
    }

    use super::*;

    #[test]
    fn what_a_server_prints_is_bounded_and_without_control_characters() {
        // The last line of ssh's stderr can be the server's (a banner, a forced
        // command's output): it reaches the table, the database and a terminal.
        let t = SshTarget::parse("ssh://root@10.1.2.3").unwrap();
        let stderr = format!("\u{1b}]0;owned\u{7}\u{1b}[2J{}\n", "y".repeat(100_000));
        let e = classify(&t, &SshOptions::default(), &stderr).to_string();
        assert!(e.chars().count() < 600, "{} characters", e.chars().count());
        assert!(
            !e.chars().any(|c| c.is_control()),
            "control characters kept"
        );
    }

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
