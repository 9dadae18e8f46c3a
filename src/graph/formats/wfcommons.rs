//! WfCommons workflow instances (WfFormat, schema 1.x; written against 1.5).
//!
//! Tasks come from `workflow.specification.tasks` (`id`, `parents`, `inputFiles`,
//! `outputFiles`), file sizes from `workflow.specification.files`, run times from
//! `workflow.execution.tasks[].runtimeInSeconds` (joined by `id`). Each file becomes a
//! size-only datum; a task reads its input files and writes its output files, and runs after
//! its parents. Each task spins for its recorded run time.

use std::collections::HashMap;

use serde::Deserialize;

use super::{DataSpec, GraphSpec, LoadError, TaskSpec};

#[derive(Deserialize)]
struct Doc {
    name: Option<String>,
    #[serde(rename = "schemaVersion")]
    schema_version: Option<String>,
    workflow: Workflow,
}

#[derive(Deserialize)]
struct Workflow {
    specification: Specification,
    execution: Option<Execution>,
}

#[derive(Deserialize)]
struct Specification {
    tasks: Vec<SpecTask>,
    #[serde(default)]
    files: Vec<SpecFile>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SpecTask {
    id: String,
    #[serde(default)]
    parents: Vec<String>,
    #[serde(default)]
    input_files: Vec<String>,
    #[serde(default)]
    output_files: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SpecFile {
    id: String,
    size_in_bytes: u64,
}

#[derive(Deserialize)]
struct Execution {
    #[serde(default)]
    tasks: Vec<ExecTask>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ExecTask {
    id: String,
    runtime_in_seconds: f64,
}

pub(super) fn parse(file: &str, text: &str) -> Result<GraphSpec, LoadError> {
    let doc: Doc = serde_json::from_str(text).map_err(|e| LoadError::json(file, &e))?;
    if let Some(v) = &doc.schema_version {
        if !v.starts_with("1.") {
            return Err(LoadError::new(
                file,
                "schemaVersion",
                format!("schema {v} is not supported (1.x is)"),
            ));
        }
    }
    let spec = doc.workflow.specification;
    let mut sizes: HashMap<&str, u64> = HashMap::with_capacity(spec.files.len());
    for (i, f) in spec.files.iter().enumerate() {
        if sizes.insert(f.id.as_str(), f.size_in_bytes).is_some() {
            return Err(LoadError::new(
                file,
                format!("workflow.specification.files[{i}] ('{}')", f.id),
                "file declared twice",
            ));
        }
    }
    let mut runtimes: HashMap<&str, f64> = HashMap::new();
    if let Some(exec) = &doc.workflow.execution {
        for (i, t) in exec.tasks.iter().enumerate() {
            if let Err(why) = crate::limits::seconds(t.runtime_in_seconds) {
                return Err(LoadError::new(
                    file,
                    format!("workflow.execution.tasks[{i}] ('{}')", t.id),
                    format!("runtimeInSeconds: {why}"),
                ));
            }
            runtimes.insert(t.id.as_str(), t.runtime_in_seconds);
        }
    }
    let mut out = GraphSpec::new(doc.name.clone().or_else(|| Some(file.to_string())));
    let mut declared: HashMap<&str, ()> = HashMap::new();
    for (i, t) in spec.tasks.iter().enumerate() {
        let pos = || format!("workflow.specification.tasks[{i}] ('{}')", t.id);
        let seconds = *runtimes.get(t.id.as_str()).ok_or_else(|| {
            LoadError::new(
                file,
                pos(),
                "no runtimeInSeconds for this task in workflow.execution.tasks",
            )
        })?;
        let mut task = TaskSpec::replay(t.id.clone(), seconds);
        task.after = t.parents.clone();
        for (names, mode) in [(&t.input_files, "r"), (&t.output_files, "w")] {
            for f in names {
                let bytes = *sizes.get(f.as_str()).ok_or_else(|| {
                    LoadError::new(
                        file,
                        pos(),
                        format!("file '{f}' is not listed in workflow.specification.files"),
                    )
                })?;
                if declared.insert(f.as_str(), ()).is_none() {
                    out.data.push(DataSpec {
                        name: f.clone(),
                        elem: None,
                        len: None,
                        bytes: Some(bytes),
                        init: None,
                        read_only: false,
                        temp: false,
                    });
                }
                // A file listed twice in one task (as input and output) is read-write.
                if let Some(existing) = task.access.iter_mut().find(|(n, _)| n == f) {
                    existing.1 = "rw".into();
                } else {
                    task.access.push((f.clone(), mode.into()));
                }
            }
        }
        out.tasks.push(task);
    }
    Ok(out)
}
