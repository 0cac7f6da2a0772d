//! `twinmq bench stability [--scenario NAME]... [--transport T]... [--duration SECS]
//! [--out DIR] [--target HOST:PORT --cafile FILE]`.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use super::{Scenario, Shape, StabilityOptions, Target, TransportKind};

/// Runs the stability scenarios and writes DIR/report.json, DIR/report.md and SVG charts.
#[derive(clap::Args, Debug, Clone)]
pub struct StabilityArgs {
    /// A scenario to run (repeatable; default: all): ack-wedge, loss, rebind, hol, stall,
    /// reconnect-storm.
    #[arg(long = "scenario", value_name = "NAME")]
    pub scenarios: Vec<Scenario>,
    /// A transport to run them over (repeatable; default: all): tls, quic-single,
    /// quic-multi.
    #[arg(long = "transport", value_name = "TRANSPORT")]
    pub transports: Vec<TransportKind>,
    /// Seconds of traffic per run (stall and rebind stretch it to fit their faults).
    #[arg(long, default_value_t = 10.0, value_name = "SECS")]
    pub duration: f64,
    /// Where the report and the charts go.
    #[arg(long, default_value = "target/stability", value_name = "DIR")]
    pub out: PathBuf,
    /// Measure this broker's TLS listener instead of starting one (loopback only).
    #[arg(long, value_name = "HOST:PORT")]
    pub target: Option<String>,
    /// The target's QUIC listener; default: the target's host, UDP port 14567.
    #[arg(long, value_name = "HOST:PORT", requires = "target")]
    pub target_quic: Option<String>,
    /// The CA that signed the target's certificate (required with --target).
    #[arg(long, value_name = "FILE", requires = "target")]
    pub cafile: Option<PathBuf>,
    /// The name the target's certificate carries.
    #[arg(long, default_value = "localhost", value_name = "NAME")]
    pub server_name: String,
    /// Clients in the reconnect storm.
    #[arg(long, default_value_t = 200, value_name = "N")]
    pub clients: usize,
    /// Seed of every random choice (loss, reordering, bursts).
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Keep packet faults off the impairment link (network namespaces joined by TUN
    /// devices, which need root): QUIC then meets them in a loopback relay and the TLS
    /// cases that need real packet loss are not run.
    #[arg(long)]
    pub no_link: bool,
    /// No progress bar.
    #[arg(long)]
    pub no_progress: bool,
}

/// `twinmq bench stability`.
pub fn run_cli(args: StabilityArgs) -> ExitCode {
    let options = match options(&args) {
        Ok(options) => options,
        Err(err) => {
            eprintln!("twinmq bench stability: {err}");
            return ExitCode::FAILURE;
        }
    };
    let report = match super::run(&options) {
        Ok(report) => report,
        Err(err) => {
            eprintln!("twinmq bench stability: {err}");
            return ExitCode::FAILURE;
        }
    };
    print!("{}", report.markdown());
    match report.write(&args.out) {
        Ok(charts) => {
            println!();
            println!("wrote {}", args.out.join("report.json").display());
            println!("wrote {}", args.out.join("report.md").display());
            for chart in charts {
                println!("wrote {}", args.out.join(chart).display());
            }
        }
        Err(err) => {
            eprintln!(
                "twinmq bench stability: cannot write {}: {err}",
                args.out.display()
            );
            return ExitCode::FAILURE;
        }
    }
    let broken: Vec<String> = report
        .results
        .iter()
        .filter(|r| r.ran && (r.lost > 0 || r.stalled_sessions > 0))
        .map(|r| {
            format!(
                "{} {} {}: lost {}, stalled {}",
                r.scenario, r.condition, r.transport, r.lost, r.stalled_sessions
            )
        })
        .collect();
    if broken.is_empty() {
        ExitCode::SUCCESS
    } else {
        for b in broken {
            eprintln!("twinmq bench stability: QoS 1/2 guarantee broken: {b}");
        }
        ExitCode::from(2)
    }
}

fn options(args: &StabilityArgs) -> Result<StabilityOptions, String> {
    if !(args.duration > 0.0 && args.duration <= 3600.0) {
        return Err(format!(
            "--duration {} is out of range (0, 3600]",
            args.duration
        ));
    }
    if args.clients == 0 || args.clients > 5000 {
        return Err(format!(
            "--clients {} is out of range 1..=5000",
            args.clients
        ));
    }
    let target = match &args.target {
        None => None,
        Some(tls) => {
            let tls = resolve(tls)?;
            let quic = match &args.target_quic {
                Some(q) => resolve(q)?,
                None => SocketAddr::new(tls.ip(), 14567),
            };
            let ca = args
                .cafile
                .clone()
                .ok_or("--cafile is required with --target")?;
            Some(Target {
                tls,
                quic,
                ca,
                server_name: args.server_name.clone(),
            })
        }
    };
    let broker_binary = match target {
        Some(_) => None,
        None => Some(
            std::env::current_exe()
                .map_err(|e| format!("cannot find the twinmq binary to start brokers: {e}"))?,
        ),
    };
    let mut shape = Shape::full();
    shape.storm_clients = args.clients;
    Ok(StabilityOptions {
        scenarios: if args.scenarios.is_empty() {
            Scenario::ALL.to_vec()
        } else {
            dedup(&args.scenarios)
        },
        transports: if args.transports.is_empty() {
            TransportKind::ALL.to_vec()
        } else {
            dedup(&args.transports)
        },
        duration: Duration::from_secs_f64(args.duration),
        target,
        broker_binary,
        use_link: !args.no_link,
        shape,
        seed: args.seed,
        progress: !args.no_progress,
    })
}

fn resolve(hostport: &str) -> Result<SocketAddr, String> {
    hostport
        .to_socket_addrs()
        .map_err(|e| format!("{hostport}: {e}"))?
        .next()
        .ok_or_else(|| format!("{hostport}: no address"))
}

fn dedup<T: PartialEq + Copy>(items: &[T]) -> Vec<T> {
    let mut out = Vec::new();
    for &item in items {
        if !out.contains(&item) {
            out.push(item);
        }
    }
    out
}
