//! The `scout-exporter` binary: parse the command line, then hand over to
//! the library.

use std::process::ExitCode;

use clap::Parser;
use scout_exporter::config::{Cli, Command, Config, ProcessEnv};
use scout_exporter::{app, logging};

fn main() -> ExitCode {
    scout_exporter::memory::limit_arenas();
    let cli = Cli::parse();
    let config = match Config::resolve(cli, &ProcessEnv) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("scout-exporter: {e}");
            return ExitCode::from(2);
        }
    };
    logging::init(config.log_format);
    // Two workers at most: the work is light, and a pinned or throttled
    // container gets no more threads than it has CPUs.
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get().min(2));
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .max_blocking_threads(8)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("scout-exporter: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match config.command {
        Some(Command::Check) => runtime.block_on(app::check(config)),
        None => runtime.block_on(app::run(config)),
    };
    // Lingering blocking tasks (a hung export) must not hold up the exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One plain line, like a configuration error, whatever the log
            // format: this is the last thing the process says.
            eprintln!("scout-exporter: {e}");
            ExitCode::FAILURE
        }
    }
}
