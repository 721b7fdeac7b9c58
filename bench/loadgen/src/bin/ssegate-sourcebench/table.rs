//! The results file (one JSON line per run) as one Markdown table.

use std::collections::HashMap;
use std::path::Path;

use serde_json::Value;

pub fn table(file: &Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(file)?;
    let rows: Vec<Value> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    println!(
        "| how the {} users get new rows | delivered | latency p50 | p99 | max | DB statements/s | DB commits/s | PostgreSQL CPU | ssegate CPU |",
        rows.first().and_then(|r| r["users"].as_u64()).unwrap_or(0)
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let ms = |v: &Value| {
        let n = v.as_f64().unwrap_or(0.0);
        if n >= 1000.0 {
            format!("{:.2} s", n / 1000.0)
        } else {
            format!("{n:.0} ms")
        }
    };
    let mut by_label: HashMap<String, usize> = HashMap::new();
    for r in &rows {
        *by_label
            .entry(r["label"].as_str().unwrap_or("").to_owned())
            .or_default() += 1;
        println!(
            "| {} | {}/{} | {} | {} | {} | {:.1} | {:.1} | {:.1} % | {} |",
            r["label"].as_str().unwrap_or(""),
            r["delivered"],
            r["expected"],
            ms(&r["p50_ms"]),
            ms(&r["p99_ms"]),
            ms(&r["max_ms"]),
            r["statements_per_s"].as_f64().unwrap_or(0.0),
            r["commits_per_s"].as_f64().unwrap_or(0.0),
            r["pg_cpu_pct"].as_f64().unwrap_or(0.0),
            r["gateway_cpu_pct"]
                .as_f64()
                .map_or("—".to_owned(), |c| format!("{c:.1} %")),
        );
    }
    if by_label.values().any(|&n| n > 1) {
        eprintln!("note: some labels appear more than once (several runs in one file)");
    }
    Ok(())
}
