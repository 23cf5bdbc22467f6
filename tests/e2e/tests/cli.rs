//! The `controller` command line as a shell user meets it (issue 10).

use std::process::{Command, Stdio};

use mai_fleet_e2e::controller_bin;

/// `controller … | head`: the reader goes away before the output is written. Before
/// issue 10 `println!` panicked on the closed pipe and the command exited 101 with a
/// panic message; now it exits 0 and says nothing.
#[test]
fn a_closed_pipe_ends_a_command_quietly_with_exit_0() {
    let spec = mai_fleet_e2e::workspace_root().join("manifests/examples/tenants.yaml");
    let key = format!("sk-or-v1-{}", "ab".repeat(32));
    for args in [
        vec![
            "validate",
            spec.to_str().unwrap_or_default(),
            "--output",
            "json",
        ],
        vec!["completions", "bash"],
        vec!["man"],
    ] {
        let mut child = Command::new(controller_bin())
            .args(&args)
            .env("NOWAK_OPENROUTER_KEY", &key)
            .env("KOWALSKI_OPENROUTER_KEY", key.replace("ab", "cd"))
            .env("ZDROWIE_OPENROUTER_KEY", key.replace("ab", "ef"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("controller");
        // The read end closes before the command has written anything.
        drop(child.stdout.take());
        let out = child.wait_with_output().expect("controller");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
        assert!(stderr.is_empty(), "{args:?} said: {stderr}");
    }
}

/// Completions and the manual are made from the parser itself: every command is in
/// them, and `--output` offers only what a command can print.
#[test]
fn completions_and_the_manual_know_every_command() {
    let run = |args: &[&str]| {
        let out = Command::new(controller_bin())
            .args(args)
            .output()
            .expect("controller");
        assert!(out.status.success(), "{args:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let bash = run(&["completions", "bash"]);
    let man = run(&["man"]);
    for command in [
        "validate", "plan", "apply", "billing", "alerts", "serve", "status",
    ] {
        assert!(bash.contains(command), "bash completion lacks {command}");
        assert!(man.contains(command), "the manual lacks {command}");
    }
    let refused = Command::new(controller_bin())
        .args(["status", "--output", "csv"])
        .output()
        .expect("controller");
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("possible values: text, json"));
}
