//! The declared queues (`queues/queues.yml`) and the JSON Schema of every task type
//! (`queues/schemas/<type>.json`): the portal's contract, loaded once at start.
//!
//! A worker refuses to start on a file it cannot read, a list declared twice, a type carried by two
//! families, or a type without a valid schema, naming the file and the fault. At run time this
//! module answers three questions: which lists to take from, in what order; whether a type belongs
//! on the list it came from; and whether a payload satisfies its type's schema.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use thiserror::Error;

/// Why the declarations could not be loaded.
#[derive(Debug, Error)]
pub enum DefinitionError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid queue declaration: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("schema {path} is not a valid JSON Schema: {message}")]
    Schema { path: PathBuf, message: String },
}

/// Exponential backoff between attempts: `base_ms * 2^(attempt-1)`, capped at `max_ms`, with jitter.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backoff {
    pub base_ms: u64,
    pub max_ms: u64,
}

impl Backoff {
    /// Delay before the attempt after `attempt` (1-based): full exponential step with ±50% jitter,
    /// so tasks failing together do not retry together.
    pub fn delay(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(30);
        let step = self
            .base_ms
            .saturating_mul(1u64 << exponent)
            .min(self.max_ms);
        let jitter = rand::random_range(0.5..1.5);
        Duration::from_millis(((step as f64) * jitter).min(self.max_ms as f64) as u64)
    }
}

/// One family of queues as declared.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Family {
    /// Lists in priority order (`high` first).
    pub lists: Vec<String>,
    /// Task types this family carries.
    pub types: Vec<String>,
    /// Attempts a task gets unless it says otherwise.
    pub max_attempts: u32,
    /// Seconds an attempt may take unless the task says otherwise.
    pub timeout_s: u64,
    /// Delay between attempts.
    pub backoff: Backoff,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    families: BTreeMap<String, Family>,
    #[serde(default)]
    everywhere: Vec<String>,
}

/// The loaded declarations.
#[derive(Debug)]
pub struct Definitions {
    families: BTreeMap<String, Family>,
    everywhere: BTreeSet<String>,
    schemas: BTreeMap<String, jsonschema::Validator>,
    dir: PathBuf,
}

/// A task type's policy on the list it arrived on.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub max_attempts: u32,
    pub timeout: Duration,
    pub backoff: Backoff,
}

