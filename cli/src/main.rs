//! The `sharedstate` command: inspect and change shared state from outside
//! the application (get, set, patch, edit, watch, listeners, status, init).

mod args;
mod commands;
mod errors;
mod output;

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use args::{Cli, ColorWhen};
use errors::Exit;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.color {
        ColorWhen::Auto => {}
        ColorWhen::Always => anstream::ColorChoice::Always.write_global(),
        ColorWhen::Never => anstream::ColorChoice::Never.write_global(),
    }
    // Library logs only on request (RUST_LOG=debug), so errors stay one line.
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("sharedstate: cannot start the async runtime: {error}");
            return Exit::Failure.code();
        }
    };
    let mut stdout = anstream::stdout();
    let result = runtime.block_on(commands::run(cli, &mut stdout));
    // Background tasks of the backend client must not hold the exit up.
    runtime.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) if error.exit == Exit::Quiet => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("sharedstate: {error}");
            error.exit.code()
        }
    }
}
