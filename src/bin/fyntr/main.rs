//! The `fyntr` command: gathers the settings (flags, variables, the config file), sets up
//! logging, hands the settings to [`fyntr::run`] (descriptors, feeds, backend, listeners), and
//! runs the server until SIGINT/SIGTERM, reloading on SIGHUP.

mod cli;
mod settings;
mod signals;
mod stats_line;

use std::{ffi::OsString, process::ExitCode, time::Duration};

use anyhow::{Context, Result};
use tracing::{error, info, warn};

use crate::{
    cli::{Cli, Tool},
    settings::{LoadError, Loaded},
};

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    let loaded = match settings::load(&args) {
        Ok(loaded) => loaded,
        Err(LoadError::Usage(error)) => error.exit(),
        Err(LoadError::File(message)) => {
            eprintln!("fyntr: {message}");
            return ExitCode::from(2);
        }
    };
    if let Some(tool) = loaded.cli.tool {
        return print_tool(tool);
    }
    init_logging();
    if loaded.cli.check_config {
        return check_config(&loaded);
    }
    match run(loaded, args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            error!("{error:#}");
            eprintln!("fyntr: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// `--check-config`: validates everything a start would (feeds, addresses, the backend)
/// without listening, and prints the effective settings.
fn check_config(loaded: &Loaded) -> ExitCode {
    match loaded.cli.builder().check() {
        Ok(()) => {
            print!("{}", loaded.describe());
            println!("# the settings are valid");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("fyntr: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Writes a completion script or the man page to stdout, both generated from the same
/// command-line definition as the parser, so they never drift from the flags.
fn print_tool(tool: Tool) -> ExitCode {
    use clap::CommandFactory;
    let mut command = Cli::command();
    let mut out = std::io::stdout().lock();
    let written = match tool {
        Tool::Completions { shell } => {
            clap_complete::generate(shell, &mut command, "fyntr", &mut out);
            Ok(())
        }
        Tool::Man => clap_mangen::Man::new(command).render(&mut out),
    };
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("fyntr: writing to stdout: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Logs to standard error at the level `RUST_LOG` names (`info` by default). `RUST_LOG` takes
/// `level` or `target=level` pairs (`fyntr::tunnel=debug,info`); the filter needs no regex
/// engine, which keeps the binary and its resident memory small.
fn init_logging() {
    use tracing_subscriber::{filter::Targets, layer::SubscriberExt, util::SubscriberInitExt};
    let spec = std::env::var("RUST_LOG").unwrap_or_default();
    let filter = spec
        .parse::<Targets>()
        .ok()
        .filter(|_| !spec.trim().is_empty())
        .unwrap_or_else(|| Targets::new().with_default(tracing::Level::INFO));
    let format = tracing_subscriber::fmt::layer()
        .with_writer(stats_line::LogWriter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    tracing_subscriber::registry()
        .with(format)
        .with(filter)
        .init();
}

fn run(loaded: Loaded, args: Vec<OsString>) -> Result<()> {
    let cli = &loaded.cli;
    let started = cli.builder().start()?;
    // Signals are watched before the start line: a SIGINT sent as soon as the proxy says it
    // listens must drain it, not kill it with the default action.
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let grace = Duration::from_secs(cli.shutdown_grace);
    let reloader = started.reloader();
    let reload = move || match settings::load(&args) {
        Ok(loaded) => {
            if let Err(error) = reloader.reload(loaded.cli.builder()) {
                error!("reload refused, the settings in force stay: {error:#}");
            }
        }
        Err(error) => {
            reloader.count_refused();
            error!("reload refused, the settings in force stay: {error}");
        }
    };
    let watching = signals::watch(stop, grace, reload).context("starting the signal thread")?;
    if watching.recv_timeout(Duration::from_secs(5)).is_err() {
        warn!("the signal thread did not start watching within 5 s");
    }
    started.announce();
    if let Err(error) =
        stats_line::start(started.observer(), Duration::from_secs(cli.stats_interval))
    {
        warn!(%error, "could not start the stats thread; no stats line");
    }
    started.run(shutdown).context("running the workers")?;
    info!("shutdown complete");
    Ok(())
}