impl Definitions {
    /// Loads `<dir>/queues.yml` and every schema it names.
    pub fn load(dir: &Path) -> Result<Self, DefinitionError> {
        let path = dir.join("queues.yml");
        let text = std::fs::read_to_string(&path).map_err(|source| DefinitionError::Read {
            path: path.clone(),
            source,
        })?;
        let file: File = serde_yaml_ng::from_str(&text).map_err(|e| DefinitionError::Parse {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let invalid = |message: String| DefinitionError::Invalid {
            path: path.clone(),
            message,
        };
        if file.families.is_empty() {
            return Err(invalid("no queue family is declared".into()));
        }
        let mut lists = BTreeSet::new();
        let mut types = BTreeSet::new();
        for (name, family) in &file.families {
            if family.lists.is_empty() {
                return Err(invalid(format!("family {name} declares no list")));
            }
            if family.max_attempts == 0 || family.timeout_s == 0 {
                return Err(invalid(format!(
                    "family {name}: max_attempts and timeout_s must be at least 1"
                )));
            }
            for list in &family.lists {
                if !lists.insert(list.clone()) {
                    return Err(invalid(format!("list {list} is declared twice")));
                }
            }
            for task_type in &family.types {
                if !types.insert(task_type.clone()) {
                    return Err(invalid(format!(
                        "type {task_type} is carried by two families"
                    )));
                }
            }
        }
        let mut schemas = BTreeMap::new();
        for task_type in types.iter().chain(file.everywhere.iter()) {
            schemas.insert(task_type.clone(), load_schema(dir, task_type)?);
        }
        Ok(Self {
            families: file.families,
            everywhere: file.everywhere.into_iter().collect(),
            schemas,
            dir: dir.to_path_buf(),
        })
    }

    /// Every list, families in name order, each family's lists in priority order.
    pub fn lists(&self) -> Vec<String> {
        self.families
            .values()
            .flat_map(|f| f.lists.iter().cloned())
            .collect()
    }

    /// Lists in the order a worker takes from them: every family's first (high) list, then every
    /// second list, and so on; so a `high` list always goes before its `normal` sibling, and one
    /// family's backlog does not starve another's high-priority work.
    pub fn claim_order(&self) -> Vec<String> {
        let depth = self
            .families
            .values()
            .map(|f| f.lists.len())
            .max()
            .unwrap_or(0);
        (0..depth)
            .flat_map(|level| {
                self.families
                    .values()
                    .filter_map(move |f| f.lists.get(level).cloned())
            })
            .collect()
    }

    /// The family that owns `list`.
    pub fn family_of_list(&self, list: &str) -> Option<(&str, &Family)> {
        self.families
            .iter()
            .find(|(_, f)| f.lists.iter().any(|l| l == list))
            .map(|(name, f)| (name.as_str(), f))
    }

    /// The list a task type is enqueued on at `priority` (`high` / `normal`).
    pub fn list_for(&self, task_type: &str, priority: &str) -> Option<String> {
        let family = self
            .families
            .values()
            .find(|f| f.types.iter().any(|t| t == task_type))
            .or_else(|| {
                self.everywhere
                    .contains(task_type)
                    .then(|| self.families.values().next())
                    .flatten()
            })?;
        family
            .lists
            .iter()
            .find(|l| l.ends_with(&format!(":{priority}")))
            .cloned()
    }

    /// The policy of `task_type` on `list`, or why it does not belong there.
    pub fn policy(&self, list: &str, task_type: &str) -> Result<Policy, String> {
        let Some((name, family)) = self.family_of_list(list) else {
            return Err(format!("list {list} is not declared"));
        };
        let known = self.schemas.contains_key(task_type);
        let carried = family.types.iter().any(|t| t == task_type);
        if !carried && !self.everywhere.contains(task_type) {
            return Err(if known {
                format!("task type {task_type} does not belong on {list} (family {name})")
            } else {
                format!("unknown task type {task_type}")
            });
        }
        Ok(Policy {
            max_attempts: family.max_attempts,
            timeout: Duration::from_secs(family.timeout_s),
            backoff: family.backoff,
        })
    }

    /// Checks `payload` against the schema of `task_type`; the error lists every violation.
    pub fn check_payload(&self, task_type: &str, payload: &Value) -> Result<(), String> {
        let Some(validator) = self.schemas.get(task_type) else {
            return Err(format!("unknown task type {task_type}"));
        };
        let problems: Vec<String> = validator
            .iter_errors(payload)
            .take(5)
            .map(|e| {
                let at = e.instance_path().to_string();
                if at.is_empty() {
                    e.to_string()
                } else {
                    format!("{at}: {e}")
                }
            })
            .collect();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "payload does not match the {task_type} schema: {}",
                problems.join("; ")
            ))
        }
    }

    /// Task types that have a schema, sorted.
    pub fn task_types(&self) -> impl Iterator<Item = &str> {
        self.schemas.keys().map(String::as_str)
    }

    /// The folder the declarations were read from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

