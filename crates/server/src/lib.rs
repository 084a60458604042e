//! Cove's control plane: opens a workspace and wires its parts together (the state store in
//! `cove-store`, datastores in `cove-datastore`, the workspace's rules in `cove-workspace`, compute
//! backends in `cove-compute`, the job lifecycle in `cove-jobs`, the HTTP surface in `cove-http`).
//!
//! Entry point: [`start`] opens (or creates) a workspace under a directory, resumes its unfinished
//! jobs, and serves the API on a listener. It does not run user code: that is the worker's job, in
//! processes the compute backend starts.

use anyhow::Context;
use cove_datastore as datastore;
use cove_http::App;
use cove_jobs::Control;
use cove_workspace::{
    credential_source, ensure_worker_credential, read_datastore_secret, write_secret, DEFAULT_DATASTORE,
    DEFAULT_LISTEN, LOCAL_COMPUTE,
};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};

pub use cove_datastore::{normalise, parse_uri, DataPath};
pub use cove_http::modelcheck;
pub use cove_jobs::copy_parts;
pub use cove_store as store;
pub use cove_workspace::{layout, netpolicy, tls, EnvironmentSettings, ServerConfig};

/// A running control plane.
pub struct Running {
    pub url: String,
    pub addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    served: tokio::task::JoinHandle<anyhow::Result<()>>,
    control: Arc<Control>,
    /// The workspace's lock, held while this control plane runs.
    _lock: std::fs::File,
}

impl Running {
    /// Stops in order: grants no more leases and waits (up to the shutdown grace) for workers to report
    /// what they hold, ends the leases still open without charging their mini-batches, then stops
    /// serving, waits for in-flight requests and stops the workers this control plane started.
    pub async fn stop(self) -> anyhow::Result<()> {
        cove_jobs::drain(&self.control, self.control.config.shutdown_grace).await;
        let _ = self.shutdown.send(true);
        self.served.await.context("server task panicked")?
    }

    /// Serves until the process is asked to stop (SIGINT or SIGTERM).
    pub async fn wait_for_signal(self) -> anyhow::Result<()> {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        self.stop().await
    }
}

/// Records who holds the locations of registered models, deployments' code and jobs' outputs that a
/// workspace created before locations were recorded does not know yet (a no-op afterwards), so the
/// ownership rules hold for them too.
fn record_owned_locations(store: &store::Store) -> anyhow::Result<()> {
    use store::{Location, LocationKind};
    store.call_now(|c| {
        // Every path that registers or reserves a location records it, so a workspace that has any
        // record has them all: only one with none needs this look through everything.
        if store::locations_recorded(c)? {
            return Ok(());
        }
        let mut claims: Vec<Location> = Vec::new();
        let mut claim = |uri: &str, kind: LocationKind, owner: String, endpoint: Option<String>| {
            if let Ok(at) = datastore::parse_uri(uri) {
                if !at.path.is_empty() {
                    claims.push(Location { datastore: at.datastore, path: at.path, kind, owner, endpoint });
                }
            }
        };
        for m in store::model_list(c, None)? {
            claim(&m.path, LocationKind::Asset, format!("model `{}` version {}", m.name, m.version), None);
        }
        for ep in store::endpoint_list(c)? {
            for d in store::deployment_list(c, &ep.spec.name)? {
                if let Some(code) = &d.code_uri {
                    let owner = format!("the code of deployment `{}/{}`", d.endpoint_name, d.name);
                    claim(code, LocationKind::Asset, owner, None);
                }
            }
        }
        for j in store::job_list(c, None, None, u32::MAX)? {
            claim(&j.record.output_uri, LocationKind::Output, j.name.clone(), Some(j.endpoint.clone()));
        }
        for l in &claims {
            store::location_claim(c, l)?;
        }
        Ok(())
    })?;
    Ok(())
}

/// Takes the workspace for this control plane: one workspace has one control plane, and a second
/// `cove up` on it is refused, naming the one that runs. The lock ends with the process.
fn lock_workspace(dir: &Path) -> anyhow::Result<std::fs::File> {
    let path = layout::lock_file(dir);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("failed to open {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => {
            let holder = std::fs::read_to_string(&path).unwrap_or_default();
            let holder = if holder.trim().is_empty() { "starting".to_string() } else { holder.trim().to_string() };
            anyhow::bail!(
                "workspace {} is already served by a running control plane ({holder}); stop it first, or use another --dir",
                dir.display()
            )
        }
        Err(std::fs::TryLockError::Error(e)) => Err(e).with_context(|| format!("failed to lock {}", path.display())),
    }
}

