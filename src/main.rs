//! The `twinmq` command line: serve, check-config, certs, pub, sub, bench.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use twinmq::config::{self, Config, LogFormat, Overrides};
use twinmq::server::Server;

#[derive(Parser)]
#[command(
    name = "twinmq",
    version,
    about = "MQTT 3.1.1/5.0 broker over TLS/TCP and QUIC"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct ConfigArgs {
    /// A TOML configuration file (over the embedded defaults).
    #[arg(long, short = 'c')]
    config: Option<PathBuf>,
    /// Override one key, e.g. `--set mqtt.max_inflight=100` (repeatable; wins over the
    /// file and the environment).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the broker.
    Serve {
        #[command(flatten)]
        config: ConfigArgs,
        /// Inject the faults of this TOML plan at the IO seams (for experiments; see
        /// docs/stability.md). Off by default.
        #[arg(long, value_name = "FILE")]
        fault_plan: Option<PathBuf>,
    },
    /// Validate the configuration (and the files it names) without starting.
    CheckConfig {
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Generate a CA, a server certificate and client certificates.
    Certs {
        /// Where to write the PEM files.
        #[arg(long, default_value = "certs")]
        out: PathBuf,
        /// Server names (DNS names or IP addresses).
        #[arg(long = "name", default_values_t = ["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()])]
        names: Vec<String>,
        /// Client certificate names (the certificate's CN), repeatable.
        #[arg(long = "client")]
        clients: Vec<String>,
    },
    /// Publish a message (like mosquitto_pub), over TCP, TLS or QUIC.
    #[command(disable_help_flag = true)]
    Pub(twinmq::client::cli::PubArgs),
    /// Subscribe and print messages (like mosquitto_sub), over TCP, TLS or QUIC.
    #[command(disable_help_flag = true)]
    Sub(twinmq::client::cli::SubArgs),
    /// Benchmarks: start brokers (or measure one on loopback) and load them.
    Bench {
        #[command(subcommand)]
        bench: BenchCommand,
    },
    /// Add a user to a password file or change their password, or delete a user
    /// (mosquitto_passwd's file format and options).
    Passwd(PasswdArgs),
}

/// `twinmq passwd [-c] FILE USER`, `twinmq passwd [-c] -b FILE USER PASSWORD`,
/// `twinmq passwd -D FILE USER`: the forms of `mosquitto_passwd`.
#[derive(clap::Args)]
struct PasswdArgs {
    /// Take the password from the command line, after USER (batch mode), instead of
    /// prompting for it (or reading one line from standard input when it is not a terminal).
    #[arg(short = 'b', requires = "password")]
    batch: bool,
    /// Create a new file, replacing any existing one.
    #[arg(short = 'c', conflicts_with = "delete")]
    create: bool,
    /// Delete USER instead of setting a password.
    #[arg(short = 'D', conflicts_with = "batch")]
    delete: bool,
    /// PBKDF2-SHA512 iterations for the new hash.
    #[arg(short = 'I', long = "iterations", default_value_t = twinmq::broker::auth::DEFAULT_ITERATIONS)]
    iterations: std::num::NonZeroU32,
    /// The password file.
    file: PathBuf,
    /// The user name.
    user: String,
    /// The password, with -b only.
    #[arg(requires = "batch")]
    password: Option<String>,
}

#[derive(Subcommand)]
enum BenchCommand {
    /// TLS, QUIC single-stream and QUIC multi-stream under the same faults: ack wedge,
    /// loss, rebinding, head-of-line blocking, stalls, reconnect storms (docs/stability.md).
    Stability(twinmq::bench::stability::cli::StabilityArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config, fault_plan } => serve(config, fault_plan),
        Command::CheckConfig { config } => check_config(config),
        Command::Certs {
            out,
            names,
            clients,
        } => match config::certs::generate_cert_set(&out, &names, &clients) {
            Ok(set) => {
                println!("CA certificate:     {}", set.ca_cert.display());
                println!("CA key:             {}", set.ca_key.display());
                println!("server certificate: {}", set.server_cert.display());
                println!("server key:         {}", set.server_key.display());
                for client in set.clients {
                    println!(
                        "client {}: {} {}",
                        client.name,
                        client.cert.display(),
                        client.key.display()
                    );
                }
                ExitCode::SUCCESS
            }
            Err(err) => fail(&err),
        },
        Command::Pub(args) => twinmq::client::cli::run_pub(args),
        Command::Sub(args) => twinmq::client::cli::run_sub(args),
        Command::Bench { bench } => match bench {
            BenchCommand::Stability(args) => twinmq::bench::stability::cli::run_cli(args),
        },
        Command::Passwd(args) => passwd(args),
    }
}

