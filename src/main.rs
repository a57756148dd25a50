//! The `progimage` command: parses arguments, then calls the library.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand, ValueEnum};
use progimage::config::Overrides;
use progimage::cores::{CoreSlots, CpuSet};
use progimage::engine::{Engine, Format, OutputFormat, Presets};
use progimage::http::{serve_on, App};
use progimage::service::Service;
use progimage::store::Store;
use progimage::Settings;

/// Large buffers in their own 2 MiB-page mappings (see `hugepages`).
#[cfg(target_os = "linux")]
#[global_allocator]
static ALLOCATOR: progimage::hugepages::HugePages = progimage::hugepages::HugePages;

#[derive(Parser)]
#[command(
    version,
    about = "A database-free, content-addressed image store and transformer"
)]
struct Cli {
    /// Log lines as text for people, or one JSON object per line for log shippers.
    #[arg(long, env = "PROGIMAGE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP service (filesystem store in ./data, on 127.0.0.1:5070, by default).
    Serve(Serve),
    /// Run one transform on local files, without a server.
    Transform(Transform),
    /// Copy a store into another (e.g. a directory into a bucket); skips what is there,
    /// so it can be run again to resume.
    Migrate(Migrate),
    /// Print a transform URL with its signature (for servers with a signing key).
    Sign(Sign),
}

/// Settings shared by every command; each flag beats its variable, which beats the file.
#[derive(Args)]
struct Common {
    /// A TOML settings file (see settings/default.toml for every key).
    #[arg(long, env = "PROGIMAGE_CONFIG")]
    config: Option<PathBuf>,
    /// Largest upload, in bytes.
    #[arg(long, env = "PROGIMAGE_MAX_UPLOAD_BYTES")]
    max_upload_bytes: Option<u64>,
    /// Largest image, in pixels, as its header claims.
    #[arg(long, env = "PROGIMAGE_MAX_INPUT_PIXELS")]
    max_input_pixels: Option<u64>,
    /// API keys, comma-separated (several allow rotation).
    #[arg(
        long,
        env = "PROGIMAGE_API_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    api_keys: Option<Vec<String>>,
    /// The key transform URLs are signed with.
    #[arg(long, env = "PROGIMAGE_SIGNING_KEY", hide_env_values = true)]
    signing_key: Option<String>,
}

#[derive(Args)]
struct Sign {
    #[command(flatten)]
    common: Common,
    /// The path and query to sign, e.g. '/images/<id>/thumbnail/?w=200'.
    path: String,
}

#[derive(Args)]
struct Serve {
    #[command(flatten)]
    common: Common,
    /// Address to listen on.
    #[arg(long, env = "PROGIMAGE_LISTEN")]
    listen: Option<SocketAddr>,
    /// Store URL: a path, file:///abs/path, s3://bucket/prefix or memory://.
    #[arg(long, env = "PROGIMAGE_STORE")]
    store: Option<String>,
    /// Base URL for Location headers, when behind a proxy.
    #[arg(long, env = "PROGIMAGE_PUBLIC_URL")]
    public_url: Option<String>,
    /// Transform jobs at once (0: one per core, plus one).
    #[arg(long, env = "PROGIMAGE_TRANSFORM_WORKERS")]
    transform_workers: Option<usize>,
}

#[derive(Args)]
struct Migrate {
    #[command(flatten)]
    common: Common,
    /// The store to copy from (a path, file:///abs/path or s3://bucket/prefix).
    #[arg(long)]
    from: String,
    /// The store to copy into; S3 options come from the settings file and AWS_* variables.
    #[arg(long)]
    to: String,
}

#[derive(Args)]
struct Transform {
    #[command(flatten)]
    common: Common,
    /// The transform or pipeline, e.g. thumbnail or 'crop(aspect=1:1)/resize(w=96)'.
    name: String,
    /// The image to read.
    input: PathBuf,
    /// Where to write the result; its extension picks the format unless format= is given.
    output: PathBuf,
    /// A parameter as key=value, e.g. --param size=64; may be repeated.
    #[arg(long = "param", value_name = "KEY=VALUE")]
    params: Vec<String>,
}

impl Common {
    fn settings(&self, overrides: Overrides) -> Result<Settings, progimage::Error> {
        Settings::load(
            self.config.as_deref(),
            Overrides {
                max_upload_bytes: self.max_upload_bytes,
                max_input_pixels: self.max_input_pixels,
                api_keys: self.api_keys.clone(),
                signing_key: self.signing_key.clone(),
                ..overrides
            },
        )
    }
}