/// Opens the workspace and starts serving. The first start creates the state store, the default
/// datastore, the `local` compute cluster and the owner token (mode 0600).
pub async fn start(config: ServerConfig) -> anyhow::Result<Running> {
    // Probed once, off the way of the first job: the workers started on this host then skip their own
    // probe (`cove_compute::local`).
    tokio::task::spawn_blocking(cove_common::sandbox_probe::available);
    let opened = {
        let config = config.clone();
        tokio::task::spawn_blocking(move || open_workspace(&config)).await??
    };
    let tcp = bind_listeners(&config, &opened.policy).await?;
    let listeners: Vec<SocketAddr> = tcp.iter().map(|l| l.local_addr()).collect::<Result<_, _>>()?;
    let (addr, url) = (listeners[0], format!("https://{}", listeners[0]));
    let Opened { mut lock, store, policy, datastores, internal, assemblies, package_source } = opened;
    let (workspace_tls, worker_credential, lock, store, policy) = {
        let (dir, url, listeners) = (config.dir.clone(), url.clone(), listeners.clone());
        tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            let workspace_tls = cove_workspace::tls::prepare(&dir, &policy, &listeners)?;
            ensure_worker_credential(&store, &workspace_tls.authority, &dir, LOCAL_COMPUTE)?;
            let credential = credential_source(&store, &workspace_tls.authority, &dir, LOCAL_COMPUTE);
            register_computes(&store, &policy)?;
            announce(&mut lock, &dir, &url)?;
            Ok((workspace_tls, credential, lock, store, policy))
        })
        .await??
    };
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (compute, lost_jobs) = cove_compute::LocalCompute::new(
        config.worker_exe.clone(),
        url.clone(),
        worker_credential,
        layout::compute_dir(&config.dir, LOCAL_COMPUTE),
        LOCAL_COMPUTE,
        policy.computes.iter().find(|c| c.kind == "local").map_or(8, |c| c.max_instances),
    );
    let control = Arc::new(Control {
        config,
        store,
        datastores,
        internal,
        assemblies,
        work_available: Notify::new(),
        job_events: Notify::new(),
        leases_changed: Notify::new(),
        compute,
        clusters: Default::default(),
        followed: Default::default(),
        url: url.clone(),
        policy,
        tls: workspace_tls,
        shutdown: shutdown_rx.clone(),
        draining: Default::default(),
        metrics: Default::default(),
    });
    let app = Arc::new(App::new(control.clone(), listeners, package_source));
    resume(&app, lost_jobs).await?;
    let served = tokio::spawn(serve(app, tcp, shutdown_rx));
    Ok(Running { url, addr, shutdown: shutdown_tx, served, control, _lock: lock })
}

/// What a start prepares before anything listens.
struct Opened {
    lock: std::fs::File,
    store: store::Store,
    policy: netpolicy::NetworkPolicy,
    datastores: datastore::Datastores,
    internal: Arc<dyn object_store::ObjectStore>,
    assemblies: cove_jobs::assembly::Assemblies,
    package_source: Option<cove_api::worker::PackageSource>,
}

/// Takes the workspace folder for this process and opens what it holds. Blocking.
fn open_workspace(config: &ServerConfig) -> anyhow::Result<Opened> {
    let dir = &config.dir;
    make_private(dir)?;
    let lock = lock_workspace(dir)?;
    let store = store::Store::open(&layout::state_db(dir)).context("failed to open the state store")?;
    if let Some(owner_token) = init_workspace(&store, dir)? {
        write_secret(&layout::owner_token(dir), &owner_token)?;
    }
    record_owned_locations(&store)?;
    let policy = read_policy(config)?;
    let datastores = open_datastores(&store, &policy, dir)?;
    let internal = datastore::local_store(&layout::internal_objects(dir))?;
    let assemblies = cove_jobs::assembly::Assemblies::open(layout::assemblies(dir))
        .with_context(|| format!("failed to prepare {}", layout::assemblies(dir).display()))?;
    let package_source =
        cove_http::environment_builds::package_source(&config.environments, &policy).map_err(anyhow::Error::msg)?;
    Ok(Opened { lock, store, policy, datastores, internal, assemblies, package_source })
}

