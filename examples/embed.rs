//! Embedding the exporter in another program.
//!
//! ```sh
//! cargo run --example embed
//! ```
//!
//! The library takes the same configuration as the binary: here it is
//! built from arguments and a fixed environment instead of the process's,
//! which is also how a host program keeps its own flags apart. The example
//! serves the demo organization for ten seconds on a free port, prints what
//! it served, and shuts down as the binary does on SIGTERM.

use std::collections::HashMap;
use std::time::Duration;

use clap::Parser;
use scout_exporter::config::{Cli, Config};
use scout_exporter::{app, logging};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cli = Cli::try_parse_from(["embedded", "--demo", "--listen", "127.0.0.1:0"])?;
    let env: HashMap<String, String> =
        [("OTEL_METRICS_EXPORTER".to_string(), "prometheus".to_string())].into();
    let config = Config::resolve(cli, &env)?;
    logging::init(config.log_format);

    let running = app::start(&config).await?;
    let url = format!("http://{}/metrics", running.addr);
    println!("serving {url}");
    tokio::time::sleep(Duration::from_secs(2)).await;

    for org in running.store.orgs() {
        let series = org.snapshot().map_or(0, |s| s.series_count());
        println!("organization {}: up={} series={series}", org.name(), org.is_up());
    }
    tokio::time::sleep(Duration::from_secs(8)).await;
    running.stop().await;
    Ok(())
}
