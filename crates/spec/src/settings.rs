//! Owns `DeploymentSettings` (parallelism, retries, output and logging of a model deployment), their defaults,
//! reading them from YAML (the `settings:` block, `resources:` and the legacy flat root) and per-job overrides.
//! YAML and overrides share the same check functions, so a value is accepted or refused the same way in both.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::errors::SpecError;
use crate::yaml::{nearest, Fields};

/// How a model deployment splits and runs a job, with the Azure ML defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeploymentSettings {
    /// Nodes per job. Invariant: at least 1.
    pub instance_count: u32,
    /// Scoring processes per node. Invariant: at least 1.
    pub max_concurrency_per_instance: u32,
    /// Input files per `run()` call. Invariant: at least 1.
    pub mini_batch_size: u32,
    pub output_action: OutputAction,
    /// Invariant: `Some` plain file name for `append_row`, `None` for `summary_only`.
    pub output_file_name: Option<String>,
    pub retry_settings: RetrySettings,
    /// Failed items tolerated across the job; -1 tolerates all. Invariant: at least -1.
    pub error_threshold: i64,
    pub logging_level: LoggingLevel,
    /// Invariant: every name matches `[A-Za-z_][A-Za-z0-9_]*`.
    pub environment_variables: BTreeMap<String, String>,
    /// Cove's extension: what one scorer process may use.
    #[serde(default)]
    pub limits: Limits,
    /// Cove's extension: the environment variables a caller may set per job
    /// (`environment_variables.NAME=value`); the reference allows none. Never a name that changes the
    /// interpreter or the loader (see [`is_loader_variable`]).
    #[serde(default)]
    pub job_environment_variables: Vec<String>,
}

/// Per-scorer-process resource limits (a Cove extension under `settings.limits`; the reference has none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Address space of one scorer process, in MiB. Invariant: at least 1.
    pub memory_mb: u64,
    /// CPU time one scorer process may use over its life, in seconds. Invariant: at least 1.
    pub cpu_seconds: u64,
}

impl Default for Limits {
    /// 8 GiB of address space and one CPU-hour per scorer process.
    fn default() -> Self {
        Limits { memory_mb: 8192, cpu_seconds: 3600 }
    }
}

/// How often and for how long one mini-batch is tried.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetrySettings {
    /// Attempts per mini-batch, counting the first. Invariant: at least 1.
    pub max_retries: u32,
    /// Limit for one `run()` call. Invariant: at least 1.
    pub timeout_secs: u64,
}

/// What a job keeps from the values `run()` returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputAction {
    AppendRow,
    SummaryOnly,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoggingLevel {
    Warning,
    Info,
    Debug,
}

const DEFAULT_OUTPUT_FILE: &str = "predictions.csv";
const SUMMARY_ONLY_HAS_NO_FILE: &str = "cannot be set when output_action is summary_only";

/// Settings keys of the `settings:` block, which the legacy flat form puts at the root instead.
pub(crate) const SETTINGS_KEYS: [&str; 11] = [
    "instance_count",
    "max_concurrency_per_instance",
    "mini_batch_size",
    "output_action",
    "output_file_name",
    "retry_settings",
    "error_threshold",
    "logging_level",
    "environment_variables",
    "limits",
    "job_environment_variables",
];

/// Keys `apply_override` accepts, as users should write them: what the reference lets a caller
/// change per job, and the environment variables the deployment lists as per-job.
const OVERRIDE_KEYS: [&str; 8] = [
    "mini_batch_size",
    "instance_count",
    "max_retries",
    "timeout",
    "error_threshold",
    "output_file_name",
    "logging_level",
    "environment_variables.NAME",
];