/// The workspace is its owner's alone on this host too: everything this process and the workers it
/// starts create is readable only by the owner, and the folder itself admits nobody else (which also
/// closes a workspace created before this rule).
fn make_private(dir: &Path) -> anyhow::Result<()> {
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    std::fs::create_dir_all(dir.join("state"))
        .with_context(|| format!("failed to create workspace directory {}", dir.display()))?;
    for private in [dir.to_path_buf(), dir.join("state")] {
        std::fs::set_permissions(&private, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .with_context(|| format!("failed to make {} private", private.display()))?;
    }
    Ok(())
}

/// The workspace's network configuration, or loopback only when it has none.
fn read_policy(config: &ServerConfig) -> anyhow::Result<netpolicy::NetworkPolicy> {
    match &config.network_config {
        Some(file) => {
            let text = std::fs::read_to_string(file).with_context(|| format!("failed to read {}", file.display()))?;
            netpolicy::NetworkPolicy::parse(&file.display().to_string(), &text).map_err(anyhow::Error::msg)
        }
        None => netpolicy::NetworkPolicy::loopback(config.listen.unwrap_or(DEFAULT_LISTEN.parse().expect("valid")))
            .map_err(anyhow::Error::msg),
    }
}

/// Every datastore of the workspace by name, each network one through its private endpoint.
fn open_datastores(
    store: &store::Store,
    policy: &netpolicy::NetworkPolicy,
    dir: &Path,
) -> anyhow::Result<datastore::Datastores> {
    let datastores = datastore::Datastores::new(DEFAULT_DATASTORE);
    for ds in store.call_now(|c| store::datastore_list(c))? {
        let service = format!("datastore:{}", ds.name);
        if ds.kind != "local"
            && !policy.public_network_access
            && !policy.private_endpoints.iter().any(|p| p.service == service)
        {
            // Checked when it was created, and again at every start: a configuration that no longer
            // declares its private endpoint leaves it closed rather than reached some other way.
            tracing::warn!(datastore = %ds.name, "left closed: no private endpoint declares it");
            datastores.close(
                &ds.name,
                format!(
                    "the workspace configuration declares no private endpoint for it (service: {service}), and a private workspace reaches datastores only through one"
                ),
            );
            continue;
        }
        let ca = || policy.endpoint_ca(&service).map_err(anyhow::Error::msg);
        match (ds.kind.as_str(), &ds.endpoint) {
            ("s3", Some(endpoint)) => {
                let secret: datastore::S3Secret = read_datastore_secret(dir, &ds.name)?;
                let bucket = ds.root.trim_start_matches("s3://");
                datastores.add_s3(&ds.name, endpoint, bucket, &secret, ca()?.as_deref()).map_err(anyhow::Error::msg)?;
            }
            ("azure_blob" | "azure_data_lake_gen2", _) => {
                let secret: datastore::AzureSecret = read_datastore_secret(dir, &ds.name)?;
                datastores.add_azure(&ds.name, &secret, ca()?.as_deref()).map_err(anyhow::Error::msg)?;
            }
            ("gcs", _) => {
                let secret: datastore::GcsSecret = read_datastore_secret(dir, &ds.name)?;
                datastores.add_gcs(&ds.name, &secret, ca()?.as_deref()).map_err(anyhow::Error::msg)?;
            }
            _ => datastores
                .add_local(&ds.name, Path::new(&ds.root))
                .with_context(|| format!("failed to open datastore {}", ds.name))?,
        }
    }
    Ok(datastores)
}

/// Listens on the API's private endpoints (and on `--listen`, which a private workspace allows only
/// as one of them).
async fn bind_listeners(config: &ServerConfig, policy: &netpolicy::NetworkPolicy) -> anyhow::Result<Vec<TcpListener>> {
    let mut addresses: Vec<SocketAddr> = policy.api_endpoints().iter().map(|p| p.address).collect();
    if let Some(listen) = config.listen {
        if !addresses.contains(&listen) {
            if !policy.public_network_access {
                anyhow::bail!(
                    "--listen {listen}: a private workspace listens only on its API private endpoints ({})",
                    addresses.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", ")
                );
            }
            addresses.push(listen);
        }
    }
    let mut tcp = Vec::new();
    for a in &addresses {
        tcp.push(TcpListener::bind(a).await.with_context(|| format!("failed to listen on {a}"))?);
    }
    Ok(tcp)
}

