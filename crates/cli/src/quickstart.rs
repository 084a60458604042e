//! `cove quickstart`: the main job on the embedded default. It starts a throwaway workspace, deploys the
//! bundled example (a small ONNX classifier, deployed with no scoring script, so no Python is
//! involved) behind a batch endpoint, invokes it on the bundled sample data, streams the job, and says
//! where the predictions are. Everything it needs is compiled in.

use crate::{jobs, resources, Output};
use anyhow::Context;
use cove_api::exit_code;
use std::path::PathBuf;

/// The example's files, relative to its folder.
const EXAMPLE: &[(&str, &str)] = &[
    ("endpoint.yml", include_str!("../../../examples/quickstart/endpoint.yml")),
    ("deployment.yml", include_str!("../../../examples/quickstart/deployment.yml")),
    ("data/patients-000.csv", include_str!("../../../examples/quickstart/data/patients-000.csv")),
    ("data/patients-001.csv", include_str!("../../../examples/quickstart/data/patients-001.csv")),
    ("data/patients-002.csv", include_str!("../../../examples/quickstart/data/patients-002.csv")),
    ("data/patients-003.csv", include_str!("../../../examples/quickstart/data/patients-003.csv")),
    ("data/patients-004.csv", include_str!("../../../examples/quickstart/data/patients-004.csv")),
    ("data/patients-005.csv", include_str!("../../../examples/quickstart/data/patients-005.csv")),
    ("data/patients-006.csv", include_str!("../../../examples/quickstart/data/patients-006.csv")),
    ("data/patients-007.csv", include_str!("../../../examples/quickstart/data/patients-007.csv")),
    ("data/patients-008.csv", include_str!("../../../examples/quickstart/data/patients-008.csv")),
    ("data/patients-009.csv", include_str!("../../../examples/quickstart/data/patients-009.csv")),
];

/// The model, written by `cargo run -p cove-onnx --example quickstart_model`.
const MODEL: (&str, &[u8]) =
    ("model/heart-risk.onnx", include_bytes!("../../../examples/quickstart/model/heart-risk.onnx"));

pub async fn run(dir: Option<PathBuf>, out: Output) -> anyhow::Result<i32> {
    let dir =
        dir.unwrap_or_else(|| std::env::temp_dir().join(format!("cove-quickstart-{}", uuid::Uuid::new_v4().simple())));
    let example = dir.join("example");
    for (rel, text) in EXAMPLE {
        let path = example.join(rel);
        std::fs::create_dir_all(path.parent().expect("files sit in folders"))?;
        std::fs::write(&path, text).with_context(|| format!("failed to write {}", path.display()))?;
    }
    std::fs::create_dir_all(example.join("model"))?;
    std::fs::write(example.join(MODEL.0), MODEL.1)?;
    let workspace = dir.join("workspace");
    eprintln!("Starting a workspace in {}", workspace.display());
    let running = cove_server::start(cove_server::ServerConfig {
        dir: workspace.clone(),
        listen: Some("127.0.0.1:0".parse().expect("a valid address")),
        network_config: None,
        python: "python3".into(),
        worker_exe: std::env::current_exe()?,
        sandbox: cove_api::worker::SandboxMode::Namespaces,
        environments: Default::default(),
        shutdown_grace: std::time::Duration::from_secs(30),
    })
    .await?;
    let token = std::fs::read_to_string(cove_server::layout::owner_token(&workspace))?;
    let trust = crate::connect::tls(&cove_server::tls::files::trust(&workspace))?;
    let client = cove_api::Client::new(&running.url, token.trim(), trust);
    let result = async {
        resources::endpoint_create(&client, &example.join("endpoint.yml"), None, out).await?;
        let args = resources::DeploymentCreate {
            file: example.join("deployment.yml"),
            endpoint_name: None,
            name: None,
            set_default: true,
            skip_script_validation: false,
        };
        resources::deployment_create(&client, args, out).await?;
        let args = jobs::InvokeArgs {
            endpoint: Some("heart-risk".into()),
            endpoint_flag: None,
            input: Some(example.join("data").display().to_string()),
            file: None,
            inputs: None,
            outputs: None,
            input_type: None,
            deployment_name: None,
            output_path: None,
            mini_batch_size: None,
            instance_count: None,
            job_name: None,
            sets: Vec::new(),
            stream: true,
        };
        jobs::invoke(&client, args, out).await
    }
    .await;
    running.stop().await?;
    let job = result?;
    let predictions = cove_server::parse_uri(&job.output_uri).ok().map(|p| {
        workspace
            .join("datastores")
            .join(&p.datastore)
            .join(&p.path)
            .join(job.output_file_name.as_deref().unwrap_or(""))
    });
    if !out.json {
        println!();
        println!("Job {} {}", job.name, job.status);
        println!("Output: {}/{}", job.output_uri, job.output_file_name.as_deref().unwrap_or(""));
        if let Some(p) = predictions.filter(|p| p.is_file()) {
            println!("Predictions on disk: {}", p.display());
            let text = std::fs::read_to_string(&p)?;
            println!("First lines (row in file, label, probability of 0, probability of 1, file):");
            for line in text.lines().take(5) {
                println!("  {line}");
            }
        }
        println!("Workspace kept in {}; to look around, serve it again and ask:", workspace.display());
        println!("  cove up --dir {} &", workspace.display());
        println!("  cove --workspace {} job show {}", workspace.display(), job.name);
    }
    Ok(if job.status == cove_model::JobStatus::Completed { exit_code::OK } else { exit_code::JOB_FAILED })
}