/// Every spelling `apply_override` accepts, used to suggest the nearest one.
const OVERRIDE_SPELLINGS: [&str; 20] = [
    "mini_batch_size",
    "settings.mini_batch_size",
    "instance_count",
    "settings.instance_count",
    "compute.instance_count",
    "resources.instance_count",
    "max_retries",
    "retry_settings.max_retries",
    "settings.retry_settings.max_retries",
    "timeout",
    "retry_settings.timeout",
    "settings.retry_settings.timeout",
    "error_threshold",
    "settings.error_threshold",
    "output_file_name",
    "settings.output_file_name",
    "logging_level",
    "settings.logging_level",
    "environment_variables.NAME",
    "settings.environment_variables.NAME",
];

impl Default for DeploymentSettings {
    fn default() -> Self {
        DeploymentSettings {
            instance_count: 1,
            max_concurrency_per_instance: 1,
            mini_batch_size: 10,
            output_action: OutputAction::AppendRow,
            output_file_name: Some(DEFAULT_OUTPUT_FILE.to_string()),
            retry_settings: RetrySettings { max_retries: 3, timeout_secs: 30 },
            error_threshold: -1,
            logging_level: LoggingLevel::Info,
            environment_variables: BTreeMap::new(),
            limits: Limits::default(),
            job_environment_variables: Vec::new(),
        }
    }
}

impl DeploymentSettings {
    /// Applies one per-job override such as `mini_batch_size=20`, or `environment_variables.SEED=1`
    /// when the deployment lists `SEED` under `job_environment_variables`.
    ///
    /// # Errors
    ///
    /// Returns a message when the key is unknown (naming the nearest and the accepted keys), the value breaks
    /// the same rule the YAML field has, or the environment variable is not the caller's to set.
    pub fn apply_override(&mut self, key: &str, value: &str) -> Result<(), String> {
        let env_name = key.strip_prefix("settings.").unwrap_or(key).strip_prefix("environment_variables.");
        if let Some(name) = env_name {
            check_env_name(name)?;
            if is_loader_variable(name) {
                return Err(format!(
                    "`{name}` changes how the interpreter or the loader starts; it can never be set per job"
                ));
            }
            if !self.job_environment_variables.iter().any(|n| n == name) {
                return Err(format!(
                    "`{name}` cannot be set per job: the deployment's settings.job_environment_variables does not list it ({})",
                    if self.job_environment_variables.is_empty() {
                        "it lists none".to_string()
                    } else {
                        format!("it lists {}", self.job_environment_variables.join(", "))
                    }
                ));
            }
            self.environment_variables.insert(name.to_string(), value.to_string());
            return Ok(());
        }
        match key {
            "mini_batch_size" | "settings.mini_batch_size" => {
                self.mini_batch_size = at_most(count(int_text(value)?)?, MAX_JOB_MINI_BATCH_SIZE, "")?;
            }
            "instance_count" | "settings.instance_count" | "compute.instance_count" | "resources.instance_count" => {
                self.instance_count = count(int_text(value)?)?;
            }
            "max_retries" | "retry_settings.max_retries" | "settings.retry_settings.max_retries" => {
                self.retry_settings.max_retries = at_most(count(int_text(value)?)?, MAX_JOB_RETRIES, "")?;
            }
            "timeout" | "retry_settings.timeout" | "settings.retry_settings.timeout" => {
                self.retry_settings.timeout_secs =
                    at_most(parse_timeout(value)?, MAX_JOB_TIMEOUT_SECS, " seconds (a day)")?;
            }
            "error_threshold" | "settings.error_threshold" => self.error_threshold = threshold(int_text(value)?),
            "output_file_name" | "settings.output_file_name" => {
                if self.output_action == OutputAction::SummaryOnly {
                    return Err(SUMMARY_ONLY_HAS_NO_FILE.to_string());
                }
                self.output_file_name = Some(check_output_file_name(value)?);
            }
            "logging_level" | "settings.logging_level" => self.logging_level = parse_logging_level(value)?,
            _ => {
                let accepted = OVERRIDE_KEYS.join(", ");
                // A misspelt prefixed key (`settings.timout`) is far from every full spelling, so fall back to
                // comparing its last segment with the bare keys.
                let last = key.rsplit('.').next().unwrap_or(key);
                let near = nearest(key, &OVERRIDE_SPELLINGS).or_else(|| nearest(last, &OVERRIDE_KEYS));
                return Err(match near {
                    Some(near) => format!("unknown setting `{key}`, did you mean `{near}`? accepted keys: {accepted}"),
                    None => format!("unknown setting `{key}`; accepted keys: {accepted}"),
                });
            }
        }
        Ok(())
    }
}

