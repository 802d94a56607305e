//! `sluice run`: runs a configuration until SIGINT or SIGTERM, reloading it on SIGHUP,
//! `POST /reload` (what `sluice reload` sends) or, with `--watch`, when the file changes.
//!
//! A reload loads and checks the whole new config first: an invalid one leaves the running
//! pipelines untouched, and its errors go to the log and to `/status`.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use sluice_pipeline::Telemetry;
use sluice_pipeline::admin::{AdminServer, PipelineShape, ReloadRequest, ServiceInfo};
use sluice_pipeline::config::{Config, ConfigErrors};
use sluice_pipeline::graph::Plan;
use sluice_pipeline::service::Service;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::mpsc;

/// Loads and plans the configuration, now: called at start and on every reload.
pub type Loader = dyn Fn() -> Result<(Config, Plan), ConfigErrors> + Send + Sync;

/// How often `--watch` looks at the config file.
const WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// Runs until stopped. `config_text` gives the text of the config at a path, for its hash and
/// for noticing changes with `watch`.
pub fn run(load: Box<Loader>, watch: bool, config_text: fn(&Path) -> Vec<u8>) -> ExitCode {
    let (config, plan) = match load() {
        Ok(loaded) => loaded,
        Err(errors) => {
            eprintln!("{errors}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(serve(load, watch, config_text, config, plan))
}

fn pipeline_shapes(config: &Config) -> BTreeMap<String, PipelineShape> {
    config
        .pipelines
        .iter()
        .map(|(name, pipeline)| {
            (
                name.clone(),
                PipelineShape {
                    signal: pipeline.signal,
                    receivers: pipeline.receivers.clone(),
                    processors: pipeline.processors.clone(),
                    exporters: pipeline.exporters.clone(),
                },
            )
        })
        .collect()
}

/// What the running process was started or last reloaded with.
struct Running {
    config: Config,
    text: Vec<u8>,
    service: Service,
}

async fn serve(
    load: Box<Loader>,
    watch: bool,
    config_text: fn(&Path) -> Vec<u8>,
    config: Config,
    plan: Plan,
) -> ExitCode {
    let telemetry = Telemetry::new();
    let text = config_text(&config.file);
    let info = ServiceInfo::new(config.file.clone(), &text);
    info.loaded_config(config.file.clone(), &text, pipeline_shapes(&config));
    info.set_admin_token(config.service.admin_token.clone());
    let (reload_requests, mut reloads) = mpsc::channel::<ReloadRequest>(4);
    let admin = match config.service.admin {
        Some(address) => {
            match AdminServer::start(address, telemetry.clone(), info.clone(), reload_requests)
                .await
            {
                Ok(admin) => Some(admin),
                Err(e) => {
                    tracing::error!("{e}");
                    return ExitCode::FAILURE;
                }
            }
        }
        None => None,
    };
    let service = match Service::start(plan, &telemetry).await {
        Ok(service) => service,
        Err(e) => {
            tracing::error!("cannot start: {e}");
            if let Some(admin) = admin {
                admin.shutdown().await;
            }
            return ExitCode::FAILURE;
        }
    };
    info.set_ready(true);
    tracing::info!(config = %config.file.display(), watch, "sluice is running");
    let mut running = Running {
        config,
        text,
        service,
    };

    let mut shutdown = match ShutdownSignals::new() {
        Ok(signals) => signals,
        Err(e) => {
            tracing::error!("cannot listen for signals: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut watch_tick = tokio::time::interval(WATCH_INTERVAL);
    let stopped_by = loop {
        tokio::select! {
            _ = shutdown.interrupt.recv() => break "SIGINT",
            _ = shutdown.terminate.recv() => break "SIGTERM",
            _ = shutdown.hangup.recv() => {
                tracing::info!("SIGHUP: reloading the configuration");
                let _ = reload(&*load, &mut running, &info, config_text).await;
            }
            Some(request) = reloads.recv() => {
                tracing::info!("reload requested through the admin API");
                let _ = request.reply.send(reload(&*load, &mut running, &info, config_text).await);
            }
            _ = watch_tick.tick(), if watch => {
                let text = config_text(&running.config.file);
                if !text.is_empty() && text != running.text {
                    tracing::info!(config = %running.config.file.display(), "the configuration file changed: reloading");
                    // Not retried until the file changes again, even when refused.
                    running.text = text;
                    let _ = reload(&*load, &mut running, &info, config_text).await;
                }
            }
        }
    };
    info.set_ready(false);
    let timeout = running.config.service.shutdown_timeout;
    tracing::info!(signal = stopped_by, ?timeout, "shutting down");
    running.service.shutdown(Instant::now() + timeout).await;
    if let Some(admin) = admin {
        admin.shutdown().await;
    }
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

/// Loads the configuration again and applies it, or leaves everything as it is when the new
/// configuration is invalid or a component cannot start. Returns what changed, or why not.
async fn reload(
    load: &Loader,
    running: &mut Running,
    info: &ServiceInfo,
    config_text: fn(&Path) -> Vec<u8>,
) -> Result<String, String> {
    let (config, plan) = match load() {
        Ok(loaded) => loaded,
        Err(errors) => {
            let message = format!("the new configuration is invalid; nothing changed:\n{errors}");
            tracing::error!("{message}");
            info.reload_failed(&message);
            return Err(message);
        }
    };
    if config.service.admin != running.config.service.admin {
        tracing::warn!("service.admin changed: the admin server moves at the next start");
    }
    let deadline = Instant::now() + config.service.shutdown_timeout;
    match running.service.reload(plan, deadline).await {
        Ok(summary) => {
            let text = config_text(&config.file);
            info.loaded_config(config.file.clone(), &text, pipeline_shapes(&config));
            info.set_admin_token(config.service.admin_token.clone());
            let described = format!(
                "reloaded: started [{}], replaced [{}], removed [{}], kept [{}]",
                summary.started.join(", "),
                summary.replaced.join(", "),
                summary.removed.join(", "),
                summary.kept.join(", ")
            );
            tracing::info!("{described}");
            running.text = text;
            running.config = config;
            Ok(described)
        }
        Err(e) => {
            let message = format!("reload failed to start a component: {e}");
            tracing::error!("{message}");
            info.reload_failed(&message);
            Err(message)
        }
    }
}

/// SIGINT and SIGTERM stop the process; SIGHUP reloads it.
struct ShutdownSignals {
    interrupt: Signal,
    terminate: Signal,
    hangup: Signal,
}

impl ShutdownSignals {
    fn new() -> std::io::Result<ShutdownSignals> {
        Ok(ShutdownSignals {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
            hangup: signal(SignalKind::hangup())?,
        })
    }
}
