//! `cove environment`: registered environments, as the reference's `az ml environment` registers them
//! from its environment YAML (`conda_file`, `image`, ...). Deployments name them as
//! `environment: azureml:NAME@latest` or `azureml:NAME:VERSION`.

use crate::render::table;
use crate::{print_json, Output};
use cove_api::{encode, Client, CreateEnvironment, Environment, EnvironmentDetail};
use std::path::Path;

pub async fn create(client: &Client, file: &Path, out: Output) -> anyhow::Result<()> {
    let text = crate::resources::read_yaml(file)?;
    let definition = cove_spec::parse_environment(&file.display().to_string(), &text)?;
    let (conda_file, pip_file) = crate::resources::environment_files(file, "", &definition)?;
    let env: Environment =
        client.post("/api/v1/environments", &CreateEnvironment { definition, conda_file, pip_file }).await?;
    if out.json {
        return print_json(&env);
    }
    println!("Registered environment {} version {}", env.name, env.version);
    eprintln!(
        "Use it in a deployment: environment: azureml:{}:{} (or azureml:{}@latest)",
        env.name, env.version, env.name
    );
    Ok(())
}

pub async fn list(client: &Client, name: Option<&str>, out: Output) -> anyhow::Result<()> {
    let path = match name {
        Some(n) => format!("/api/v1/environments?name={}", encode(n)),
        None => "/api/v1/environments".into(),
    };
    let envs: Vec<Environment> = client.get(&path).await?;
    if out.json {
        return print_json(&envs);
    }
    let rows: Vec<Vec<String>> = envs
        .iter()
        .map(|e| {
            let files = [e.conda_file.as_ref().map(|_| "conda"), e.pip_file.as_ref().map(|_| "pip")];
            vec![
                e.name.clone(),
                e.version.to_string(),
                files.iter().flatten().copied().collect::<Vec<_>>().join("+"),
                e.created_at.clone(),
            ]
        })
        .collect();
    print!("{}", table(&["NAME", "VERSION", "FILES", "CREATED"], &rows));
    Ok(())
}

pub async fn show(client: &Client, name: &str, version: Option<&str>, out: Output) -> anyhow::Result<()> {
    let v = version.unwrap_or("latest");
    let d: EnvironmentDetail =
        client.get(&format!("/api/v1/environments/{}/versions/{}", encode(name), encode(v))).await?;
    if out.json {
        return print_json(&d);
    }
    let e = &d.environment;
    println!("Name:         {}", e.name);
    println!("Version:      {}", e.version);
    if let Some(desc) = &e.description {
        println!("Description:  {desc}");
    }
    if let Some(image) = &e.image {
        println!("Image:        {image} (not used: Cove builds from the conda and pip files)");
    }
    for o in &e.overrides {
        println!("Override:     {o}");
    }
    println!("Created:      {}", e.created_at);
    if let Some(conda) = &e.conda_file {
        println!("Conda file:\n{}", indent(conda));
    }
    if let Some(pip) = &e.pip_file {
        println!("Pip file:\n{}", indent(pip));
    }
    if d.builds.is_empty() {
        println!("Builds:       none yet (a deployment that uses it builds it)");
    }
    for b in &d.builds {
        println!("Build {}: used by {}", b.key, b.deployments.join(", "));
        println!("  log: {}", b.log);
        println!("{}", indent(&b.log_tail));
    }
    Ok(())
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("    {l}")).collect::<Vec<_>>().join("\n")
}