impl DeploymentSettings {
    /// Changes one setting of a deployment itself (`cove deployment update --set`): what a per-job
    /// override may change, and also `max_concurrency_per_instance`, any `environment_variables.NAME`
    /// (the deployment's own, set by its contributor) and `job_environment_variables`.
    ///
    /// # Errors
    ///
    /// A message naming the problem, as for [`DeploymentSettings::apply_override`].
    pub fn apply_deployment_setting(&mut self, key: &str, value: &str) -> Result<(), String> {
        let bare = key.strip_prefix("settings.").unwrap_or(key);
        if let Some(name) = bare.strip_prefix("environment_variables.") {
            check_env_name(name)?;
            self.environment_variables.insert(name.to_string(), value.to_string());
            return Ok(());
        }
        match bare {
            "max_concurrency_per_instance" => self.max_concurrency_per_instance = count(int_text(value)?)?,
            "job_environment_variables" => {
                let mut names = Vec::new();
                for name in value.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                    check_env_name(name)?;
                    if is_loader_variable(name) {
                        return Err(format!(
                            "`{name}` changes how the interpreter or the loader starts; it cannot be set per job"
                        ));
                    }
                    names.push(name.to_string());
                }
                self.job_environment_variables = names;
            }
            _ => return self.apply_override(key, value),
        }
        Ok(())
    }
}

impl fmt::Display for OutputAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OutputAction::AppendRow => "append_row",
            OutputAction::SummaryOnly => "summary_only",
        })
    }
}

impl fmt::Display for LoggingLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LoggingLevel::Warning => "warning",
            LoggingLevel::Info => "info",
            LoggingLevel::Debug => "debug",
        })
    }
}

