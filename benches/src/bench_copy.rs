//! A tenant's data directory copied by handles (`mai_fleet::tree`, issue 19) against
//! the path-based copy the previous release made (`read_dir` + `symlink_metadata` +
//! `std::fs::copy`, kept here as the peer), on the same tree: 10,000 upload files,
//! 1 GB in all (`MAI_BENCH_COPY_FILES`, `MAI_BENCH_COPY_MB`). Each copy runs 5 times,
//! taking turns to go first, into a fresh directory after a `sync`; the medians and
//! their ratio are printed.
//!
//!     cargo run --release --bin bench-copy

use std::path::Path;
use std::time::{Duration, Instant};

use mai_fleet_core::tree::{Budget, Copy, Dir};

fn fail(msg: &str) -> ! {
    eprintln!("bench-copy: {msg}");
    std::process::exit(1)
}

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The previous release's copy: paths joined and reused, `std::fs::copy`.
fn path_copy(from: &Path, to: &Path) -> std::io::Result<(u64, u64)> {
    let (mut files, mut bytes) = (0, 0);
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let meta = std::fs::symlink_metadata(entry.path())?;
        let dest = to.join(entry.file_name());
        if meta.is_dir() {
            std::fs::create_dir_all(&dest)?;
            let (f, b) = path_copy(&entry.path(), &dest)?;
            files += f;
            bytes += b;
        } else if meta.is_file() {
            bytes += std::fs::copy(entry.path(), &dest)?;
            files += 1;
        }
    }
    Ok((files, bytes))
}

const ROUNDS: usize = 5;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let files = env_num("MAI_BENCH_COPY_FILES", 10_000);
    let mb = env_num("MAI_BENCH_COPY_MB", 1_000);
    let root = std::env::temp_dir().join(format!("mai-bench-copy-{}", std::process::id()));
    let src = root.join("src");
    let per_file = (mb << 20) / files.max(1);
    // 100 chats of uploads, as an app lays them out.
    let chunk = vec![0x5au8; per_file as usize];
    for i in 0..files {
        let dir = src.join(format!("uploads/chat-{}", i % 100));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| fail(&e.to_string()));
        std::fs::write(dir.join(format!("file-{i}.bin")), &chunk)
            .unwrap_or_else(|e| fail(&e.to_string()));
    }
    let from = Dir::open(&src).unwrap_or_else(|e| fail(&e.to_string()));
    let (mut by_path, mut by_handle) = (Vec::new(), Vec::new());
    // Each copy starts with nothing dirty to write back (`sync`), and the two take
    // turns going first: neither pays for the other's writes.
    let settle = || {
        let _ = std::process::Command::new("sync").status();
    };
    let by_paths = |round: usize| {
        let dst = root.join(format!("path-{round}"));
        std::fs::create_dir_all(&dst).unwrap_or_else(|e| fail(&e.to_string()));
        settle();
        let t = Instant::now();
        let (n, bytes) = path_copy(&src, &dst).unwrap_or_else(|e| fail(&e.to_string()));
        let took = t.elapsed();
        assert_eq!((n, bytes), (files, per_file * files));
        let _ = std::fs::remove_dir_all(&dst);
        took
    };
    let by_handles = |round: usize| {
        let dst = root.join(format!("handle-{round}"));
        settle();
        let t = Instant::now();
        let to = Dir::create_private(&dst).unwrap_or_else(|e| fail(&e.to_string()));
        let copied = Copy {
            leave_out: &[],
            budget: Budget::UNLIMITED,
            owner: None,
        }
        .run(&from, &to)
        .unwrap_or_else(|e| fail(&e.to_string()));
        let took = t.elapsed();
        assert_eq!((copied.files, copied.bytes), (files, per_file * files));
        let _ = std::fs::remove_dir_all(&dst);
        took
    };
    for round in 0..ROUNDS {
        if round % 2 == 0 {
            by_path.push(by_paths(round));
            by_handle.push(by_handles(round));
        } else {
            by_handle.push(by_handles(round));
            by_path.push(by_paths(round));
        }
    }
    let _ = std::fs::remove_dir_all(&root);
    let (p, h) = (median(by_path), median(by_handle));
    println!("tree: {files} files, {} MB", (per_file * files) >> 20);
    println!(
        "path-based copy (previous release): {:.3} s (median of 5)",
        p.as_secs_f64()
    );
    println!(
        "copy by handles (tree::Copy):       {:.3} s (median of 5)",
        h.as_secs_f64()
    );
    println!("ratio: {:.2}x", h.as_secs_f64() / p.as_secs_f64());
}
