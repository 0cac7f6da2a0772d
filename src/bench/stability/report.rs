//! One [`RunResult`] per scenario, condition and transport, and the files a run writes:
//! `report.json` (a list of results), `report.md` (a table) and the SVG charts.

use std::fmt::Write as _;
use std::io;
use std::path::Path;

use super::{svg, Scenario, TransportKind};

/// The figures of one run. Counts are per (message, subscriber it is addressed to), so
/// `sent = delivered + lost + never acknowledged`.
#[derive(Debug, Clone, Default)]
pub struct RunResult {
    pub scenario: Scenario,
    pub transport: TransportKind,
    /// The variant of the scenario, e.g. `5% loss` or `NAT rebinding`; empty if none.
    pub condition: String,
    /// False when the run needs something missing here (the notes say what).
    pub ran: bool,
    pub sent: u64,
    /// Acknowledged to the publisher (PUBACK / PUBCOMP).
    pub acked: u64,
    pub delivered: u64,
    /// Acknowledged and never delivered: must be 0 for QoS 1/2.
    pub lost: u64,
    /// Copies beyond what the QoS allows: a second QoS 2 copy, a QoS 1 copy not marked DUP.
    pub duplicated: u64,
    /// QoS 1 copies marked DUP (allowed).
    pub redelivered: u64,
    pub out_of_order: u64,
    pub reconnects: u64,
    /// Clients left without progress at the end: a subscriber still missing acknowledged
    /// messages or a publisher still waiting for acknowledgements after the drain.
    pub stalled_sessions: u64,
    /// Gaps between two deliveries to one subscriber longer than the stall threshold.
    pub stall_episodes: u64,
    pub recovery_ms_p50: Option<f64>,
    pub recovery_ms_p99: Option<f64>,
    pub latency_ms_p50: Option<f64>,
    pub latency_ms_p99: Option<f64>,
    pub latency_ms_max: Option<f64>,
    pub goodput_msgs_per_s: Option<f64>,
    pub broker_cpu_s: Option<f64>,
    pub broker_rss_bytes: Option<u64>,
    /// Datagrams the bench's relay dropped on purpose (loss, queue, blackhole).
    pub udp_injected_drops: Option<u64>,
    /// The kernel's UDP receive drops (InErrors, RcvbufErrors) during the run.
    pub udp_kernel_drops: Option<u64>,
    /// Scenario-specific figures, written as extra JSON fields.
    pub extra: Vec<(&'static str, f64)>,
    pub notes: Vec<String>,
    /// (seconds since the start, latency in ms) of measured deliveries, for the charts.
    pub series: Vec<(f64, f64)>,
}

impl RunResult {
    pub fn not_run(
        scenario: Scenario,
        transport: TransportKind,
        condition: &str,
        why: &str,
    ) -> RunResult {
        RunResult {
            scenario,
            transport,
            condition: condition.to_string(),
            ran: false,
            notes: vec![format!("not run: {why}")],
            ..RunResult::default()
        }
    }

    /// A run of `env`'s case that ran: its message counts and its delivery latencies
    /// (sorted, in ms).
    pub(crate) fn measured(
        env: &super::runner::Env,
        totals: &super::ledger::Totals,
        latencies: &[f64],
    ) -> RunResult {
        RunResult {
            scenario: env.case.scenario,
            transport: env.case.transport,
            condition: env.label.clone(),
            ran: true,
            sent: totals.sent,
            acked: totals.acked,
            delivered: totals.delivered,
            lost: totals.lost,
            duplicated: totals.duplicated,
            redelivered: totals.redelivered,
            out_of_order: totals.out_of_order,
            latency_ms_p50: super::ledger::percentile(latencies, 50.0),
            latency_ms_p99: super::ledger::percentile(latencies, 99.0),
            latency_ms_max: latencies.last().copied(),
            ..RunResult::default()
        }
    }