/// Reads the settings of a model deployment from the `settings:` block, `resources:` and the root.
pub(crate) fn from_yaml(
    root: &Fields<'_>,
    block: Option<&Fields<'_>>,
    resources: Option<&Fields<'_>>,
) -> Result<DeploymentSettings, SpecError> {
    let mut out = DeploymentSettings::default();
    let count_at = |f: &Fields<'_>, key: &str| count(f.required(key, f.int(key)?)?).map_err(|m| f.error(key, m));
    let string_at = |f: &Fields<'_>, key: &str| f.required(key, f.string(key)?);

    if let Some(f) = owner("instance_count", [resources, block, Some(root)])? {
        out.instance_count = count_at(f, "instance_count")?;
    }
    let places = [None, block, Some(root)];
    if let Some(f) = owner("max_concurrency_per_instance", places)? {
        out.max_concurrency_per_instance = count_at(f, "max_concurrency_per_instance")?;
    }
    if let Some(f) = owner("mini_batch_size", places)? {
        out.mini_batch_size = count_at(f, "mini_batch_size")?;
    }
    if let Some(f) = owner("retry_settings", places)? {
        let retry = f.required("retry_settings", f.mapping("retry_settings")?)?;
        retry.check_keys(&["max_retries", "timeout"])?;
        if retry.has("max_retries") {
            out.retry_settings.max_retries = count_at(&retry, "max_retries")?;
        }
        if let Some(text) = retry.scalar("timeout")? {
            out.retry_settings.timeout_secs = parse_timeout(&text).map_err(|m| retry.error("timeout", m))?;
        }
    }
    if let Some(f) = owner("output_action", places)? {
        out.output_action =
            parse_output_action(&string_at(f, "output_action")?).map_err(|m| f.error("output_action", m))?;
    }
    match (owner("output_file_name", places)?, out.output_action) {
        (Some(f), OutputAction::SummaryOnly) => return Err(f.error("output_file_name", SUMMARY_ONLY_HAS_NO_FILE)),
        (Some(f), OutputAction::AppendRow) => {
            let name = string_at(f, "output_file_name")?;
            out.output_file_name = Some(check_output_file_name(&name).map_err(|m| f.error("output_file_name", m))?);
        }
        (None, OutputAction::SummaryOnly) => out.output_file_name = None,
        (None, OutputAction::AppendRow) => {}
    }
    if let Some(f) = owner("error_threshold", places)? {
        out.error_threshold = threshold(f.required("error_threshold", f.int("error_threshold")?)?);
    }
    if let Some(f) = owner("logging_level", places)? {
        out.logging_level =
            parse_logging_level(&string_at(f, "logging_level")?).map_err(|m| f.error("logging_level", m))?;
    }
    if let Some(f) = owner("environment_variables", places)? {
        let vars = f.scalar_map("environment_variables")?;
        for name in vars.keys() {
            check_env_name(name).map_err(|m| f.error(&format!("environment_variables.{name}"), m))?;
        }
        out.environment_variables = vars;
    }
    if let Some(f) = owner("job_environment_variables", places)? {
        let key = "job_environment_variables";
        let value = f.get(key).expect("owner has the key");
        let items =
            value.as_sequence().ok_or_else(|| f.type_error(key, "a list of environment variable names", value))?;
        for item in items {
            let name = item.as_str().ok_or_else(|| f.type_error(key, "a list of environment variable names", item))?;
            check_env_name(name).map_err(|m| f.error(key, m))?;
            if is_loader_variable(name) {
                return Err(f.error(
                    key,
                    format!("`{name}` changes how the interpreter or the loader starts; it cannot be set per job"),
                ));
            }
            out.job_environment_variables.push(name.to_string());
        }
    }
    if let Some(f) = owner("limits", places)? {
        let limits = f.required("limits", f.mapping("limits")?)?;
        limits.check_keys(&["memory_mb", "cpu_seconds"])?;
        if limits.has("memory_mb") {
            out.limits.memory_mb = u64::from(count_at(&limits, "memory_mb")?);
        }
        if limits.has("cpu_seconds") {
            out.limits.cpu_seconds = u64::from(count_at(&limits, "cpu_seconds")?);
        }
    }
    Ok(out)
}

/// Returns the one mapping among `places` that sets `key`, refusing a key set in two places (such as
/// `resources.instance_count` and `settings.instance_count`) because neither value would obviously win.
fn owner<'f, 'a>(key: &str, places: [Option<&'f Fields<'a>>; 3]) -> Result<Option<&'f Fields<'a>>, SpecError> {
    let mut found: Option<&'f Fields<'a>> = None;
    for place in places.into_iter().flatten().filter(|p| p.has(key)) {
        if let Some(first) = found {
            return Err(place.error(key, format!("conflicts with `{}`; set it in one place only", first.path(key))));
        }
        found = Some(place);
    }
    Ok(found)
}

fn int_text(text: &str) -> Result<i64, String> {
    text.trim().parse().map_err(|_| format!("expected a whole number, got `{text}`"))
}

/// The largest `timeout` a per-job override may set: a caller cannot make a job's leases, and the
/// signed URLs that live with them, last longer than this.
pub const MAX_JOB_TIMEOUT_SECS: u64 = 86_400;
/// The most retries a per-job override may ask for.
pub const MAX_JOB_RETRIES: u32 = 100;
/// The largest mini-batch a per-job override may ask for.
pub const MAX_JOB_MINI_BATCH_SIZE: u32 = 1_000_000;

/// `n`, or why a per-job override may not set it that high (`unit` follows the bound).
fn at_most<T: PartialOrd + std::fmt::Display>(n: T, max: T, unit: &str) -> Result<T, String> {
    if n > max {
        return Err(format!("a per-job override may set at most {max}{unit}, got {n}"));
    }
    Ok(n)
}