fn passwd(args: PasswdArgs) -> ExitCode {
    use twinmq::broker::auth::password;

    if args.delete {
        return match password::delete_user(&args.file, &args.user) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => fail(&err),
        };
    }
    if let Err(err) = password::validate_username(&args.user) {
        return fail(&err);
    }
    let secret = match args.password {
        Some(secret) => secret,
        None => match read_new_password() {
            Ok(secret) => secret,
            Err(message) => return fail(&message),
        },
    };
    if secret.is_empty() {
        return fail(&"empty password");
    }
    let rng = ring::rand::SystemRandom::new();
    match password::set_password(
        &args.file,
        &args.user,
        secret.as_bytes(),
        args.iterations,
        args.create,
        &rng,
    ) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => fail(&err),
    }
}

/// Prompts twice without echo on a terminal; otherwise reads one line from standard input.
fn read_new_password() -> Result<String, String> {
    use std::io::{BufRead, IsTerminal};

    if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password("Password: ").map_err(|e| e.to_string())?;
        let second = rpassword::prompt_password("Reenter password: ").map_err(|e| e.to_string())?;
        if first != second {
            return Err("passwords do not match".to_string());
        }
        return Ok(first);
    }
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| format!("cannot read the password from standard input: {e}"))?;
    let trimmed = line.strip_suffix('\n').unwrap_or(&line);
    Ok(trimmed.strip_suffix('\r').unwrap_or(trimmed).to_string())
}

fn load(args: &ConfigArgs) -> Result<Config, config::ConfigError> {
    let overrides = Overrides::from_assignments(&args.set)?;
    Config::load(args.config.as_deref(), &overrides)
}

fn check_config(args: ConfigArgs) -> ExitCode {
    let overrides = match Overrides::from_assignments(&args.set) {
        Ok(o) => o,
        Err(err) => return fail(&err),
    };
    match Config::check(args.config.as_deref(), &overrides) {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(err) => fail(&err),
    }
}

fn serve(args: ConfigArgs, fault_plan: Option<PathBuf>) -> ExitCode {
    let config = match load(&args) {
        Ok(config) => config,
        Err(err) => return fail(&err),
    };
    let plan = match fault_plan.as_deref().map(twinmq::fault::FaultPlan::load) {
        None => twinmq::fault::FaultPlan::default(),
        Some(Ok(plan)) => plan,
        Some(Err(err)) => return fail(&err),
    };
    init_logging(&config);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => return fail(&err),
    };
    runtime.block_on(async move {
        if !plan.is_empty() {
            eprintln!("twinmq: FAULT INJECTION IS ON ({plan:?})");
        }
        let server = match Server::start_with_faults(&config, &plan).await {
            Ok(server) => server,
            Err(err) => return fail(&err),
        };
        if let Some(addr) = server.tcp_addr {
            println!("twinmq: MQTT over TCP on {addr}");
        }
        if let Some(addr) = server.tls_addr {
            println!("twinmq: MQTT over TLS on {addr}");
            if let Some(ca) = &server.dev_ca {
                println!("twinmq: development CA certificate: {}", ca.display());
                println!(
                    "twinmq: try: mosquitto_sub --cafile {} -h localhost -p {} -t '#' -v",
                    ca.display(),
                    addr.port()
                );
            }
        }
        if let Some(addr) = server.quic_addr {
            println!("twinmq: MQTT over QUIC on {addr}/udp (ALPN mqtt)");
        }
        wait_for_signal().await;
        println!("twinmq: shutting down");
        server.shutdown(Duration::from_secs(5)).await;
        ExitCode::SUCCESS
    })
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TWINMQ_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&config.log.level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn fail(err: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("twinmq: {err}");
    ExitCode::FAILURE
}
