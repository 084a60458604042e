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

/// The reference's data asset YAML: registered with `cove data create -f`, versioned, shown, and taken
/// as a job's input by name (`azureml:NAME@latest`, `azureml:NAME:VERSION`) by any scope; its files never
/// change; the long datastore URI form works as an input.
#[test]
fn data_assets_are_registered_versioned_and_invoked_by_name() {
    let ws = Workspace::start();
    let p = crate::support::Project::new(ws.dir.path(), "heart", LIST_SCRIPT, "");
    p.deploy(&ws);
    let data = p.inputs(3);
    let yml = p.dir.join("data.yml");
    std::fs::write(
        &yml,
        "$schema: https://azuremlschemas.azureedge.net/latest/data.schema.json\nname: heart-data\n\
         description: Patient data for batch scoring\ntype: uri_folder\npath: data\n",
    )
    .unwrap();
    let yml = yml.display().to_string();
    let created = ws.cove(&["--json", "data", "create", "-f", &yml]).ok().json();
    assert_eq!((created["name"].clone(), created["version"].clone()), ("heart-data".into(), 1.into()), "{created}");
    assert_eq!(ws.cove(&["--json", "data", "create", "-f", &yml]).ok().json()["version"], 2);
    let listed = ws.cove(&["data", "list"]);
    assert_eq!(listed.ok().stdout.lines().filter(|l| l.starts_with("heart-data")).count(), 2, "{}", listed.stdout);
    assert!(ws.cove(&["data", "show", "-n", "heart-data"]).ok().stdout.contains("Version:      2"));
    let v1 = ws.cove(&["--json", "data", "show", "-n", "heart-data", "-v", "1"]).ok().json();
    assert_eq!(v1["type"], "uri_folder");

    for input in ["azureml:heart-data@latest", "azureml:heart-data:1", "azureml:heart-data"] {
        let run = ws.cove(&["--json", "endpoint", "invoke", "heart", "--input", input]);
        let job = ws.wait_job(run.ok().json()["name"].as_str().unwrap());
        assert_eq!(job["status"], "Completed", "{input}: {job:#}");
        assert_eq!(job["progress"]["files_total"], 3, "{input}");
    }
    // The long form of a datastore URI: its ids are ignored, its datastore and path used.
    let rel = v1["path"].as_str().unwrap().strip_prefix("azureml://datastores/workspaceblobstore/paths/").unwrap();
    let long = format!(
        "azureml://subscriptions/00000000-0000-0000-0000-000000000000/resourcegroups/rg/workspaces/ws/datastores/workspaceblobstore/paths/{rel}"
    );
    let run = ws.cove(&["--json", "endpoint", "invoke", "heart", "--input", &long]);
    assert_eq!(ws.wait_job(run.ok().json()["name"].as_str().unwrap())["status"], "Completed");

    ws.cove(&["endpoint", "invoke", "heart", "--input", "azureml:nope@latest"]).fails_with(
        5,
        "data asset `nope` (any version) does not exist (register it with cove data create -f data.yml)",
    );
    ws.cove(&["endpoint", "invoke", "heart", "--input", "azureml:heart-data@stable"])
        .fails_with(2, "the only label is @latest");
    ws.cove(&["data", "create", "-n", "bad", "-p", &data.join("file-000.txt").display().to_string()])
        .fails_with(2, "is a file; use type: uri_file");

    // Registered data never changes, and every scope may read it.
    let (status, body) =
        ws.http_bytes("PUT", &format!("/api/v1/datastores/workspaceblobstore/files/{rel}/planted.txt"), "x".into());
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("holds the registered files of data asset `heart-data` version 1"), "{body}");
    let (_, token) =
        ws.http("POST", "/api/v1/tokens", Some(serde_json::json!({"role": "invoker", "endpoint": "heart"})), &[]);
    let scoped = token["secret"].as_str().unwrap();
    let body = serde_json::json!({"input": {"uri": "azureml:heart-data@latest", "type": "uri_folder"}});
    let (status, job) = ws.http_as(scoped, "POST", "/endpoints/heart/jobs", Some(body), &[]);
    assert_eq!(status, 201, "{job}");
}