fn count(n: i64) -> Result<u32, String> {
    if n < 1 {
        return Err(format!("must be at least 1, got {n}"));
    }
    u32::try_from(n).map_err(|_| format!("must be at most {}, got {n}", u32::MAX))
}

/// Clamps thresholds below -1 to -1, as the Azure ML driver does, since they can only mean "never abort".
fn threshold(n: i64) -> i64 {
    n.max(-1)
}

/// Parses a timeout given as whole seconds or as an ISO-8601 duration (`PT30S`, `PT2M`, `PT1H30M`, `P1D`).
fn parse_timeout(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let secs = match text.parse::<i64>() {
        Ok(n) if n < 1 => return Err(format!("must be at least 1 second, got {n}")),
        Ok(n) => n.unsigned_abs(),
        Err(_) => iso_duration_secs(text)
            .ok_or_else(|| format!("expected whole seconds or an ISO-8601 duration like `PT30S`, got `{text}`"))?,
    };
    if secs < 1 {
        return Err(format!("must be at least 1 second, got `{text}`"));
    }
    Ok(secs)
}

/// Returns the seconds of a `P[nD][T[nH][nM][nS]]` duration; years, months, weeks and fractions are refused.
fn iso_duration_secs(text: &str) -> Option<u64> {
    let upper = text.to_ascii_uppercase();
    let rest = upper.strip_prefix('P')?;
    let (date, time) = match rest.split_once('T') {
        Some((_, "")) => return None,
        Some((date, time)) => (date, time),
        None => (rest, ""),
    };
    let mut total: u64 = 0;
    let mut any = false;
    for (mut part, units) in [(date, &[('D', 86_400)][..]), (time, &[('H', 3_600), ('M', 60), ('S', 1)][..])] {
        for &(unit, secs) in units {
            if let Some(at) = part.find(unit) {
                let digits = &part[..at];
                if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                total = total.checked_add(digits.parse::<u64>().ok()?.checked_mul(secs)?)?;
                part = &part[at + 1..];
                any = true;
            }
        }
        if !part.is_empty() {
            return None;
        }
    }
    any.then_some(total)
}

fn parse_output_action(text: &str) -> Result<OutputAction, String> {
    match text.trim().replace('_', "").to_ascii_lowercase().as_str() {
        "appendrow" => Ok(OutputAction::AppendRow),
        "summaryonly" => Ok(OutputAction::SummaryOnly),
        _ => Err(format!("expected `append_row` or `summary_only`, got `{text}`")),
    }
}

fn parse_logging_level(text: &str) -> Result<LoggingLevel, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "warning" => Ok(LoggingLevel::Warning),
        "info" => Ok(LoggingLevel::Info),
        "debug" => Ok(LoggingLevel::Debug),
        _ => Err(format!("expected one of `warning`, `info`, `debug`, got `{text}`")),
    }
}

/// Keeps the output inside the job's output folder: a plain name cannot climb out or create directories.
fn check_output_file_name(name: &str) -> Result<String, String> {
    if name.trim().is_empty() {
        return Err("must not be empty".to_string());
    }
    if name.contains(['/', '\\']) || name.contains("..") {
        return Err(format!("must be a plain file name without `/` or `..`, got `{name}`"));
    }
    Ok(name.to_string())
}

