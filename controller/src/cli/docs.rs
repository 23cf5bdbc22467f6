//! `controller completions SHELL` and `controller man`: generated from the same clap
//! definitions the command line parses with, so they cannot drift from it.

use std::process::ExitCode;

use clap::CommandFactory;

use super::Cli;

#[derive(clap::Args)]
pub struct CompletionsArgs {
    pub shell: clap_complete::Shell,
}

pub fn completions(args: CompletionsArgs) -> anyhow::Result<ExitCode> {
    let mut cmd = Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, "controller", &mut out);
    write_stdout(&out)?;
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args)]
pub struct ManArgs {
    /// Write controller.1 and one controller-COMMAND.1 per command into DIR instead
    #[arg(long)]
    pub dir: Option<std::path::PathBuf>,
}

pub fn man(args: ManArgs) -> anyhow::Result<ExitCode> {
    let cmd = Cli::command();
    let Some(dir) = args.dir else {
        let mut out = Vec::new();
        clap_mangen::Man::new(cmd).render(&mut out)?;
        write_stdout(&out)?;
        return Ok(ExitCode::SUCCESS);
    };
    std::fs::create_dir_all(&dir)?;
    let mut pages = vec![("controller".to_string(), cmd.clone())];
    // Each command's page is titled `controller-COMMAND`, as git's and cargo's are.
    for sub in cmd.get_subcommands() {
        let name = format!("controller-{}", sub.get_name());
        pages.push((name, sub.clone()));
    }
    for (name, page) in pages {
        let mut out = Vec::new();
        clap_mangen::Man::new(page)
            .title(name.to_uppercase())
            .render(&mut out)?;
        std::fs::write(dir.join(format!("{name}.1")), out)?;
    }
    eprintln!("manual pages written to {}", dir.display());
    Ok(ExitCode::SUCCESS)
}

fn write_stdout(bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(bytes)?;
    stdout.flush()
}
