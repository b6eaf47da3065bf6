//! The `sharedstate` command: inspect and change shared state from outside
//! the application (get, set, patch, edit, watch, listeners, status, init).

mod args;
mod commands;
mod endpoint;
mod errors;
mod interrupt;
mod output;

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use args::{Cli, ColorWhen, Command};
use errors::Exit;

fn main() -> ExitCode {
    let cli = Cli::from_env();
    match cli.color {
        ColorWhen::Auto => {}
        ColorWhen::Always => anstream::ColorChoice::Always.write_global(),
        ColorWhen::Never => anstream::ColorChoice::Never.write_global(),
    }
    // Library logs only on request (RUST_LOG=debug), so errors stay one
    // line; coloured only where stderr would be (a terminal, no NO_COLOR).
    if std::env::var_os("RUST_LOG").is_some() {
        let ansi = anstream::AutoStream::choice(&std::io::stderr()) != anstream::ColorChoice::Never;
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .with_ansi(ansi)
            .init();
    }
    let mut stdout = anstream::stdout();
    let result = match &cli.command {
        // These two need no backend and no runtime.
        Command::Completions(args) => commands::completions(args.shell, &mut stdout),
        Command::Man => commands::man(&mut stdout),
        _ => run_with_runtime(cli, &mut stdout),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            if !error.message.is_empty() {
                let _ = stdout.flush();
                eprintln!("sharedstate: {error}");
            }
            if error.exit == Exit::Quiet {
                ExitCode::SUCCESS
            } else {
                error.exit.code()
            }
        }
    }
}

fn run_with_runtime(cli: Cli, stdout: &mut (dyn Write + Send)) -> errors::CliResult {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|error| {
            errors::CliError::failure(format!("cannot start the async runtime: {error}"))
        })?;
    let result = runtime.block_on(commands::run(cli, stdout));
    // Background tasks of the backend client must not hold the exit up.
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}
