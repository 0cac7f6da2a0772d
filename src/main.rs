//! The `twinmq` command line.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "twinmq", version, about = "MQTT broker over TLS/TCP and QUIC")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the broker (the listeners arrive with the broker issue).
    Serve,
}

fn main() {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve => {
            println!(
                "twinmq {}: the protocol core is built; listeners are not yet wired",
                env!("CARGO_PKG_VERSION")
            );
        }
    }
}
