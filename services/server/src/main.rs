//! `sen`: the one binary of Sen. `sen serve` runs the services; `sen migrate` applies schema
//! migrations; `sen config` prints the effective configuration (secrets redacted).

use std::{path::PathBuf, time::Duration};

/// mimalloc: the request path allocates a lot of small, short-lived buffers; glibc's malloc
/// showed up at ~15% of server CPU in the read benchmark (see loadtests/RESULTS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use sen_platform::{
    Config, Database,
    auth::{Auth, Role, TokenRequest},
    shutdown, telemetry,
};
use sen_server::{ServiceName, build, migrate_all, parse_services};

/// Sen: telehealth and electronic health records (HL7 FHIR R4) for the Cao Lãnh area.
///
/// With no configuration, `sen serve` stores everything in ./data/sen.db (SQLite) and listens
/// on http://127.0.0.1:8080; the FHIR API is under /fhir. For production set DATABASE_URL
/// (postgres://…) and REDIS_URL (redis://…), run `sen migrate`, then `sen serve`.
///
/// Configuration is read from built-in defaults, then the TOML file given with --config,
/// then the environment: DATABASE_URL, REDIS_URL, OTEL_EXPORTER_OTLP_ENDPOINT and SEN_*
/// variables (SEN_LISTEN, SEN_DATA_DIR, SEN_LOG, …; `sen config` shows every key).
#[derive(Debug, Parser)]
#[command(name = "sen", version, about, long_about)]
struct Cli {
    /// TOML configuration file (sections [server], [database], [redis], [telemetry], [fhir]).
    #[arg(long, short, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the HTTP server until SIGTERM or Ctrl-C (in-flight requests finish first).
    Serve {
        /// Address to listen on (overrides server.listen / SEN_LISTEN), e.g. 0.0.0.0:8080.
        #[arg(long, value_name = "ADDR")]
        listen: Option<std::net::SocketAddr>,
        /// Services to run: `all` or a comma-separated list (known: ehr).
        #[arg(long, default_value = "all", value_name = "LIST")]
        services: String,
        /// Apply pending migrations before serving (always done on the embedded SQLite file).
        #[arg(long)]
        migrate: bool,
    },
    /// Apply pending database migrations of every service, then exit.
    Migrate {
        /// Services to migrate: `all` or a comma-separated list.
        #[arg(long, default_value = "all", value_name = "LIST")]
        services: String,
    },
    /// Print the effective configuration as TOML, with passwords redacted.
    Config,
    /// Print a bearer token signed with the embedded key (created in the data directory when
    /// missing), for calling the API: `curl -H "Authorization: Bearer $(sen token --role
    /// system)" http://127.0.0.1:8080/fhir/Patient`.
    Token {
        /// patient, practitioner, clinic-admin, ops-viewer or system.
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// The patient the token is for (required for --role patient): Patient/ID or ID.
        #[arg(long, value_name = "Patient/ID")]
        patient: Option<String>,
        /// The practitioner the user is: Practitioner/ID or ID.
        #[arg(long, value_name = "Practitioner/ID")]
        practitioner: Option<String>,
        /// SMART scopes, space-separated (default: the role's usual scopes, e.g.
        /// `system/*.cruds` for system, `patient/*.rs patient/Consent.cru` for patient).
        #[arg(long)]
        scope: Option<String>,
        /// How long the token is valid: 90s, 30m, 1h, 7d.
        #[arg(long, default_value = "1h", value_parser = parse_ttl)]
        ttl: u64,
        /// The token's subject (default: the patient, the practitioner or `sen-cli-<role>`).
        #[arg(long)]
        subject: Option<String>,
    },
}

fn parse_role(name: &str) -> Result<Role, String> {
    Role::parse(name).ok_or_else(|| {
        let known: Vec<&str> = Role::ALL.iter().map(|r| r.as_str()).collect();
        format!("unknown role {name:?}; known roles: {}", known.join(", "))
    })
}

/// `90s`, `30m`, `1h`, `7d` (or plain seconds) as seconds; at most 30 days.
fn parse_ttl(text: &str) -> Result<u64, String> {
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let unit = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => {
            return Err(format!(
                "{text:?}: use a number with s, m, h or d (e.g. 1h)"
            ));
        }
    };
    let seconds = number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(unit))
        .filter(|s| (1..=30 * 86_400).contains(s))
        .ok_or_else(|| format!("{text:?}: between 1 second and 30 days"))?;
    Ok(seconds)
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(cli.config.as_deref(), std::env::vars()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("sen: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sen: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command, config)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sen: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(command: Command, mut config: Config) -> anyhow::Result<()> {
    match command {
        Command::Config => {
            print!("{}", config.to_redacted_toml());
            Ok(())
        }
        Command::Token {
            role,
            patient,
            practitioner,
            scope,
            ttl,
            subject,
        } => {
            let auth = Auth::from_config(&config)?;
            let token = auth.mint(&TokenRequest {
                role,
                subject,
                patient,
                practitioner,
                scope,
                ttl_secs: ttl,
            })?;
            println!("{token}");
            Ok(())
        }
        Command::Migrate { services } => {
            let services = parse_services(&services).map_err(anyhow::Error::msg)?;
            let _telemetry = telemetry::init(&config.telemetry)?;
            let db = Database::connect(&config).await?;
            let applied = migrate_all(&db, &services).await?;
            if applied.is_empty() {
                println!("database is up to date ({})", db.backend().as_str());
            }
            for (service, version) in applied {
                println!("applied {service} migration {version}");
            }
            db.close().await;
            Ok(())
        }
        Command::Serve {
            listen,
            services,
            migrate,
        } => {
            if let Some(listen) = listen {
                config.server.listen = listen;
            }
            let services: Vec<ServiceName> =
                parse_services(&services).map_err(anyhow::Error::msg)?;
            let telemetry = telemetry::init(&config.telemetry)?;
            let app = build(&config, &services, migrate).await?;
            let listener = tokio::net::TcpListener::bind(config.server.listen)
                .await
                .with_context(|| format!("cannot listen on {}", config.server.listen))?;
            let address = listener.local_addr()?;
            let names: Vec<&str> = services.iter().map(|s| s.as_str()).collect();
            let grace = Duration::from_secs(config.server.shutdown_timeout_secs);
            let metrics_at = match (config.server.metrics_listen, app.metrics) {
                (Some(at), Some(metrics)) => {
                    let listener = tokio::net::TcpListener::bind(at)
                        .await
                        .with_context(|| format!("cannot listen on {at} for metrics"))?;
                    let at = listener.local_addr()?;
                    tokio::spawn(sen_platform::http::serve(
                        listener,
                        metrics,
                        shutdown::signal(),
                        grace,
                    ));
                    at
                }
                _ => address,
            };
            tracing::info!(%address, %metrics_at, backend = app.db.backend().as_str(), kv = app.kv.kind(), services = ?names, "serving");
            println!(
                "Sen listening on http://{address} (FHIR API: http://{address}/fhir, metrics: http://{metrics_at}/metrics, services: {})",
                names.join(",")
            );
            sen_platform::http::serve(listener, app.router, shutdown::signal(), grace).await?;
            app.db.close().await;
            telemetry.shutdown();
            tracing::info!("stopped");
            Ok(())
        }
    }
}
