//! Coming from Azure ML: the reference's own documented YAML shapes, written out here, run unchanged.

use crate::support::{Workspace, LIST_SCRIPT};

/// The reference's compute YAML (`type: amlcompute`).
const AML_COMPUTE: &str = "\
$schema: https://azuremlschemas.azureedge.net/latest/amlCompute.schema.json
name: batch-cluster
type: amlcompute
size: STANDARD_DS3_v2
min_instances: 0
max_instances: 2
idle_time_before_scale_down: 120
";

/// A batch deployment as the reference's examples write it, on their named cluster.
const DEPLOYMENT: &str = "\
$schema: https://azuremlschemas.azureedge.net/latest/modelBatchDeployment.schema.json
name: mnist-torch-dpl
description: A deployment using Torch to solve the MNIST classification dataset.
endpoint_name: mnist-batch
type: model
model:
  name: mnist-classifier-torch
  path: model
code_configuration:
  code: code
  scoring_script: batch_driver.py
compute: azureml:batch-cluster
resources:
  instance_count: 2
settings:
  max_concurrency_per_instance: 1
  mini_batch_size: 2
  output_action: append_row
  output_file_name: predictions.csv
  retry_settings:
    max_retries: 3
    timeout: 30
  error_threshold: -1
  logging_level: info
";

/// `compute: azureml:batch-cluster` runs once the reference's compute YAML created the cluster: a named
/// cluster of workers on this host, with its own limits and node names; an unknown cluster's error
/// says how to create one; a cluster in use cannot be deleted.
#[test]
fn a_named_amlcompute_cluster_runs_the_reference_deployment_unchanged() {
    let ws = Workspace::start();
    let root = ws.dir.path().join("mnist");
    for dir in ["code", "model", "data"] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
    }
    std::fs::write(root.join("code/batch_driver.py"), LIST_SCRIPT).unwrap();
    std::fs::write(root.join("model/weights.txt"), "2\n").unwrap();
    for i in 0..6 {
        std::fs::write(root.join(format!("data/file-{i:03}.txt")), format!("{i}\n")).unwrap();
    }
    std::fs::write(root.join("endpoint.yml"), "$schema: https://azuremlschemas.azureedge.net/latest/batchEndpoint.schema.json\nname: mnist-batch\ndescription: A batch endpoint for MNIST.\n").unwrap();
    std::fs::write(root.join("deployment.yml"), DEPLOYMENT).unwrap();
    std::fs::write(root.join("compute.yml"), AML_COMPUTE).unwrap();
    let file = |f: &str| root.join(f).display().to_string();
    ws.cove(&["endpoint", "create", "-f", &file("endpoint.yml")]).ok();
    ws.cove(&["deployment", "create", "-f", &file("deployment.yml"), "--set-default"]).fails_with(
        2,
        "compute: `batch-cluster` does not exist (known: local); create it first: cove compute create -f compute.yml, \
         with the reference's `type: amlcompute` YAML",
    );
    ws.cove(&["compute", "create", "-f", &file("compute.yml")]).ok();
    let shown = ws.cove(&["compute", "show", "-n", "batch-cluster"]);
    assert!(shown.ok().stdout.contains("Size:           STANDARD_DS3_v2"), "{}", shown.stdout);
    assert!(shown.stdout.contains("Max instances:  2"), "{}", shown.stdout);
    ws.cove(&["deployment", "create", "-f", &file("deployment.yml"), "--set-default"]).ok();

    let run = ws.cove(&["--json", "endpoint", "invoke", "mnist-batch", "--input", &file("data")]);
    let job = ws.wait_job(run.ok().json()["name"].as_str().unwrap());
    assert_eq!(job["status"], "Completed", "{job:#}");
    assert_eq!(job["compute"], "batch-cluster");
    assert_eq!(ws.output_lines(&job).len(), 6);
    let nodes: std::collections::BTreeSet<String> =
        job["attempts"].as_array().unwrap().iter().map(|a| a["node"].as_str().unwrap().to_string()).collect();
    assert!(nodes.iter().all(|n| n.starts_with("batch-cluster-")), "{nodes:?}");
    // More instances than the cluster allows are refused per job too.
    ws.cove(&["endpoint", "invoke", "mnist-batch", "--input", &file("data"), "--instance-count", "3"])
        .fails_with(2, "instance_count: 3 is more than compute `batch-cluster` allows (2)");

    ws.cove(&["compute", "delete", "-n", "batch-cluster"])
        .fails_with(2, "compute `batch-cluster` is in use: deployments use it: mnist-batch/mnist-torch-dpl");
    ws.cove(&["endpoint", "delete", "mnist-batch", "--yes"]).ok();
    ws.cove(&["compute", "delete", "-n", "batch-cluster"]).ok();
    ws.cove(&["compute", "show", "-n", "batch-cluster"]).fails_with(5, "compute `batch-cluster` does not exist");

    // A type Cove does not run is refused, naming the ones it does.
    std::fs::write(root.join("k8s.yml"), "name: aks\ntype: kubernetes\n").unwrap();
    ws.cove(&["compute", "create", "-f", &file("k8s.yml")]).fails_with(
        2,
        "type: `kubernetes` is not a compute type Cove runs (amlcompute: a cluster of workers on this host; slurm)",
    );
}
