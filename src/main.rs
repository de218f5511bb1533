//! `scenecast serve [--config FILE]`; `scenecast` alone serves too.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod limits;

#[derive(Parser)]
#[command(
    version,
    about = "Real-time push server: pages keep a WebSocket open, back offices push to them"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// TOML config file (default: ./scenecast.toml when it exists).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve HTTP, WebSocket and the configured ingress ports (the default).
    Serve,
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    // `serve` is the only command and the default.
    let (Some(Command::Serve) | None) = cli.command;

    let settings = match scenecast::Settings::load(cli.config.as_deref()) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("scenecast: config error: {e}");
            return ExitCode::from(2);
        }
    };
    limits::raise_and_report();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("scenecast: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(scenecast::run(settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("scenecast: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