fn load_schema(dir: &Path, task_type: &str) -> Result<jsonschema::Validator, DefinitionError> {
    let path = dir.join("schemas").join(format!("{task_type}.json"));
    let text = std::fs::read_to_string(&path).map_err(|source| DefinitionError::Read {
        path: path.clone(),
        source,
    })?;
    let schema: Value = serde_json::from_str(&text).map_err(|e| DefinitionError::Schema {
        path: path.clone(),
        message: e.to_string(),
    })?;
    jsonschema::validator_for(&schema).map_err(|e| DefinitionError::Schema {
        path,
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, yml: &str, schemas: &[(&str, &str)]) {
        std::fs::create_dir_all(dir.join("schemas")).unwrap();
        std::fs::write(dir.join("queues.yml"), yml).unwrap();
        for (name, text) in schemas {
            std::fs::write(dir.join("schemas").join(format!("{name}.json")), text).unwrap();
        }
    }

    const YML: &str = "families:\n  a:\n    lists: [q:a:high, q:a:normal]\n    types: [a.x]\n    max_attempts: 2\n    timeout_s: 5\n    backoff: {base_ms: 10, max_ms: 100}\n  b:\n    lists: [q:b:high, q:b:normal]\n    types: [b.y]\n    max_attempts: 2\n    timeout_s: 5\n    backoff: {base_ms: 10, max_ms: 100}\neverywhere: [system.ping]\n";
    const OBJ: &str =
        r#"{"type":"object","properties":{"n":{"type":"integer"}},"additionalProperties":false}"#;

    #[test]
    fn the_shipped_declarations_load() {
        let defs = Definitions::load(Path::new("queues")).unwrap();
        assert_eq!(
            &defs.claim_order()[..3],
            &[
                "queue:certificates:high",
                "queue:dns:high",
                "queue:provisioning:high"
            ]
        );
        assert_eq!(defs.lists().len(), 6);
    }

    #[test]
    fn high_lists_come_first_and_types_are_routed() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            YML,
            &[("a.x", OBJ), ("b.y", OBJ), ("system.ping", "{}")],
        );
        let defs = Definitions::load(dir.path()).unwrap();
        assert_eq!(
            defs.claim_order(),
            ["q:a:high", "q:b:high", "q:a:normal", "q:b:normal"]
        );
        assert!(defs.policy("q:a:normal", "a.x").is_ok());
        assert!(defs.policy("q:b:high", "system.ping").is_ok());
        assert!(
            defs.policy("q:b:high", "a.x")
                .unwrap_err()
                .contains("does not belong")
        );
        assert!(
            defs.policy("q:b:high", "zz.top")
                .unwrap_err()
                .contains("unknown task type")
        );
        assert_eq!(defs.list_for("b.y", "high").as_deref(), Some("q:b:high"));
        assert!(
            defs.check_payload("a.x", &serde_json::json!({"n": 1}))
                .is_ok()
        );
        let err = defs
            .check_payload("a.x", &serde_json::json!({"n": "one", "m": 2}))
            .unwrap_err();
        assert!(err.contains("/n"), "{err}");
    }

    #[test]
    fn refuses_bad_declarations_naming_the_fault() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "families: [", &[]);
        assert!(matches!(
            Definitions::load(dir.path()),
            Err(DefinitionError::Parse { .. })
        ));
        write(dir.path(), YML, &[("a.x", OBJ), ("system.ping", "{}")]);
        let err = Definitions::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("b.y.json"), "{err}");
        write(
            dir.path(),
            YML,
            &[
                ("a.x", "{\"type\": 12}"),
                ("b.y", OBJ),
                ("system.ping", "{}"),
            ],
        );
        let err = Definitions::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("not a valid JSON Schema"), "{err}");
        write(
            dir.path(),
            &YML.replace("q:b:high", "q:a:high"),
            &[("a.x", OBJ), ("b.y", OBJ), ("system.ping", "{}")],
        );
        let err = Definitions::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("declared twice"), "{err}");
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let b = Backoff {
            base_ms: 100,
            max_ms: 1000,
        };
        assert!(b.delay(1) <= Duration::from_millis(150));
        assert!(b.delay(1) >= Duration::from_millis(50));
        assert!(b.delay(3) >= Duration::from_millis(200));
        assert!(b.delay(20) <= Duration::from_millis(1000));
    }
}
