//! The `orchestrator` binary: the worker and the admin CLI. Errors become `anyhow` here, at the edge.

use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use orchestrator::admin::{self, NewTask};
use orchestrator::app;
use orchestrator::config::Config;
use orchestrator::connections;
use orchestrator::docker::{Engine, teams};
use orchestrator::queues::Definitions;
use orchestrator::shutdown::Shutdown;
use orchestrator::templates::Kind;
use orchestrator::watch::{self, Target};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "orchestrator",
    version,
    about = "Provisions tenants from prioritized Redis queues: containers, DNS, certificates."
)]
struct Cli {
    #[command(flatten)]
    config: Config,

    /// Log as JSON lines instead of human-readable text.
    #[arg(long, env = "LOG_JSON", global = true, default_value_t = false)]
    log_json: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Consume tasks until SIGTERM/SIGINT.
    Worker,
    /// Run a worker, provision a demo team, show its progress, and keep serving.
    Demo {
        /// Slug of the demo team.
        #[arg(long, default_value = "demo")]
        slug: String,
        /// Task type of the demo task (system.ping works without Docker).
        #[arg(long, default_value = "team.provision")]
        task_type: String,
        /// Stop after the demo task ends instead of serving on.
        #[arg(long)]
        exit: bool,
        /// Ask for a certificate (`certificate: true`) in the provision payload.
        #[arg(long)]
        certificate: bool,
        /// HTTPS port of the ingress the demo team is served on (printed in the curl command).
        #[arg(long, default_value_t = 443)]
        https_port: u16,
        /// PEM root a client trusts for the team's certificate (printed in the curl command).
        #[arg(long)]
        ca_file: Option<std::path::PathBuf>,
    },
    /// Print traefik/traefik.yml adapted for a Traefik host process (ports, folders).
    TraefikConfig {
        /// The static configuration to adapt.
        #[arg(long, default_value = "traefik/traefik.yml")]
        source: std::path::PathBuf,
        #[arg(long, default_value_t = 8000)]
        web_port: u16,
        #[arg(long, default_value_t = 8443)]
        websecure_port: u16,
        #[arg(long, default_value_t = 8088)]
        traefik_port: u16,
        /// The file provider's folder.
        #[arg(long)]
        dynamic_dir: std::path::PathBuf,
        /// Traefik's own ACME storage file.
        #[arg(long)]
        acme_storage: std::path::PathBuf,
    },
    /// Enqueue a task like the portal does; prints its id.
    Enqueue {
        /// Task type, e.g. team.provision.
        task_type: String,
        /// Payload (JSON object).
        #[arg(long, default_value = "{}")]
        payload: String,
        /// high or normal.
        #[arg(long, default_value = "normal")]
        priority: String,
        /// User whose tasks:<user> channel hears about it.
        #[arg(long)]
        user: Option<String>,
        /// Idempotency key.
        #[arg(long)]
        idempotency_key: Option<String>,
        /// Attempts before failing for good.
        #[arg(long)]
        max_attempts: Option<u32>,
        /// Seconds one attempt may take.
        #[arg(long)]
        timeout_s: Option<u64>,
        /// Then watch it until it ends.
        #[arg(long)]
        watch: bool,
    },
    /// Show live progress bars; exits non-zero when a watched task failed.
    Watch {
        /// Task id to follow until it ends.
        task_id: Option<String>,
        /// Follow every task of this user.
        #[arg(long, conflicts_with = "task_id")]
        user: Option<String>,
        /// Follow every task.
        #[arg(long, conflicts_with_all = ["task_id", "user"])]
        all: bool,
    },
    /// Ask a task to stop; its handler undoes its work.
    Cancel { task_id: String },
    /// Print a task's progress hash.
    Show { task_id: String },
    /// Queue depths, in-flight, delayed, dead-lettered, live workers.
    Status {
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// Teams and sandboxes with their containers' state.
    Teams {
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// Report drift between what Redis records and what the engine runs; `--fix` repairs it.
    Reconcile {
        #[arg(long)]
        fix: bool,
    },
    /// Show what a provision would create or change, touching nothing.
    Plan {
        slug: String,
        /// Plan a sandbox instead of a team.
        #[arg(long)]
        sandbox: bool,
    },
    /// The DNS zone.
    Dns {
        #[command(subcommand)]
        action: DnsAction,
    },
    /// The dead-letter list.
    Dead {
        #[command(subcommand)]
        action: DeadAction,
    },
    /// Serve the admin console (web UI, JSON API, live events) on CONSOLE_ADDR
    /// (default 127.0.0.1:9185) until SIGTERM/SIGINT.
    Console,
}

#[derive(Subcommand)]
enum DnsAction {
    /// Serve the platform zone (UDP and TCP on DNS_LISTEN) from Redis until SIGTERM/SIGINT.
    Serve,
}

#[derive(Subcommand)]
enum DeadAction {
    /// List entries, newest first.
    List {
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Put an entry (or all with --all) back on its queue.
    Retry {
        task_id: Option<String>,
        #[arg(long, conflicts_with = "task_id")]
        all: bool,
    },
    /// Delete every entry.
    Purge,
}

/// hickory logs two `info` lines per DNS query: a flood of queries would become a flood of logs.
/// Kept at `warn` unless `RUST_LOG` names hickory itself (the `orchestrator_dns_queries` metric
/// counts the queries instead).
const QUIET_DNS: &str = "hickory_server=warn";

fn init_logging(json: bool) {
    let asked = std::env::var("RUST_LOG").unwrap_or_default();
    let mut filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    if !asked.contains("hickory")
        && let Ok(directive) = QUIET_DNS.parse()
    {
        filter = filter.add_directive(directive);
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    init_logging(cli.log_json);
    let config = Arc::new(cli.config);
    // With REDIS_SENTINELS, every connection below goes to the master Sentinel names.
    let config = orchestrator::sentinel::follow(config).await?;
    match cli.command {
        Command::Worker => run_worker(config).await,
        Command::Demo {
            slug,
            task_type,
            exit,
            certificate,
            https_port,
            ca_file,
        } => {
            let options = DemoOptions {
                certificate,
                https_port,
                ca_file,
            };
            demo(config, slug, task_type, exit, options).await
        }
        Command::TraefikConfig {
            source,
            web_port,
            websecure_port,
            traefik_port,
            dynamic_dir,
            acme_storage,
        } => {
            let text = std::fs::read_to_string(&source)
                .with_context(|| format!("reading {}", source.display()))?;
            let layout = orchestrator::traefik::HostLayout {
                web_port,
                websecure_port,
                traefik_port,
                dynamic_dir: std::path::absolute(&dynamic_dir)?,
                acme_storage: std::path::absolute(&acme_storage)?,
                ca_server: None,
            };
            print!(
                "{}",
                orchestrator::traefik::adapt_static_config(&text, &layout)?
            );
            Ok(())
        }
        Command::Enqueue {
            task_type,
            payload,
            priority,
            user,
            idempotency_key,
            max_attempts,
            timeout_s,
            watch,
        } => {
            let payload = serde_json::from_str(&payload).context("--payload is not valid JSON")?;
            let definitions = Definitions::load(&config.queues.queues_dir)?;
            let pool = connections::pool(&config.redis.redis_url, 2)?;
            let id = admin::enqueue(
                &pool,
                &definitions,
                NewTask {
                    task_type,
                    payload,
                    priority,
                    user_id: user,
                    idempotency_key,
                    max_attempts,
                    timeout_s,
                },
            )
            .await?;
            println!("{id}");
            if watch {
                watch_task(&config, id).await?;
            }
            Ok(())
        }
        Command::Watch { task_id, user, all } => {
            let target = match (task_id, user, all) {
                (Some(id), _, _) => return watch_task(&config, id).await,
                (None, Some(user), _) => Target::User(user),
                (None, None, true) => Target::All,
                _ => bail!("say what to watch: a task id, --user U, or --all"),
            };
            let client = connections::client(&config.redis.redis_url)?;
            let stop = Shutdown::new();
            stop.on_signals();
            watch::watch(&client, target, async move { stop.wait().await }).await?;
            Ok(())
        }
        Command::Cancel { task_id } => {
            let pool = connections::pool(&config.redis.redis_url, 1)?;
            admin::cancel(&pool, &task_id).await?;
            println!("cancellation requested for {task_id}");
            Ok(())
        }
        Command::Show { task_id } => {
            let pool = connections::pool(&config.redis.redis_url, 1)?;
            let hash = admin::task_hash(&pool, &task_id).await?;
            if hash.is_empty() {
                bail!("no task {task_id}");
            }
            println!("{}", serde_json::to_string_pretty(&hash)?);
            Ok(())
        }
        Command::Status { json } => status(&config, json).await,
        Command::Dead { action } => dead(&config, action).await,
        Command::Teams { json } => {
            let (engine, services) = engine(config).await?;
            let rows = teams::list(&engine, &services).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                for row in rows {
                    println!("{row}");
                }
            }
            Ok(())
        }
        Command::Reconcile { fix } => {
            let (engine, services) = engine(config).await?;
            let report = teams::reconcile(&engine, &services, fix).await?;
            print!("{report}");
            if !report.is_clean() && !fix {
                bail!("drift found; run with --fix to repair it");
            }
            Ok(())
        }
        Command::Plan { slug, sandbox } => {
            let (engine, services) = engine(config).await?;
            let kind = if sandbox { Kind::Sandbox } else { Kind::Team };
            print!("{}", teams::plan(&engine, &services, kind, &slug).await?);
            Ok(())
        }
        Command::Console => console(config).await,
        Command::Dns {
            action: DnsAction::Serve,
        } => {
            let stop = Shutdown::new();
            stop.on_signals();
            orchestrator::dns::serve(&config, stop.token()).await?;
            Ok(())
        }
    }
}

async fn engine(config: Arc<Config>) -> Result<(Engine, Arc<orchestrator::services::Services>)> {
    let services = app::services(config).await?;
    let engine = Engine::connect(&services.config.docker).await?;
    Ok((engine, services))
}

async fn run_worker(config: Arc<Config>) -> Result<()> {
    let running = app::start_worker(config).await?;
    running.shutdown.on_signals();
    running.handle.await.context("worker task panicked")?;
    Ok(())
}

async fn watch_task(config: &Config, id: String) -> Result<()> {
    let client = connections::client(&config.redis.redis_url)?;
    let stop = Shutdown::new();
    stop.on_signals();
    let ended = watch::watch(&client, Target::Task(id.clone()), async move {
        stop.wait().await
    })
    .await?;
    match ended {
        Some(end) if end.status == "completed" => {
            println!("task {id} completed: {}", end.message);
            Ok(())
        }
        Some(end) => bail!("task {id} {}: {}", end.status, end.error),
        None => bail!("interrupted"),
    }
}

/// What the demo asks for and how it tells the user to reach the team.
struct DemoOptions {
    certificate: bool,
    https_port: u16,
    ca_file: Option<std::path::PathBuf>,
}

async fn demo(
    config: Arc<Config>,
    slug: String,
    task_type: String,
    exit: bool,
    options: DemoOptions,
) -> Result<()> {
    let running = app::start_worker(config.clone()).await?;
    let definitions = Definitions::load(&config.queues.queues_dir)?;
    let pool = connections::pool(&config.redis.redis_url, 2)?;
    let payload = if task_type == "system.ping" {
        serde_json::json!({ "delay_ms": 500 })
    } else {
        serde_json::json!({ "slug": slug, "certificate": options.certificate })
    };
    let id = admin::enqueue(
        &pool,
        &definitions,
        NewTask {
            task_type: task_type.clone(),
            payload,
            priority: "high".into(),
            user_id: Some("demo".into()),
            idempotency_key: None,
            max_attempts: None,
            timeout_s: None,
        },
    )
    .await?;
    println!("enqueued {task_type} for {slug} as task {id}");
    let outcome = watch_task(&config, id).await;
    if outcome.is_ok() && task_type == "team.provision" {
        let host = format!("{slug}.{}", config.platform.domain.trim_end_matches('.'));
        let port = options.https_port;
        let cacert = match &options.ca_file {
            Some(path) => format!("--cacert {} ", path.display()),
            None => "-k ".into(),
        };
        println!("team {slug} is served at https://{host}:{port}/ ; try:");
        println!("  curl {cacert}--resolve {host}:{port}:127.0.0.1 https://{host}:{port}/");
    }
    if exit {
        running.stop().await;
        return outcome;
    }
    if let Err(err) = &outcome {
        eprintln!("demo task did not complete: {err:#}");
    } else {
        println!("worker keeps serving; Ctrl-C stops it");
    }
    running.shutdown.on_signals();
    running.handle.await.context("worker task panicked")?;
    outcome
}

async fn status(config: &Config, json: bool) -> Result<()> {
    let definitions = Definitions::load(&config.queues.queues_dir)?;
    let pool = connections::pool(&config.redis.redis_url, 1)?;
    let status = admin::status(&pool, &definitions.claim_order()).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(());
    }
    println!("{:<32} {:>8}", "QUEUE", "WAITING");
    for (list, depth) in &status.depths.lists {
        println!("{list:<32} {depth:>8}");
    }
    println!("{:<32} {:>8}", "delayed (retries)", status.depths.delayed);
    println!("{:<32} {:>8}", "dead-lettered", status.depths.dead);
    let in_flight: u64 = status.workers.iter().map(|w| w.in_flight).sum();
    println!("{:<32} {:>8}", "in flight", in_flight);
    println!();
    println!("{:<40} {:<6} {:>9}", "WORKER", "ALIVE", "IN FLIGHT");
    for worker in &status.workers {
        println!(
            "{:<40} {:<6} {:>9}",
            worker.id,
            if worker.alive { "yes" } else { "no" },
            worker.in_flight
        );
    }
    Ok(())
}

async fn dead(config: &Config, action: DeadAction) -> Result<()> {
    let pool = connections::pool(&config.redis.redis_url, 1)?;
    match action {
        DeadAction::List { limit } => {
            for entry in admin::dead_list(&pool, limit).await? {
                println!(
                    "{}  {:<20} {:<26} {}  {}",
                    entry.failed_at,
                    entry.task_type.as_deref().unwrap_or("?"),
                    entry.queue,
                    entry.id,
                    entry.reason
                );
            }
        }
        DeadAction::Retry { task_id, all } => {
            if task_id.is_none() && !all {
                bail!("name a task id, or --all");
            }
            let retried = admin::dead_retry(&pool, task_id.as_deref()).await?;
            println!("queued again: {}", retried.len());
        }
        DeadAction::Purge => {
            let count = admin::dead_purge(&pool).await?;
            println!("purged {count} entries");
        }
    }
    Ok(())
}

async fn console(config: Arc<Config>) -> Result<()> {
    let definitions = Arc::new(Definitions::load(&config.queues.queues_dir)?);
    let services = app::services(config).await?;
    let stop = Shutdown::new();
    stop.on_signals();
    let running = orchestrator::console::start(services, definitions, stop).await?;
    println!("admin console on http://{}/", running.addr);
    running.handle.await.context("console task panicked")?;
    Ok(())
}