fn main() -> ExitCode {
    tune_malloc();
    let cli = Cli::parse();
    // Log lines are written in batches by a thread of their own (see `logs`).
    let (writer, flush_logs) = progimage::logs::BatchedStderr::start();
    progimage::logs::log_requests(writer.clone(), cli.log_format == LogFormat::Json);
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(writer);
    match cli.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().with_current_span(true).init(),
    }
    let result = match cli.command {
        Command::Serve(args) => run_serve(args),
        Command::Transform(args) => run_transform(args),
        Command::Migrate(args) => run_migrate(args),
        Command::Sign(args) => run_sign(args),
    };
    drop(flush_logs);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("progimage: {message}");
            ExitCode::FAILURE
        }
    }
}

/// glibc's malloc, told to hand large blocks (image buffers of 1 MiB and more) straight
/// to mmap and back to the kernel on free. Left alone, it raises its mmap threshold
/// after the first large free (up to 32 MiB) and keeps later buffers in its heaps,
/// where fragmentation holds them: the memory-bound test peaked at 739 MiB that way,
/// at 204 MiB with a fixed threshold, and at 497 MiB with mimalloc. Blocks under 1 MiB
/// (a thumbnail's buffers, a small source) stay in the heaps, which keep up to 4 MiB
/// free at their top rather than hand it back and fault it in again on the next
/// request (see DECISIONS.md, "The allocator").
fn tune_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1024 * 1024);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 4 * 1024 * 1024);
        libc::mallopt(libc::M_ARENA_MAX, 4);
    }
}

fn run_serve(args: Serve) -> Result<(), String> {
    let settings = args
        .common
        .settings(Overrides {
            listen: args.listen,
            store: args.store,
            public_url: args.public_url,
            transform_workers: args.transform_workers,
            ..Overrides::default()
        })
        .map_err(|e| e.to_string())?;
    // One single-threaded runtime per core, pinned there, each serving the connections
    // that arrive on its core (see `progimage::http::steer`; DECISIONS, "One runtime per
    // core"). Transform jobs run on the shared worker threads (`progimage::workers`),
    // each holding a core of its own while it runs (`progimage::cores`); probes and
    // store reads go to the runtimes' blocking pools.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let usable = CpuSet::current().ok();
    // Pinned only with a runtime for every usable core: under a CPU quota smaller than
    // the set, the scheduler places the threads.
    let cpus = usable
        .map(|set| set.cpus())
        .filter(|cpus| cpus.len() == threads)
        .unwrap_or_default();
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let mut other_runtimes = Vec::with_capacity(threads - 1);
    let mut other_threads = Vec::with_capacity(threads - 1);
    for index in 1..threads {
        let runtime = current_thread_runtime(usable)?;
        let cpu = cpus.get(index).copied();
        other_runtimes.push(runtime.handle().clone());
        let mut stopping = stopping.clone();
        let thread = std::thread::Builder::new()
            .name("progimage-serve".to_string())
            .spawn(move || {
                pin(cpu);
                runtime.block_on(async move {
                    let _ = stopping.wait_for(|stop| *stop).await;
                });
                // Connections still open after the grace period are dropped with it.
            })
            .map_err(|e| e.to_string())?;
        other_threads.push(thread);
    }
    // Kept until the other threads are joined: their last requests may use store
    // connections whose tasks live on this runtime.
    pin(cpus.first().copied());
    let runtime = current_thread_runtime(usable)?;
    let served = runtime.block_on(async {
        let store = Store::open(&settings.store, &settings.s3).map_err(|e| e.to_string())?;
        let listener = tokio::net::TcpListener::bind(settings.listen)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", settings.listen))?;
        tracing::info!(
            listen = %listener.local_addr().map_err(|e| e.to_string())?,
            store = %settings.store,
            threads,
            pinned = !cpus.is_empty(),
            avif_encoder = %progimage::engine::encode::avif::encoder_name(),
            "progimage is serving"
        );
        let service = Service::new(&settings, store).map_err(|e| e.to_string())?;
        let service = match usable.filter(|_| !cpus.is_empty()) {
            Some(usable) => service.pin_jobs_to(CoreSlots::new(cpus.clone(), usable)),
            None => service,
        };
        let app = Arc::new(App::new(&settings, service).map_err(|e| e.to_string())?);
        serve_on(
            &other_runtimes,
            &cpus,
            listener,
            app,
            &settings,
            shutdown_signal(),
        )
        .await
        .map_err(|e| e.to_string())
    });
    let _ = stop.send(true);
    for thread in other_threads {
        let _ = thread.join();
    }
    served
}