    pub fn extra(&self, key: &str) -> Option<f64> {
        self.extra.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
    }

    fn to_json(&self) -> String {
        let mut o = JsonObject::default();
        o.str("scenario", self.scenario.name());
        o.str("transport", self.transport.name());
        o.str("condition", &self.condition);
        o.raw("ran", if self.ran { "true" } else { "false" });
        let count = |v: u64| self.ran.then_some(v);
        o.uint("sent", count(self.sent));
        o.uint("acked", count(self.acked));
        o.uint("delivered", count(self.delivered));
        o.uint("lost", count(self.lost));
        o.uint("duplicated", count(self.duplicated));
        o.uint("redelivered", count(self.redelivered));
        o.uint("out_of_order", count(self.out_of_order));
        o.uint("reconnects", count(self.reconnects));
        o.uint("stalled_sessions", count(self.stalled_sessions));
        o.uint("stall_episodes", count(self.stall_episodes));
        o.num("recovery_ms_p50", self.recovery_ms_p50);
        o.num("recovery_ms_p99", self.recovery_ms_p99);
        o.num("latency_ms_p50", self.latency_ms_p50);
        o.num("latency_ms_p99", self.latency_ms_p99);
        o.num("latency_ms_max", self.latency_ms_max);
        o.num("goodput_msgs_per_s", self.goodput_msgs_per_s);
        o.num("broker_cpu_s", self.broker_cpu_s);
        o.uint("broker_rss_bytes", self.broker_rss_bytes);
        o.uint("udp_injected_drops", self.udp_injected_drops);
        o.uint("udp_kernel_drops", self.udp_kernel_drops);
        for (key, value) in &self.extra {
            o.num(key, Some(*value));
        }
        o.str("notes", &self.notes.join("; "));
        o.finish()
    }
}

/// Every result of an invocation.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub results: Vec<RunResult>,
    /// What the run was: broker, duration, machine.
    pub setup: Vec<String>,
}

impl Report {
    pub fn json(&self) -> String {
        let rows: Vec<String> = self
            .results
            .iter()
            .map(|r| format!("  {}", r.to_json()))
            .collect();
        format!("[\n{}\n]\n", rows.join(",\n"))
    }

    pub fn markdown(&self) -> String {
        let mut md = String::new();
        for line in &self.setup {
            let _ = writeln!(md, "{line}  ");
        }
        if !self.setup.is_empty() {
            md.push('\n');
        }
        md.push_str(
            "| scenario | condition | transport | sent | delivered | lost | dup | ooo | \
             reconn | stalled | recovery p50/p99 ms | latency p50/p99/max ms | goodput msg/s | \
             broker CPU s | RSS MiB | UDP drops inj/kernel |\n",
        );
        md.push_str("|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n");
        for r in &self.results {
            if !r.ran {
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} |||||||||||||",
                    r.scenario.name(),
                    r.condition,
                    r.transport.name(),
                    cell(&r.notes.join("; "))
                );
                continue;
            }
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {}/{} | {}/{}/{} | {} | {} | {} | {}/{} |",
                r.scenario.name(),
                r.condition,
                r.transport.name(),
                r.sent,
                r.delivered,
                r.lost,
                r.duplicated,
                r.out_of_order,
                r.reconnects,
                r.stalled_sessions,
                ms(r.recovery_ms_p50),
                ms(r.recovery_ms_p99),
                ms(r.latency_ms_p50),
                ms(r.latency_ms_p99),
                ms(r.latency_ms_max),
                r.goodput_msgs_per_s.map_or("–".into(), |g| format!("{g:.0}")),
                r.broker_cpu_s.map_or("–".into(), |c| format!("{c:.2}")),
                r.broker_rss_bytes
                    .map_or("–".into(), |b| format!("{:.0}", b as f64 / 1048576.0)),
                opt(r.udp_injected_drops),
                opt(r.udp_kernel_drops),
            );
        }
        let notes: Vec<String> = self
            .results
            .iter()
            .filter(|r| r.ran && !r.notes.is_empty())
            .map(|r| {
                format!(
                    "- **{} {} {}**: {}",
                    r.scenario.name(),
                    r.condition,
                    r.transport.name(),
                    cell(&r.notes.join("; "))
                )
            })
            .collect();
        if !notes.is_empty() {
            md.push_str("\nNotes:\n\n");
            md.push_str(&notes.join("\n"));
            md.push('\n');
        }
        md
    }

    /// Writes `report.json`, `report.md` and the charts into `dir`; returns the chart
    /// file names.
    pub fn write(&self, dir: &Path) -> io::Result<Vec<String>> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("report.json"), self.json())?;
        std::fs::write(dir.join("report.md"), self.markdown())?;
        let mut charts = Vec::new();
        for (name, body) in svg::charts(&self.results) {
            std::fs::write(dir.join(&name), body)?;
            charts.push(name);
        }
        Ok(charts)
    }
}

