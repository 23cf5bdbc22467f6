//! Timing whole commands, shared by the benchmarks that run the binaries.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

pub fn fail(msg: &str) -> ! {
    let program = std::env::args().next().unwrap_or_default();
    let name = std::path::Path::new(&program)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    eprintln!("{name}: {msg}");
    std::process::exit(1)
}

/// Runs a command to completion and times it; a command still running after
/// `TIMEOUT` is killed and the benchmark fails (docker-compose v1 has been seen to hang).
pub fn timed(label: &str, cmd: &mut Command) -> Duration {
    const TIMEOUT: Duration = Duration::from_secs(300);
    let started = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| fail(&format!("{label}: {e}")));
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return started.elapsed(),
            Ok(Some(status)) => fail(&format!("{label} failed: {status}")),
            Ok(None) if started.elapsed() > TIMEOUT => {
                let _ = child.kill();
                fail(&format!(
                    "{label} did not finish within {}s",
                    TIMEOUT.as_secs()
                ))
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(1)),
            Err(e) => fail(&format!("{label}: {e}")),
        }
    }
}