/// Whether a variable changes how the interpreter, the dynamic loader or a shell starts, or is one the
/// scorer's runtime sets itself: an invoker who could set one would run code of their choosing inside
/// someone else's deployment (`PYTHONWARNINGS`, `BROWSER` and `BASH_ENV` all can).
pub fn is_loader_variable(name: &str) -> bool {
    const PREFIXES: [&str; 8] = ["PYTHON", "LD_", "DYLD_", "GCONV", "MALLOC_", "AZUREML_", "COVE_", "PERL"];
    const NAMES: [&str; 20] = [
        "BASH_ENV",
        "ENV",
        "BROWSER",
        "PATH",
        "HOME",
        "IFS",
        "SHELL",
        "SHELLOPTS",
        "BASHOPTS",
        "PS4",
        "PROMPT_COMMAND",
        "EDITOR",
        "VISUAL",
        "PAGER",
        "GLIBC_TUNABLES",
        "NODE_OPTIONS",
        "RUBYOPT",
        "TMPDIR",
        "HOSTALIASES",
        "NLSPATH",
    ];
    let upper = name.to_ascii_uppercase();
    PREFIXES.iter().any(|p| upper.starts_with(p)) || NAMES.contains(&upper.as_str())
}

fn check_env_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a valid environment variable name (letters, digits and `_`, not starting with a digit)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn applied(key: &str, value: &str) -> DeploymentSettings {
        let mut settings =
            DeploymentSettings { job_environment_variables: vec!["SEED".into()], ..DeploymentSettings::default() };
        settings.apply_override(key, value).unwrap();
        settings
    }

    fn refused(key: &str, value: &str) -> String {
        DeploymentSettings::default().apply_override(key, value).unwrap_err()
    }

    #[test]
    fn overrides_each_key_under_every_spelling() {
        for key in ["mini_batch_size", "settings.mini_batch_size"] {
            assert_eq!(applied(key, "20").mini_batch_size, 20);
        }
        for key in ["instance_count", "settings.instance_count", "compute.instance_count", "resources.instance_count"] {
            assert_eq!(applied(key, "3").instance_count, 3);
        }
        for key in ["max_retries", "retry_settings.max_retries", "settings.retry_settings.max_retries"] {
            assert_eq!(applied(key, "5").retry_settings.max_retries, 5);
        }
        for key in ["timeout", "retry_settings.timeout", "settings.retry_settings.timeout"] {
            assert_eq!(applied(key, "PT2M").retry_settings.timeout_secs, 120);
            assert_eq!(applied(key, " 90 ").retry_settings.timeout_secs, 90);
        }
        for key in ["error_threshold", "settings.error_threshold"] {
            assert_eq!(applied(key, "12").error_threshold, 12);
            assert_eq!(applied(key, "-9").error_threshold, -1);
        }
        for key in ["output_file_name", "settings.output_file_name"] {
            assert_eq!(applied(key, "scores.csv").output_file_name.as_deref(), Some("scores.csv"));
        }
        for key in ["logging_level", "settings.logging_level"] {
            assert_eq!(applied(key, "DEBUG").logging_level, LoggingLevel::Debug);
        }
        for key in ["environment_variables.SEED", "settings.environment_variables.SEED"] {
            assert_eq!(applied(key, "a=b").environment_variables.get("SEED").map(String::as_str), Some("a=b"));
        }
    }

    #[test]
    fn overrides_use_the_yaml_rules() {
        assert_eq!(refused("mini_batch_size", "0"), "must be at least 1, got 0");
        assert_eq!(refused("instance_count", "many"), "expected a whole number, got `many`");
        assert_eq!(refused("max_retries", "-1"), "must be at least 1, got -1");
        assert_eq!(refused("instance_count", "4294967296"), "must be at most 4294967295, got 4294967296");
        assert_eq!(refused("timeout", "0"), "must be at least 1 second, got 0");
        assert_eq!(
            refused("timeout", "soon"),
            "expected whole seconds or an ISO-8601 duration like `PT30S`, got `soon`"
        );
        assert_eq!(refused("error_threshold", "1.5"), "expected a whole number, got `1.5`");
        assert_eq!(refused("output_file_name", "../x"), "must be a plain file name without `/` or `..`, got `../x`");
        assert_eq!(refused("logging_level", "trace"), "expected one of `warning`, `info`, `debug`, got `trace`");
        assert_eq!(
            refused("environment_variables.1X", "v"),
            "`1X` is not a valid environment variable name (letters, digits and `_`, not starting with a digit)"
        );
        let mut summary = DeploymentSettings {
            output_action: OutputAction::SummaryOnly,
            output_file_name: None,
            ..Default::default()
        };
        assert_eq!(
            summary.apply_override("output_file_name", "x.csv").unwrap_err(),
            "cannot be set when output_action is summary_only"
        );
    }

    #[test]
    fn unknown_override_keys_list_the_accepted_ones() {
        let accepted = "mini_batch_size, instance_count, max_retries, timeout, \
                        error_threshold, output_file_name, logging_level, environment_variables.NAME";
        assert_eq!(
            refused("mini_bach_size", "3"),
            format!("unknown setting `mini_bach_size`, did you mean `mini_batch_size`? accepted keys: {accepted}")
        );
        assert_eq!(
            refused("settings.timout", "3"),
            format!("unknown setting `settings.timout`, did you mean `timeout`? accepted keys: {accepted}")
        );
        assert_eq!(refused("colour", "red"), format!("unknown setting `colour`; accepted keys: {accepted}"));
        assert!(refused("output_action", "summary_only").starts_with("unknown setting `output_action`"));
    }

    /// An invoker changes only what the reference lets a caller change per job: no environment
    /// variable the deployment does not list, never one that starts code, and no concurrency.
    #[test]
    fn per_job_overrides_are_what_a_caller_may_change() {
        assert_eq!(
            refused("environment_variables.OTHER", "1"),
            "`OTHER` cannot be set per job: the deployment's settings.job_environment_variables does not list it (it lists none)"
        );
        for name in
            ["PYTHONWARNINGS", "PYTHONPATH", "BROWSER", "BASH_ENV", "LD_PRELOAD", "ENV", "PATH", "pythonstartup"]
        {
            let mut settings =
                DeploymentSettings { job_environment_variables: vec![name.into()], ..DeploymentSettings::default() };
            let err = settings.apply_override(&format!("environment_variables.{name}"), "x").unwrap_err();
            assert!(err.contains("can never be set per job"), "{name}: {err}");
        }
        assert!(refused("max_concurrency_per_instance", "4").starts_with("unknown setting"));
        // Bounded: a caller cannot make a job's leases (and the URLs signed for them) live for years.
        assert_eq!(
            refused("timeout", "P3650D"),
            "a per-job override may set at most 86400 seconds (a day), got 315360000"
        );
        assert_eq!(
            refused("retry_settings.timeout", "86401"),
            "a per-job override may set at most 86400 seconds (a day), got 86401"
        );
        assert_eq!(refused("max_retries", "101"), "a per-job override may set at most 100, got 101");
        assert_eq!(refused("mini_batch_size", "1000001"), "a per-job override may set at most 1000000, got 1000001");
        let mut settings = DeploymentSettings::default();
        settings.apply_override("timeout", "P1D").unwrap();
        settings.apply_override("max_retries", "100").unwrap();
        assert_eq!((settings.retry_settings.timeout_secs, settings.retry_settings.max_retries), (86_400, 100));
    }

    #[test]
    fn display_uses_yaml_spellings() {
        assert_eq!(OutputAction::AppendRow.to_string(), "append_row");
        assert_eq!(OutputAction::SummaryOnly.to_string(), "summary_only");
        assert_eq!(LoggingLevel::Warning.to_string(), "warning");
        assert_eq!(LoggingLevel::Info.to_string(), "info");
        assert_eq!(LoggingLevel::Debug.to_string(), "debug");
    }

    #[test]
    fn iso_durations() {
        assert_eq!(iso_duration_secs("PT30S"), Some(30));
        assert_eq!(iso_duration_secs("PT1H30M"), Some(5400));
        assert_eq!(iso_duration_secs("P2D"), Some(172_800));
        assert_eq!(iso_duration_secs("P1M"), None);
        assert_eq!(iso_duration_secs("PT-5S"), None);
        assert_eq!(iso_duration_secs("PT99999999999999999999S"), None);
    }
}
