//! The `healthprobe` binary: parses the command line and calls the command. The service
//! itself is wired in [`app`]; the operator commands are in [`cli`], one file each.

mod app;
mod cli;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use healthprobe::config::Command;
use healthprobe::telemetry;
use healthprobe::{ErrorChain, install_crypto_provider};

/// The binary's command line: the worker's commands ([`Command`]) and, with the `sim`
/// feature, the simulator's `fleet`, so the worker's configuration never imports it.
#[derive(Debug, Parser)]
#[command(
    name = "healthprobe",
    version,
    about = "Active health worker for game engines"
)]
struct Cli {
    #[command(subcommand)]
    command: BinaryCommand,
}

// Parsed once at start and consumed at once: the size of a variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum BinaryCommand {
    #[command(flatten)]
    Worker(Command),
    /// Run a simulated fleet of engines on one HTTP server until Ctrl-C, optionally
    /// registered as running records.
    #[cfg(feature = "sim")]
    Fleet(Box<healthprobe::sim::FleetArgs>),
}

fn main() -> ExitCode {
    install_crypto_provider();
    // Parsing validates every value: a bad one exits here (code 2) naming the variable.
    let cli = Cli::parse();
    if let BinaryCommand::Worker(Command::Run(args)) = &cli.command
        && let Err(why) = args.validate()
    {
        eprintln!("error: {why}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("healthprobe: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let telemetry = telemetry::init()?;
        let (result, telemetry) = match cli.command {
            BinaryCommand::Worker(command) => match command {
                Command::Migrate(args) => (cli::migrate::migrate(args).await, telemetry),
                // The service runs as a task on the runtime's worker threads, not on this
                // thread (which only waits for it): the tick then spawns its probes onto its
                // own worker's queue and collects them there, instead of every probe's start
                // and end crossing between this thread and a worker (a futex wake-up and a
                // context switch each way).
                Command::Run(args) => tokio::spawn(async move {
                    let result = app::run(*args, &telemetry).await;
                    (result, telemetry)
                })
                .await
                .map_err(|e| anyhow::anyhow!("the service's task ended abnormally: {e}"))?,
                Command::Tail(args) => (cli::tail::tail(args).await, telemetry),
                Command::Status(args) => (cli::status::status(args).await, telemetry),
                Command::Outbox(args) => (cli::outbox::outbox(args).await, telemetry),
            },
            #[cfg(feature = "sim")]
            BinaryCommand::Fleet(args) => (cli::fleet::fleet(*args).await, telemetry),
        };
        telemetry.shutdown().await;
        result
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let chain: &(dyn std::error::Error + 'static) = e.as_ref();
            tracing::error!(error = %ErrorChain(chain), "healthprobe stopped");
            eprintln!("healthprobe: {e:#}");
            ExitCode::FAILURE
        }
    }
}
