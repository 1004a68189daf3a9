//! `.rego` files evaluated in process with `regorus`.
//!
//! Each file is read as Rego v1 (OPA 1.0's syntax) and, when that fails, as Rego v0 (the
//! syntax of the examples in Trino's documentation: `allow { ... }`, `import future.keywords`);
//! when neither parses, the error of the reading that got further is reported with its file
//! and line. The policy is evaluated once at load, so errors that only show when rules are
//! compiled (unsafe variables, unknown functions) also refuse to load.
//!
//! An `Engine` is not shared between threads: evaluations take one from a small pool of
//! clones of the loaded engine (a clone shares the parsed modules).

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use regorus::Engine;
use serde_json::Value;

use crate::{Decide, PolicyError, Rule};

const RULES: [Rule; 5] = [
    Rule::Allow,
    Rule::Batch,
    Rule::RowFilters,
    Rule::ColumnMask,
    Rule::BatchColumnMasks,
];

/// Rego policies evaluated in process.
pub struct RegoPolicy {
    prototype: Engine,
    pool: Mutex<Vec<Engine>>,
    package: String,
    declared: Vec<Rule>,
    files: Vec<String>,
}

impl std::fmt::Debug for RegoPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RegoPolicy({})", self.files.join(", "))
    }
}

/// The policy files `path` names: itself, or the `.rego` and `.toml` (role file,
/// [`crate::role_file`]) files directly in it, sorted.
fn rego_files(path: &Path) -> Result<Vec<PathBuf>, PolicyError> {
    let load_error = |message: String| PolicyError::Load {
        path: path.display().to_string(),
        message,
    };
    let meta = std::fs::metadata(path).map_err(|e| load_error(format!("cannot read it: {e}")))?;
    if !meta.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| load_error(format!("cannot list it: {e}")))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "rego") || crate::role_file::is_role_file(p))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(load_error("the directory holds no .rego or .toml file".into()));
    }
    Ok(files)
}

/// The line a regorus parse error names (`file:LINE:COL: error: ...`), for choosing between
/// the v1 and v0 readings.
fn error_line(message: &str, file: &str) -> usize {
    message
        .find(file)
        .map(|at| &message[at + file.len()..])
        .and_then(|rest| rest.strip_prefix(':'))
        .and_then(|rest| rest.split(':').next())
        .and_then(|line| line.trim().parse().ok())
        .unwrap_or(0)
}

impl RegoPolicy {
    /// The policies in `path` (a `.rego` file or a directory of them), deciding with the rules
    /// of `package`.
    pub fn from_path(path: &Path, package: &str) -> Result<Self, PolicyError> {
        let mut sources = Vec::new();
        for file in rego_files(path)? {
            let text = std::fs::read_to_string(&file).map_err(|e| PolicyError::Load {
                path: file.display().to_string(),
                message: format!("cannot read it: {e}"),
            })?;
            let name = file.display().to_string();
            if crate::role_file::is_role_file(&file) {
                // A role file: its Rego, named after it (a compile error names its line).
                let rego = crate::role_file::compile(&name, &text, package)?;
                sources.push((format!("{name}.rego"), rego));
            } else {
                sources.push((name, text));
            }
        }
        Self::from_sources(sources, package)
    }

    /// Policies from `(name, text)` pairs (tests, `tarn policy test`).
    pub fn from_sources(sources: Vec<(String, String)>, package: &str) -> Result<Self, PolicyError> {
        let mut engine = Engine::new();
        let mut packages = Vec::new();
        let mut files = Vec::new();
        for (name, text) in sources {
            engine.set_rego_v0(false);
            let v1 = engine.add_policy(name.clone(), text.clone());
            let loaded = match v1 {
                Ok(p) => p,
                Err(v1_error) => {
                    engine.set_rego_v0(true);
                    match engine.add_policy(name.clone(), text) {
                        Ok(p) => p,
                        Err(v0_error) => {
                            let (v1_error, v0_error) = (v1_error.to_string(), v0_error.to_string());
                            let message = if error_line(&v0_error, &name) > error_line(&v1_error, &name) {
                                v0_error
                            } else {
                                v1_error
                            };
                            return Err(PolicyError::Load { path: name, message });
                        }
                    }
                }
            };
            packages.push((name.clone(), loaded));
            files.push(name);
        }
        let wanted = format!("data.{package}");
        let in_package: Vec<&String> = packages
            .iter()
            .filter(|(_, p)| *p == wanted)
            .map(|(f, _)| f)
            .collect();
        if in_package.is_empty() {
            return Err(PolicyError::Load {
                path: files.join(", "),
                message: format!(
                    "no file declares `package {package}` (found {}); set policy.package to the package holding `allow`",
                    packages
                        .iter()
                        .map(|(_, p)| p.trim_start_matches("data."))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        }
        let declared = RULES
            .into_iter()
            .filter(|rule| {
                in_package.iter().any(|file| {
                    engine
                        .has_declared_rule_rooted_at(file, rule.name())
                        .unwrap_or(false)
                })
            })
            .collect();
        let policy = Self {
            prototype: engine,
            pool: Mutex::new(Vec::new()),
            package: package.to_string(),
            declared,
            files,
        };
        // Compile now: errors that parsing does not find refuse to load too.
        let probe = crate::input(
            &tarn_auth::Principal {
                user: String::new(),
                groups: Vec::new(),
                method: tarn_auth::Method::Trusted,
            },
            serde_json::json!({ "operation": "ExecuteQuery" }),
        );
        policy.query(Rule::Allow, &probe).map_err(|e| PolicyError::Load {
            path: policy.files.join(", "),
            message: e.to_string(),
        })?;
        Ok(policy)
    }
}

impl Decide for RegoPolicy {
    fn query(&self, rule: Rule, input: &Value) -> Result<Option<Value>, PolicyError> {
        let mut engine = self
            .pool
            .lock()
            .expect("policy engine pool poisoned")
            .pop()
            .unwrap_or_else(|| self.prototype.clone());
        let evaluated = (|| {
            let input = regorus::Value::from_json_str(&input.to_string())?;
            engine.set_input(input);
            engine.eval_rule(format!("data.{}.{}", self.package, rule.name()))
        })();
        self.pool
            .lock()
            .expect("policy engine pool poisoned")
            .push(engine);
        let value = evaluated.map_err(|e| PolicyError::Evaluation(format!("rule {}: {e}", rule.name())))?;
        if value == regorus::Value::Undefined {
            return Ok(None);
        }
        let json = value
            .to_json_str()
            .map_err(|e| PolicyError::Evaluation(format!("rule {}: {e}", rule.name())))?;
        serde_json::from_str(&json)
            .map(Some)
            .map_err(|e| PolicyError::Evaluation(format!("rule {}: {e}", rule.name())))
    }

    fn declares(&self, rule: Rule) -> bool {
        self.declared.contains(&rule)
    }

    fn describe(&self) -> String {
        format!("{} (package {})", self.files.join(", "), self.package)
    }
}