/// Keeps the calling thread on `cpu`, if given.
fn pin(cpu: Option<usize>) {
    if let Some(cpu) = cpu {
        if let Err(err) = CpuSet::only(cpu).apply() {
            tracing::warn!(cpu, error = %err, "could not pin a serving thread");
        }
    }
}

/// A runtime for one serving thread. Its blocking-pool threads get back all of
/// `usable`, not the pinned thread's one core they would inherit.
fn current_thread_runtime(usable: Option<CpuSet>) -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .on_thread_start(move || {
            if let Some(Err(err)) = usable.map(|set| set.apply()) {
                tracing::warn!(error = %err, "could not unpin a blocking thread");
            }
        })
        .build()
        .map_err(|e| e.to_string())
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
    tracing::info!("shutting down: finishing in-flight requests");
}

fn run_sign(args: Sign) -> Result<(), String> {
    let settings = args
        .common
        .settings(Overrides::default())
        .map_err(|e| e.to_string())?;
    if settings.access.signing_key.is_empty() {
        return Err(
            "no signing key: set access.signing_key, PROGIMAGE_SIGNING_KEY or --signing-key".into(),
        );
    }
    let signer = progimage::signing::Signer::new(&settings.access.signing_key);
    let path = if args.path.starts_with('/') {
        args.path
    } else {
        format!("/{}", args.path)
    };
    println!(
        "{}{}",
        settings.public_url.trim_end_matches('/'),
        signer.signed_url(&path)
    );
    Ok(())
}

fn run_migrate(args: Migrate) -> Result<(), String> {
    let settings = args
        .common
        .settings(Overrides::default())
        .map_err(|e| e.to_string())?;
    let from = Store::open(&args.from, &settings.s3).map_err(|e| e.to_string())?;
    let to = Store::open(&args.to, &settings.s3).map_err(|e| e.to_string())?;
    let progress = indicatif::ProgressBar::new(0).with_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} objects, {eta} left")
            .expect("valid template"),
    );
    let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    let summary = runtime
        .block_on(progimage::migrate::migrate(&from, &to, &progress))
        .map_err(|e| e.to_string())?;
    println!("{summary}");
    if summary.failed > 0 {
        return Err(format!(
            "{} objects were not copied; run the same command again to retry them",
            summary.failed
        ));
    }
    Ok(())
}

fn run_transform(args: Transform) -> Result<(), String> {
    let settings = args
        .common
        .settings(Overrides::default())
        .map_err(|e| e.to_string())?;
    let mut query = Vec::new();
    for param in &args.params {
        let (key, value) = param
            .split_once('=')
            .ok_or_else(|| format!("--param takes key=value, not '{param}'"))?;
        query.push((key.to_string(), value.to_string()));
    }
    let presets = Presets::new(&settings.presets).map_err(|e| e.to_string())?;
    let engine = Engine::new(settings.limits, presets);
    let mut spec = engine
        .spec(&args.name, &query, None)
        .map_err(|e| e.to_string())?;
    // An image result takes its format from the output's extension unless format= says.
    let makes_image = matches!(spec.output_format(Format::Png), OutputFormat::Image(_));
    let extension = args
        .output
        .extension()
        .and_then(|e| e.to_str())
        .and_then(Format::from_name);
    if let Some(format) =
        extension.filter(|_| makes_image && !query.iter().any(|(k, _)| k == "format"))
    {
        query.push(("format".to_string(), format.name().to_string()));
        spec = engine
            .spec(&args.name, &query, None)
            .map_err(|e| e.to_string())?;
    }
    let input = std::fs::read(&args.input)
        .map_err(|e| format!("cannot read {}: {e}", args.input.display()))?;
    let rendered = engine.render(&input, &spec).map_err(|e| e.to_string())?;
    std::fs::write(&args.output, &rendered.bytes)
        .map_err(|e| format!("cannot write {}: {e}", args.output.display()))?;
    eprintln!(
        "wrote {} ({}, {} bytes)",
        args.output.display(),
        rendered.content_type,
        rendered.bytes.len()
    );
    Ok(())
}
