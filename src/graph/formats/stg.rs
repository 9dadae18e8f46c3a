//! Standard Task Graph Set files (Kasahara lab).
//!
//! Line 1: N. Then N+2 lines `id cost n_preds pred...` (task 0 and N+1 are zero-cost entry
//! and exit; ids ascend and predecessors come first). Footer lines start with `#`; when the
//! footer gives `CP Length`, the loader checks the file against it. Costs are unitless: hexec
//! reads one unit as one millisecond (then `--time-scale` applies), and refuses costs over
//! [`MAX_COST`] (the longest duration hexec accepts) and critical paths that overflow.

use super::{GraphSpec, LoadError, TaskSpec};

/// Seconds per STG time unit.
pub const STG_UNIT_S: f64 = 1e-3;

/// The largest cost a task may have: [`crate::limits::MAX_DURATION_S`] in units (10¹²
/// units, about 31.7 years). Larger ones are mistakes, and `u64::MAX` would spin for ever.
pub const MAX_COST: u64 = 1_000_000_000_000;

pub(super) fn parse(file: &str, text: &str) -> Result<GraphSpec, LoadError> {
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'));
    let (hl, header) = lines
        .next()
        .ok_or_else(|| LoadError::new(file, "line 1", "empty file"))?;
    let n: usize = header.trim().parse().map_err(|_| {
        LoadError::new(
            file,
            format!("line {}", hl + 1),
            format!("expected the task count, found '{}'", header.trim()),
        )
    })?;
    let total = n
        .checked_add(2)
        .ok_or_else(|| LoadError::new(file, "line 1", "task count too large"))?;
    // Never trust the header for an allocation: bound it by the file's size.
    let mut costs: Vec<u64> = Vec::with_capacity(total.min(text.len() / 4 + 1));
    let mut preds: Vec<Vec<usize>> = Vec::with_capacity(costs.capacity());
    for (ln, line) in lines.by_ref() {
        if costs.len() == total {
            return Err(LoadError::new(
                file,
                format!("line {}", ln + 1),
                format!("more task lines than the {n} + 2 the header announces"),
            ));
        }
        let pos = || format!("line {}", ln + 1);
        let nums: Vec<u64> = line
            .split_whitespace()
            .map(|t| {
                t.parse::<u64>()
                    .map_err(|_| LoadError::new(file, pos(), format!("'{t}' is not a non-negative integer")))
            })
            .collect::<Result<_, _>>()?;
        let [id, cost, np, rest @ ..] = nums.as_slice() else {
            return Err(LoadError::new(
                file,
                pos(),
                "a task line needs: id cost n_predecessors [predecessors...]",
            ));
        };
        if *cost > MAX_COST {
            return Err(LoadError::new(
                file,
                pos(),
                format!("cost {cost} is over the limit of {MAX_COST} units (one unit is a millisecond)"),
            ));
        }
        let id = *id as usize;
        if id != costs.len() {
            return Err(LoadError::new(
                file,
                pos(),
                format!("task id {id} out of order (expected {})", costs.len()),
            ));
        }
        if rest.len() as u64 != *np {
            return Err(LoadError::new(
                file,
                pos(),
                format!("task {id} announces {np} predecessors but lists {}", rest.len()),
            ));
        }
        let mut p = Vec::with_capacity(rest.len());
        for &q in rest {
            if q as usize >= id {
                return Err(LoadError::new(
                    file,
                    pos(),
                    format!("task {id} names predecessor {q}, which does not come before it"),
                ));
            }
            p.push(q as usize);
        }
        costs.push(*cost);
        preds.push(p);
    }
    if costs.len() != total {
        return Err(LoadError::new(
            file,
            "end of file",
            format!("{} task lines, the header announces {n} + 2", costs.len()),
        ));
    }
    // Check the critical path against the footer, when it has one.
    if let Some(cp) = text
        .lines()
        .find_map(|l| l.trim_start().strip_prefix('#').and_then(cp_length))
    {
        let computed = critical_path(&costs, &preds).map_err(|t| {
            LoadError::new(
                file,
                "footer",
                format!("the critical path up to task {t} overflows a 64-bit count of units"),
            )
        })?;
        if computed != cp {
            return Err(LoadError::new(
                file,
                "footer",
                format!("the critical path of the listed tasks is {computed}, the footer says CP Length {cp}"),
            ));
        }
    }
    let mut spec = GraphSpec::new(Some(file.to_string()));
    for t in 0..total {
        let name = if t == 0 {
            "entry".to_string()
        } else if t == total - 1 {
            "exit".to_string()
        } else {
            format!("t{t}")
        };
        let mut task = TaskSpec::replay(name, costs[t] as f64 * STG_UNIT_S);
        task.after = preds[t].iter().map(|&p| spec.tasks[p].name.clone()).collect();
        spec.tasks.push(task);
    }
    Ok(spec)
}

/// The longest path's cost, or the task where it passes `u64::MAX`: checked, because costs
/// within [`MAX_COST`] over some 2·10⁷ chained tasks (a 700 MB file) still overflow, and a
/// wrapped sum would compare as anything.
fn critical_path(costs: &[u64], preds: &[Vec<usize>]) -> Result<u64, usize> {
    let mut finish = vec![0u64; costs.len()];
    for t in 0..costs.len() {
        let start = preds[t].iter().map(|&p| finish[p]).max().unwrap_or(0);
        finish[t] = costs[t].checked_add(start).ok_or(t)?;
    }
    Ok(finish.iter().copied().max().unwrap_or(0))
}

fn cp_length(comment: &str) -> Option<u64> {
    let (key, value) = comment.split_once(':')?;
    (key.trim() == "CP Length").then(|| value.trim().parse().ok()).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn critical_paths_never_wrap() {
        let preds = vec![vec![], vec![0], vec![1], vec![0]];
        assert_eq!(critical_path(&[1, 2, 3, 10], &preds), Ok(11));
        assert_eq!(critical_path(&[u64::MAX / 2, u64::MAX / 2, 2, 0], &preds), Err(2));
    }

    #[test]
    fn costs_over_the_limit_are_refused() {
        let e = parse("x.stg", &format!("1\n0 0 0\n1 {} 1 0\n2 0 1 1\n", MAX_COST + 1)).unwrap_err();
        assert_eq!(e.position, "line 3");
        assert!(e.reason.contains("over the limit"), "{e}");
        assert!(parse("x.stg", &format!("1\n0 0 0\n1 {MAX_COST} 1 0\n2 0 1 1\n")).is_ok());
    }
}