/// Text that cannot break a table row.
fn cell(text: &str) -> String {
    text.replace('|', "/").replace('\n', " ")
}

fn ms(v: Option<f64>) -> String {
    match v {
        None => "–".into(),
        Some(v) if v >= 100.0 => format!("{v:.0}"),
        Some(v) => format!("{v:.1}"),
    }
}

fn opt(v: Option<u64>) -> String {
    v.map_or("–".into(), |v| v.to_string())
}

/// A JSON object written field by field (the report needs nothing more).
#[derive(Default)]
struct JsonObject {
    fields: Vec<String>,
}

impl JsonObject {
    fn raw(&mut self, key: &str, value: &str) {
        self.fields.push(format!("{}: {value}", quote(key)));
    }

    fn str(&mut self, key: &str, value: &str) {
        self.raw(key, &quote(value));
    }

    fn uint(&mut self, key: &str, value: Option<u64>) {
        match value {
            Some(v) => self.raw(key, &v.to_string()),
            None => self.raw(key, "null"),
        }
    }

    fn num(&mut self, key: &str, value: Option<f64>) {
        match value.filter(|v| v.is_finite()) {
            Some(v) => self.raw(key, &format!("{}", (v * 1000.0).round() / 1000.0)),
            None => self.raw(key, "null"),
        }
    }

    fn finish(self) -> String {
        format!("{{{}}}", self.fields.join(", "))
    }
}

fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_has_the_named_fields_nulls_for_runs_not_made_and_escapes() {
        let ran = RunResult {
            scenario: Scenario::Loss,
            transport: TransportKind::QuicMulti,
            condition: "5% loss".into(),
            ran: true,
            sent: 10,
            delivered: 10,
            latency_ms_p50: Some(1.23456),
            extra: vec![("loss_pct", 5.0)],
            notes: vec!["a \"quoted\" note".into()],
            ..RunResult::default()
        };
        let skipped = RunResult::not_run(
            Scenario::Loss,
            TransportKind::Tls,
            "5% loss",
            "needs the impairment link",
        );
        let report = Report {
            results: vec![ran, skipped],
            setup: vec![],
        };
        let json = report.json();
        for field in [
            "\"scenario\": \"loss\"",
            "\"transport\": \"quic-multi\"",
            "\"sent\": 10",
            "\"latency_ms_p50\": 1.235",
            "\"loss_pct\": 5",
            "\"goodput_msgs_per_s\": null",
            "a \\\"quoted\\\" note",
            "\"transport\": \"tls\", \"condition\": \"5% loss\", \"ran\": false, \"sent\": null",
            "not run: needs the impairment link",
        ] {
            assert!(json.contains(field), "{field} in {json}");
        }
        let md = report.markdown();
        assert!(
            md.contains("| loss | 5% loss | quic-multi | 10 | 10 | 0 |"),
            "{md}"
        );
        assert!(md.contains("not run: needs the impairment link"));
    }
}
