//! The `kiln` command-line tool: inspect runs, query the store with SQL, list and serve models.

/// `println!` that returns an error instead of panicking when stdout is closed (`| head`);
/// `main` ends quietly on that error.
macro_rules! say {
    ($($arg:tt)*) => {
        std::io::Write::write_fmt(&mut std::io::stdout().lock(), format_args!("{}\n", format_args!($($arg)*)))?
    };
}

mod data;
mod flow;
mod load;
mod plot;
mod registry;
mod runs;
mod slurm;
mod store_cmd;
mod train;
mod util;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{CommandFactory, Parser, Subcommand};
use kiln_serve::{Deployment, LoadedModel, ServeOptions, ServerHandle, Trigger};
use kiln_track::Store;
use kiln_track::client::Client;
use kiln_track::server::ServerConfig;

/// kiln: an ML research platform for HPC labs.
#[derive(Debug, Parser)]
#[command(name = "kiln", version, about)]
struct Cli {
    /// The tracking store (default: $KILN_STORE, else ./kiln-store).
    #[arg(long, global = true, env = "KILN_STORE")]
    store: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate, profile, hash or split a data file (no store needed).
    ///
    /// Example: kiln data validate data/penguins.csv --schema penguins.schema.toml
    #[command(subcommand)]
    Data(data::DataCommand),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    ///
    /// Example: kiln completions bash > ~/.local/share/bash-completion/completions/kiln
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Train a model from a TOML config: load, validate, split, preprocess, train, evaluate,
    /// package and (gate permitting) register, all in one tracked run. Any config value can be
    /// overridden with --set KEY.PATH=VALUE or KILN_TRAIN__KEY__PATH=VALUE.
    ///
    /// Example: kiln train --config examples/configs/penguins.toml --set train.epochs=10
    Train(train::TrainArgs),
    /// List, inspect, compare and plot runs (with no subcommand: `kiln runs ls`).
    ///
    /// Example: kiln runs ls --experiment digits --sort test_accuracy
    Runs(runs::RunsArgs),
    /// Run a SQL query over the store's tables (runs, params, metrics, latest_metrics, tags,
    /// datasets, models, model_events, predictions, feedback).
    ///
    /// Example: kiln query "SELECT run_id, value FROM latest_metrics WHERE key = 'test_accuracy' ORDER BY value DESC"
    #[command(alias = "sql")]
    Query(runs::QueryArgs),
    /// Registered models: versions, aliases, gated promotion, rollback, history.
    ///
    /// Example: kiln registry promote digits-mlp 3 --require test_accuracy=0.95
    #[command(subcommand)]
    Registry(registry::RegistryCommand),
    /// Submit, watch and cancel Slurm jobs; run a `kiln train` sweep as a job array.
    ///
    /// Example: kiln slurm sweep --config sweep.toml --workers 8 --time 1h
    #[command(subcommand)]
    Slurm(Box<slurm::SlurmCommand>),
    /// Run a cached pipeline of stages from a TOML file (on Slurm or here), or see which
    /// stages would run.
    ///
    /// Example: kiln flow run retrain.flow.toml --backend local
    #[command(subcommand)]
    Flow(flow::FlowCommand),
    /// Maintain the store: compact into Parquet, sync to another store, collect garbage.
    ///
    /// Example: kiln store gc --dry-run
    #[command(subcommand)]
    Store(store_cmd::StoreCommand),
    /// Serve registered models over KServe v2 HTTP until interrupted, logging predictions and
    /// feedback to the store. The admin API (/admin/...) is on when $KILN_SERVE_TOKEN is set.
    ///
    /// Example: kiln serve -m digits --canary digits@canary:10 --trigger 'sbatch retrain.sh'
    Serve {
        /// Models as NAME or NAME@REF (REF: version number, alias, or latest; default production).
        #[arg(long = "model", short, required = true)]
        models: Vec<String>,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        addr: String,
        /// A canary as NAME@REF:PERCENT, taking PERCENT % of NAME's traffic.
        #[arg(long)]
        canary: Vec<String>,
        /// A shadow as NAME@REF, predicting a copy of NAME's requests.
        #[arg(long)]
        shadow: Vec<String>,
        /// Share of requests written to the prediction log (0 turns it off).
        #[arg(long, default_value_t = 1.0)]
        log_sample: f64,
        /// Rows in each model's drift window.
        #[arg(long, default_value_t = 2000)]
        drift_window: usize,
        /// A shell command run when drift or degradation is detected (env: KILN_MODEL,
        /// KILN_VERSION, KILN_TRIGGER, KILN_REASON, KILN_DRIFT_SHARE, KILN_ONLINE_ACCURACY,
        /// KILN_STORE), at most once an hour per model.
        #[arg(long)]
        trigger: Option<String>,
    },
    /// Measure a served model's latency and throughput, with a data file's rows as requests.
    ///
    /// Example: kiln load-test --model penguins-mlp --data data/penguins.csv --clients 16 --requests 5000
    LoadTest(load::LoadArgs),
    /// Serve the store's tracking API over HTTP (runs, metrics, artifacts, registry; remote
    /// logging for jobs on compute nodes) until interrupted. Writes need the bearer token in
    /// $KILN_TRACK_TOKEN when it is set; listening beyond 127.0.0.1 requires one.
    ///
    /// Example: KILN_TRACK_TOKEN=secret kiln track-server --addr 0.0.0.0:7474
    TrackServer {
        /// Address to listen on (port 0 picks a free port; the address is printed).
        #[arg(long, default_value = kiln_track::server::DEFAULT_ADDR)]
        addr: String,
        /// Require the token for reads too.
        #[arg(long)]
        protect_reads: bool,
        /// End a remote run as killed after this many seconds without word from its client.
        #[arg(long, default_value_t = 300)]
        idle_timeout: u64,
        /// The largest request body (log batch or artifact upload), in MiB.
        #[arg(long, default_value_t = 256)]
        max_body_mib: usize,
    },
    /// The web UI over the store: runs table, run pages with charts, comparisons (overlaid
    /// curves, parallel coordinates), the registry and a serving monitor, at http://ADDR/.
    /// It is the tracking server, so remote jobs can log to it too.
    ///
    /// Example: kiln ui --addr 127.0.0.1:7474 (then ssh -L 7474:127.0.0.1:7474 login1 from a laptop)
    Ui {
        /// Address to listen on (port 0 picks a free port; the URL is printed).
        #[arg(long, default_value = kiln_track::server::DEFAULT_ADDR)]
        addr: String,
    },
    /// Push runs spooled while the tracking server was unreachable (token from
    /// $KILN_TRACK_TOKEN).
    ///
    /// Example: kiln push --url http://login1:7474 --spool kiln-spool
    Push {
        /// The tracking server.
        #[arg(long, env = kiln_track::client::URL_ENV)]
        url: String,
        /// The spool directory.
        #[arg(long, env = kiln_track::client::SPOOL_ENV, default_value = "kiln-spool")]
        spool: PathBuf,
    },
}

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        // The reader went away (`kiln data profile ... | head`): not an error.
        Err(e)
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) =>
        {
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("Error: {e:?}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let command = match cli.command {
        Command::Data(command) => return data::run(command),
        Command::Train(args) => return train::run(cli.store.as_deref(), args),
        Command::Flow(command) => return flow::run(command),
        Command::LoadTest(args) => return load::run(args),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "kiln", &mut std::io::stdout());
            return Ok(ExitCode::SUCCESS);
        }
        command => command,
    };
    if let Command::Push { url, spool } = &command {
        push(url, spool)?;
        return Ok(ExitCode::SUCCESS);
    }
    let store = match &cli.store {
        Some(p) => Store::open(p)?,
        None => Store::from_env()?,
    };
    match command {
        Command::Data(command) => return data::run(command),
        Command::Train(args) => return train::run(cli.store.as_deref(), args),
        Command::Flow(command) => return flow::run(command),
        Command::LoadTest(args) => return load::run(args),
        Command::Completions { .. } => {}
        // Pushed before the store is opened (a push needs no store); kept for completeness.
        Command::Push { url, spool } => push(&url, &spool)?,
        Command::Ui { addr } => {
            let token = std::env::var(kiln_track::api::TOKEN_ENV).ok().filter(|t| !t.is_empty());
            let config = ServerConfig { addr, token, ..ServerConfig::default() };
            let root = store.root().display().to_string();
            kiln_track::server::serve_until_signal(store, config, |addr| {
                println!("kiln UI for {root} on http://{addr}/ (Ctrl-C to stop)");
            })?;
        }
        Command::TrackServer { addr, protect_reads, idle_timeout, max_body_mib } => {
            let token = std::env::var(kiln_track::api::TOKEN_ENV).ok().filter(|t| !t.is_empty());
            let config = ServerConfig {
                addr,
                token,
                protect_reads,
                idle_timeout: std::time::Duration::from_secs(idle_timeout),
                max_body_bytes: max_body_mib << 20,
            };
            let root = store.root().display().to_string();
            kiln_track::server::serve_until_signal(store, config, |addr| {
                println!("tracking server for {root} on http://{addr} (Ctrl-C to stop)");
            })?;
        }
        Command::Runs(args) => return runs::run(&store, args),
        Command::Query(args) => return runs::query(&store, args),
        Command::Registry(command) => return registry::run(&store, command),
        Command::Store(command) => return store_cmd::run(&store, command),
        Command::Slurm(command) => return slurm::run(&store, *command),
        Command::Serve { models, addr, canary, shadow, log_sample, drift_window, trigger } => {
            let parse = |spec: &str, flag: &str| -> Result<(String, String)> {
                let (name, reference) = spec.split_once('@').unwrap_or((spec, "production"));
                if name.is_empty() || reference.is_empty() {
                    bail!("{flag} {spec:?}: expected NAME or NAME@REF");
                }
                Ok((name.to_string(), reference.to_string()))
            };
            let mut deployments: Vec<Deployment> = Vec::new();
            for spec in &models {
                let (name, reference) = parse(spec, "--model")?;
                let model =
                    LoadedModel::from_registry(&store, &name, &reference).with_context(|| format!("loading {spec}"))?;
                deployments.push(model.into());
            }
            let find = |deployments: &[Deployment], name: &str, flag: &str| -> Result<usize> {
                deployments
                    .iter()
                    .position(|d| d.primary.name == name)
                    .with_context(|| format!("{flag}: model {name:?} is not served (add --model {name})"))
            };
            for spec in &canary {
                let (model, percent) =
                    spec.rsplit_once(':').with_context(|| format!("--canary {spec:?}: expected NAME@REF:PERCENT"))?;
                let percent: f64 =
                    percent.parse().with_context(|| format!("--canary {spec:?}: {percent:?} is not a percentage"))?;
                let (name, reference) = parse(model, "--canary")?;
                let i = find(&deployments, &name, "--canary")?;
                let model =
                    LoadedModel::from_registry(&store, &name, &reference).with_context(|| format!("loading {spec}"))?;
                deployments[i].canary = Some((model, percent));
            }
            for spec in &shadow {
                let (name, reference) = parse(spec, "--shadow")?;
                let i = find(&deployments, &name, "--shadow")?;
                let model =
                    LoadedModel::from_registry(&store, &name, &reference).with_context(|| format!("loading {spec}"))?;
                deployments[i].shadow = Some(model);
            }
            let mut options = ServeOptions {
                store: Some(store.clone()),
                admin_token: std::env::var("KILN_SERVE_TOKEN").ok().filter(|t| !t.is_empty()),
                ..ServeOptions::default()
            };
            options.log.sample_rate = log_sample;
            options.monitor.window_rows = drift_window;
            options.monitor.min_rows = options.monitor.min_rows.min(drift_window);
            options.monitor.trigger = trigger
                .map(|command| Trigger { command: vec!["sh".into(), "-c".into(), command], ..Trigger::default() });
            let server = ServerHandle::start_with(&addr, deployments, options)?;
            say!("serving on {} (Ctrl-C to stop)", server.url());
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
                if let Ok(rt) = runtime {
                    let _ = rt.block_on(tokio::signal::ctrl_c());
                }
                let _ = tx.send(());
            });
            let _ = rx.recv();
            server.shutdown()?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn push(url: &str, spool: &std::path::Path) -> Result<()> {
    let mut client = Client::new(url).with_spool(spool);
    if let Some(token) = std::env::var(kiln_track::api::TOKEN_ENV).ok().filter(|t| !t.is_empty()) {
        client = client.with_token(&token);
    }
    let report = client.sync_spool()?;
    say!(
        "pushed {} run(s), {} metric value(s), {} artifact file(s) to {url}; {} pushed before, {} still running",
        report.runs_pushed,
        report.points_pushed,
        report.artifacts_pushed,
        report.already_pushed,
        report.still_running.len()
    );
    for (run, why) in &report.failed {
        eprintln!("run {run} not pushed: {why}");
    }
    if !report.failed.is_empty() {
        bail!("{} run(s) could not be pushed; they stay in {} for the next push", report.failed.len(), spool.display());
    }
    Ok(())
}
