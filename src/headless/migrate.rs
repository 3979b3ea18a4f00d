//! `migrate` as text: each step, and how long it took (or, in a dry run, what would run).

use crate::engine::db::MigrateReport;

pub fn migrate_table(target: &str, r: &MigrateReport) -> String {
    let mut out = if r.dry_run {
        match r.steps.len() {
            0 => format!(
                "{target}: the schema is up to date ({} migrations); nothing to do\n",
                r.total
            ),
            n => format!("{target}: {n} step(s) would run (dry run: nothing changed)\n"),
        }
    } else if r.steps.is_empty() {
        format!(
            "{target}: the schema is up to date ({} migrations)\n",
            r.total
        )
    } else {
        format!(
            "migrated {target}: {} applied, {} total\n",
            r.applied, r.total
        )
    };
    if r.steps.is_empty() {
        return out;
    }
    let rows: Vec<Vec<String>> = r
        .steps
        .iter()
        .map(|s| {
            vec![
                if s.version == 0 {
                    "-".into()
                } else {
                    format!("{:04}", s.version)
                },
                s.description.clone(),
                if s.concurrently {
                    "concurrently".into()
                } else {
                    "in a transaction".into()
                },
                s.statements.to_string(),
                match (s.seconds, &s.note) {
                    (_, Some(note)) => note.clone(),
                    (Some(t), None) => format!("{t:.3} s"),
                    (None, None) => "pending".into(),
                },
            ]
        })
        .collect();
    out.push_str(&super::table(
        &["version", "step", "how", "statements", "took"],
        &[true, false, false, true, false],
        &rows,
    ));
    out
}