/// The command shapes `az ml` users type: `-n/--name` where it takes it, `endpoint list-jobs`, and an
/// endpoint delete that asks first (and, with nobody to ask, wants --yes).
#[test]
fn az_ml_command_shapes_work() {
    let ws = Workspace::start();
    let p = crate::support::Project::new(ws.dir.path(), "shapes", LIST_SCRIPT, "");
    p.deploy(&ws);
    let data = p.inputs(2).display().to_string();
    assert!(ws.cove(&["endpoint", "show", "-n", "shapes"]).ok().stdout.contains("shapes"));
    assert!(ws.cove(&["endpoint", "show", "--name", "shapes"]).ok().stdout.contains("shapes"));
    let run = ws.cove(&["--json", "endpoint", "invoke", "-n", "shapes", "--input", &data]);
    let job = run.ok().json()["name"].as_str().unwrap().to_string();
    assert_eq!(ws.cove(&["job", "stream", "-n", &job]).code, 0);
    assert!(ws.cove(&["job", "show", "--name", &job]).ok().stdout.contains("Status:       Completed"));
    let listed = ws.cove(&["endpoint", "list-jobs", "-n", "shapes"]);
    assert!(listed.ok().stdout.contains(&job), "{}", listed.stdout);
    let dl = ws.dir.path().join("dl");
    ws.cove(&["job", "download", "-n", &job, "--download-path", &dl.display().to_string()]).ok();
    assert!(dl.join("named-outputs/score/predictions.csv").is_file());
    ws.cove(&["job", "cancel", "-n", &job]).ok();
    ws.cove(&["endpoint", "show", "shapes", "-n", "other"]).fails_with(2, "cannot be used with");
    ws.cove(&["endpoint", "delete", "-n", "shapes"]).fails_with(2, "Nobody can answer here: add --yes");
    ws.cove(&["endpoint", "show", "-n", "shapes"]).ok();
    ws.cove(&["endpoint", "delete", "-n", "shapes", "--yes"]).ok();
    ws.cove(&["endpoint", "show", "-n", "shapes"]).fails_with(5, "does not exist");
}

/// The reference's model YAML: registered with `cove model create -f`, at the version it names or the
/// next; archived versions are never `latest`; a version a deployment uses cannot be deleted; a model
/// type Cove cannot run is refused when it is registered.
#[test]
fn models_are_registered_from_yaml_versioned_archived_and_deleted() {
    let ws = Workspace::start();
    let root = ws.dir.path().join("models");
    std::fs::create_dir_all(root.join("model")).unwrap();
    std::fs::write(root.join("model/weights.txt"), "2\n").unwrap();
    let yml = root.join("model.yml");
    std::fs::write(
        &yml,
        "$schema: https://azuremlschemas.azureedge.net/latest/model.schema.json\nname: heart-classifier\nversion: 3\n\
         path: model\ntype: custom_model\ndescription: A classifier of heart risk\ntags:\n  framework: sklearn\n",
    )
    .unwrap();
    let yml = yml.display().to_string();
    let created = ws.cove(&["--json", "model", "create", "-f", &yml]).ok().json();
    assert_eq!((created["version"].clone(), created["tags"]["framework"].clone()), (3.into(), "sklearn".into()));
    let again = ws.cove(&["model", "create", "-f", &yml]);
    assert_eq!(again.code, 2, "{}", again.stderr);
    assert!(again.stderr.contains("version: model `heart-classifier` version 3 exists already"), "{}", again.stderr);
    let model_dir = root.join("model").display().to_string();
    let next = ws.cove(&["--json", "model", "create", "-n", "heart-classifier", "-p", &model_dir]).ok().json();
    assert_eq!(next["version"], 4, "the next version after the highest");
    ws.cove(&["model", "archive", "-n", "heart-classifier", "-v", "4"]).ok();
    let latest = ws.cove(&["--json", "model", "show", "heart-classifier"]).ok().json();
    assert_eq!(latest["version"], 3, "an archived version is never latest: {latest}");
    ws.cove(&["model", "archive", "-n", "heart-classifier", "-v", "4", "--restore"]).ok();
    assert_eq!(ws.cove(&["--json", "model", "show", "heart-classifier"]).ok().json()["version"], 4);

    // A deployment of version 3 keeps it from being deleted.
    let p = crate::support::Project::new(ws.dir.path(), "hearts", LIST_SCRIPT, "");
    let dep = std::fs::read_to_string(p.dir.join("deployment.yml"))
        .unwrap()
        .replace("model:\n  name: hearts-model\n  path: model\n", "model: azureml:heart-classifier:3\n");
    std::fs::write(p.dir.join("deployment.yml"), dep).unwrap();
    p.deploy(&ws);
    ws.cove(&["model", "delete", "-n", "heart-classifier", "-v", "3"])
        .fails_with(2, "model `heart-classifier` version 3 is used by deployments hearts/blue");
    ws.cove(&["model", "delete", "-n", "heart-classifier", "-v", "4"]).ok();
    ws.cove(&["model", "show", "heart-classifier", "--version", "4"]).fails_with(5, "does not exist");

    let triton = root.join("triton.yml");
    std::fs::write(&triton, "name: ensemble\npath: model\ntype: triton_model\n").unwrap();
    ws.cove(&["model", "create", "-f", &triton.display().to_string()])
        .fails_with(2, "type: triton_model needs a Triton Inference Server, which Cove does not run");
}