/// Records the computes the network configuration declares.
fn register_computes(store: &store::Store, policy: &netpolicy::NetworkPolicy) -> anyhow::Result<()> {
    store.call_now(|c| {
        for comp in &policy.computes {
            store::compute_upsert(
                c,
                &cove_api::Compute {
                    name: comp.name.clone(),
                    kind: comp.kind.clone(),
                    max_instances: comp.max_instances,
                    slurm: None,
                    aml: None,
                },
            )?;
        }
        Ok(())
    })?;
    Ok(())
}

/// Says where this control plane serves: in the URL file for `--workspace DIR` clients, and in the
/// lock file for a second `cove up` to name.
fn announce(lock: &mut std::fs::File, dir: &Path, url: &str) -> anyhow::Result<()> {
    use std::io::{Seek, Write};
    std::fs::write(layout::url_file(dir), url)?;
    lock.set_len(0)?;
    lock.rewind()?;
    write!(lock, "pid {}, serving {url}", std::process::id())?;
    Ok(())
}

/// Takes up where the last run stopped: collects unused environment builds, fails the jobs whose
/// workers are lost, resumes unfinished jobs, starts the lease reaper, and summarises refusals a killed
/// run counted.
async fn resume(
    app: &Arc<App>,
    mut lost_jobs: tokio::sync::mpsc::UnboundedReceiver<(String, String)>,
) -> anyhow::Result<()> {
    cove_http::environment_builds::collect_unused(app).await;
    let control = app.control.clone();
    tokio::spawn(async move {
        while let Some((job, reason)) = lost_jobs.recv().await {
            cove_jobs::fail_lost(&control, job, reason).await;
        }
    });
    cove_jobs::resume_all(&app.control).await?;
    tokio::spawn(cove_jobs::reap_expired_leases(app.control.clone()));
    let recovered = app.store.call(|c| store::refusal_counts_close(c, None)).await?;
    if recovered > 0 {
        tracing::warn!(recovered, "wrote the counts of refusals an earlier run kept and did not summarise");
    }
    tokio::spawn(cove_http::guard::write_counted_refusals(app.clone()));
    Ok(())
}

/// Serves every listener until shutdown, then writes what was counted and stops the workers.
async fn serve(app: Arc<App>, tcp: Vec<TcpListener>, shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    let router = cove_http::router(app.clone());
    let mut servers = tokio::task::JoinSet::new();
    for listener in tcp {
        servers.spawn(cove_http::guard::serve(listener, app.clone(), router.clone(), shutdown.clone()));
    }
    while let Some(done) = servers.join_next().await {
        done.context("server task panicked")?.context("server failed")?;
    }
    // What was counted and not yet written goes in before the control plane stops.
    cove_http::guard::close_refusal_window(&app).await;
    app.compute.stop_all().await;
    let clusters: Vec<cove_compute::LocalCompute> =
        app.clusters.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect();
    for cluster in clusters {
        cluster.stop_all().await;
    }
    Ok(())
}

/// Creates the workspace's first resources on its first start; returns the new owner token then.
fn init_workspace(store: &store::Store, dir: &Path) -> anyhow::Result<Option<String>> {
    let root = layout::datastore(dir, DEFAULT_DATASTORE);
    store
        .call_now(|c| {
            if store::meta_get(c, "created")?.is_some() {
                return Ok(None);
            }
            let tx = c.transaction()?;
            store::datastore_upsert(
                &tx,
                &cove_api::Datastore {
                    name: DEFAULT_DATASTORE.into(),
                    kind: "local".into(),
                    root: root.display().to_string(),
                    endpoint: None,
                },
            )?;
            let (_, secret) =
                store::auth::mint(&tx, store::auth::TokenKind::User, store::auth::Role::Owner, None, None, None)?;
            store::meta_set(&tx, "created", &store::now_ms().to_string())?;
            tx.commit()?;
            Ok(Some(secret))
        })
        .context("failed to initialise the workspace")
}
