//! Dask graph dumps (`shared/workloads/dask`): `{"meta": {...}, "tasks": [{"id", "key",
//! "func", "deps", "duration_s", "output_bytes"}]}`, usually gzipped.
//!
//! Each task writes a size-only datum of `output_bytes` and reads those of its `deps`, which
//! gives exactly the graph's edges. Each task spins for `duration_s`.

use std::collections::HashMap;

use serde::Deserialize;

use super::{DataSpec, GraphSpec, LoadError, TaskSpec};

#[derive(Deserialize)]
struct Doc {
    #[serde(default)]
    meta: Meta,
    tasks: Vec<Task>,
}

#[derive(Deserialize, Default)]
struct Meta {
    name: Option<String>,
}

#[derive(Deserialize)]
struct Task {
    id: u64,
    key: Option<String>,
    #[serde(default)]
    deps: Vec<u64>,
    #[serde(default)]
    duration_s: f64,
    #[serde(default)]
    output_bytes: u64,
}

pub(super) fn parse(file: &str, text: &str) -> Result<GraphSpec, LoadError> {
    let doc: Doc = serde_json::from_str(text).map_err(|e| LoadError::json(file, &e))?;
    let mut names: HashMap<u64, String> = HashMap::with_capacity(doc.tasks.len());
    for (i, t) in doc.tasks.iter().enumerate() {
        let name = t.key.clone().unwrap_or_else(|| format!("task-{}", t.id));
        if names.insert(t.id, name).is_some() {
            return Err(LoadError::new(
                file,
                format!("tasks[{i}]"),
                format!("task id {} appears twice", t.id),
            ));
        }
    }
    let out_name = |id: u64| format!("out:{id}");
    let mut spec = GraphSpec::new(doc.meta.name.clone().or_else(|| Some(file.to_string())));
    for (i, t) in doc.tasks.iter().enumerate() {
        let pos = || format!("tasks[{i}] ('{}')", names[&t.id]);
        if let Err(why) = crate::limits::seconds(t.duration_s) {
            return Err(LoadError::new(file, pos(), format!("duration_s: {why}")));
        }
        spec.data.push(DataSpec {
            name: out_name(t.id),
            elem: None,
            len: None,
            bytes: Some(t.output_bytes),
            init: None,
            read_only: false,
            temp: false,
        });
        let mut task = TaskSpec::replay(names[&t.id].clone(), t.duration_s);
        for &d in &t.deps {
            let dep = names
                .get(&d)
                .ok_or_else(|| LoadError::new(file, pos(), format!("depends on task id {d}, which does not exist")))?;
            if d == t.id {
                return Err(LoadError::new(file, pos(), "depends on itself"));
            }
            task.access.push((out_name(d), "r".into()));
            task.after.push(dep.clone());
        }
        task.access.push((out_name(t.id), "w".into()));
        spec.tasks.push(task);
    }
    Ok(spec)
}