/// `deployment create` again with the same inline model registers no new model version; a changed
/// model does; `deployment update` takes `-f` or `--set`.
#[test]
fn deployments_are_created_again_and_updated_as_the_reference_does() {
    let ws = Workspace::start();
    let p = crate::support::Project::new(ws.dir.path(), "again", LIST_SCRIPT, "");
    p.deploy(&ws);
    let versions =
        || ws.cove(&["--json", "model", "list", "--name", "again-model"]).ok().json().as_array().unwrap().len();
    assert_eq!(versions(), 1);
    let again = ws.cove(&["deployment", "create", "-f", &p.file("deployment.yml")]);
    assert!(again.ok().stdout.contains("Model: again-model:1"), "{}", again.stdout);
    assert_eq!(versions(), 1, "the same model files register no new version");
    std::fs::write(p.dir.join("model/weights.txt"), "3\n").unwrap();
    let changed = ws.cove(&["deployment", "update", "-f", &p.file("deployment.yml")]);
    assert!(changed.ok().stdout.contains("Model: again-model:2"), "{}", changed.stdout);
    assert_eq!(versions(), 2);

    ws.cove(&[
        "deployment",
        "update",
        "-n",
        "blue",
        "-e",
        "again",
        "--set",
        "mini_batch_size=7",
        "--set",
        "environment_variables.GREETING=hi",
        "--set",
        "description=tuned",
    ])
    .ok();
    let shown = ws.cove(&["--json", "deployment", "show", "blue", "-e", "again"]).ok().json();
    assert_eq!(shown["settings"]["mini_batch_size"], 7, "{shown:#}");
    assert_eq!(shown["settings"]["environment_variables"]["GREETING"], "hi");
    assert_eq!(shown["description"], "tuned");
    ws.cove(&["deployment", "update", "-n", "blue", "-e", "again", "--set", "settings.colour=red"])
        .fails_with(2, "set `settings.colour`: unknown setting");
    let run = ws.cove(&["--json", "endpoint", "invoke", "again", "--input", &p.inputs(7).display().to_string()]);
    let job = ws.wait_job(run.ok().json()["name"].as_str().unwrap());
    assert_eq!(job["progress"]["batches_total"], 1, "the updated mini_batch_size applies: {job:#}");
    assert_eq!(ws.output_lines(&job)[0], "file-000.txt 0", "the changed model (weight 3) scores: 0 * 3");
    assert_eq!(ws.output_lines(&job)[1], "file-001.txt 3");
}

/// `cove endpoint invoke --file inputs.yml`: the reference's named inputs and outputs.
#[test]
fn invocation_files_name_the_input_and_the_score_output() {
    let ws = Workspace::start();
    let p = crate::support::Project::new(ws.dir.path(), "named", LIST_SCRIPT, "");
    p.deploy(&ws);
    p.inputs(3);
    let write = |name: &str, text: &str| {
        let path = p.dir.join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let good = write(
        "inputs.yml",
        "inputs:\n  heart_dataset:\n    type: uri_folder\n    path: data\noutputs:\n  score:\n    type: uri_folder\n    \
         path: azureml://datastores/workspaceblobstore/paths/batch/named-out\n",
    );
    let run = ws.cove(&["--json", "endpoint", "invoke", "-n", "named", "--file", &good]);
    let job = ws.wait_job(run.ok().json()["name"].as_str().unwrap());
    assert_eq!(job["status"], "Completed", "{job:#}");
    assert_eq!(job["output_uri"], "azureml://datastores/workspaceblobstore/paths/batch/named-out");
    assert!(ws.path().join("datastores/workspaceblobstore/batch/named-out/predictions.csv").is_file());

    // The same as JSON, as the reference's CLI also takes them.
    let inputs = serde_json::json!({"heart": {"type": "uri_folder", "path": p.dir.join("data").display().to_string()}});
    let outputs =
        serde_json::json!({"score": {"path": "azureml://datastores/workspaceblobstore/paths/batch/json-out"}});
    let run = ws.cove(&[
        "--json",
        "endpoint",
        "invoke",
        "-n",
        "named",
        "--inputs",
        &inputs.to_string(),
        "--outputs",
        &outputs.to_string(),
    ]);
    let job = ws.wait_job(run.ok().json()["name"].as_str().unwrap());
    assert_eq!(job["output_uri"], "azureml://datastores/workspaceblobstore/paths/batch/json-out");
    assert_eq!(job["status"], "Completed", "{job:#}");

    let two = write("two.yml", "inputs:\n  a:\n    path: data\n  b:\n    path: data\n");
    ws.cove(&["endpoint", "invoke", "-n", "named", "--file", &two])
        .fails_with(2, "field `inputs`: a model deployment takes exactly one input, got `a`, `b`");
    let other = write("other.yml", "inputs:\n  a:\n    path: data\noutputs:\n  extra:\n    path: azureml://datastores/workspaceblobstore/paths/x\n");
    ws.cove(&["endpoint", "invoke", "-n", "named", "--file", &other])
        .fails_with(2, "field `outputs.extra`: a model deployment has one output, `score`");
    let table = write("table.yml", "inputs:\n  a:\n    type: mltable\n    path: data\n");
    ws.cove(&["endpoint", "invoke", "-n", "named", "--file", &table])
        .fails_with(2, "`mltable` is not an input of a model deployment (uri_folder, uri_file)");
}
