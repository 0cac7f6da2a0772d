//! Charts as plain SVG polylines: latency over time (one chart per scenario and
//! condition, a line per transport) and goodput against loss.

use std::fmt::Write as _;

use super::report::RunResult;
use super::{Scenario, TransportKind};

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 340.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 150.0;
const TOP: f64 = 36.0;
const BOTTOM: f64 = 44.0;
/// Points per line at most: each is the worst latency of its slice of time.
const BUCKETS: usize = 240;

fn colour(t: TransportKind) -> &'static str {
    match t {
        TransportKind::Tls => "#d62728",
        TransportKind::QuicSingle => "#1f77b4",
        TransportKind::QuicMulti => "#2ca02c",
    }
}

/// Every chart for these results: (file name, SVG text).
pub fn charts(results: &[RunResult]) -> Vec<(String, String)> {
    let mut groups: Vec<(Scenario, String)> = Vec::new();
    for r in results.iter().filter(|r| r.ran && !r.series.is_empty()) {
        if !groups.contains(&(r.scenario, r.condition.clone())) {
            groups.push((r.scenario, r.condition.clone()));
        }
    }
    let mut out = Vec::new();
    for (scenario, condition) in groups {
        let runs: Vec<&RunResult> = results
            .iter()
            .filter(|r| r.ran && r.scenario == scenario && r.condition == condition)
            .collect();
        let name = match slug(&condition) {
            s if s.is_empty() => format!("latency-{}.svg", scenario.name()),
            s => format!("latency-{}-{s}.svg", scenario.name()),
        };
        let title = if condition.is_empty() {
            format!("{}: delivery latency over time", scenario.name())
        } else {
            format!(
                "{} ({condition}): delivery latency over time",
                scenario.name()
            )
        };
        out.push((name, latency_chart(&title, &runs)));
    }
    if let Some(chart) = goodput_chart(results) {
        out.push(("goodput-vs-loss.svg".to_string(), chart));
    }
    out
}

/// File-name form of a condition: `10% loss + 20% reorder` -> `10pct-loss-20pct-reorder`.
pub fn slug(condition: &str) -> String {
    let mut s = String::new();
    for c in condition.chars() {
        match c {
            '%' => s.push_str("pct"),
            c if c.is_ascii_alphanumeric() => s.push(c.to_ascii_lowercase()),
            _ if !s.ends_with('-') && !s.is_empty() => s.push('-'),
            _ => {}
        }
    }
    s.trim_end_matches('-').to_string()
}

fn latency_chart(title: &str, runs: &[&RunResult]) -> String {
    let x_max = runs
        .iter()
        .flat_map(|r| r.series.iter().map(|p| p.0))
        .fold(1.0_f64, f64::max);
    // (label, colour, points) per transport.
    type Line = (String, &'static str, Vec<(f64, f64)>);
    let lines: Vec<Line> = runs
        .iter()
        .map(|r| {
            (
                r.transport.name().to_string(),
                colour(r.transport),
                bucket_max(&r.series, x_max),
            )
        })
        .collect();
    let y_max = lines
        .iter()
        .flat_map(|l| l.2.iter().map(|p| p.1))
        .fold(1.0_f64, f64::max);
    let mut svg = Canvas::new(
        title,
        "seconds since start",
        "latency, ms (worst per slice)",
    );
    svg.axes(x_max, y_max);
    for (label, colour, points) in &lines {
        svg.polyline(points, x_max, y_max, colour);
        svg.legend(label, colour);
    }
    svg.finish()
}

fn goodput_chart(results: &[RunResult]) -> Option<String> {
    let loss: Vec<&RunResult> = results
        .iter()
        .filter(|r| r.ran && r.scenario == Scenario::Loss)
        .collect();
    if loss.is_empty() {
        return None;
    }
    let x_max = loss
        .iter()
        .filter_map(|r| r.extra("loss_pct"))
        .fold(1.0_f64, f64::max);
    let y_max = loss
        .iter()
        .filter_map(|r| r.goodput_msgs_per_s)
        .fold(1.0_f64, f64::max)
        * 1.1;
    let mut svg = Canvas::new(
        "goodput against loss (QoS 1, fixed offered rate)",
        "loss, %",
        "goodput, msg/s",
    );
    svg.axes(x_max, y_max);
    for transport in TransportKind::ALL {
        let mut plain: Vec<(f64, f64)> = Vec::new();
        let mut reordered: Vec<(f64, f64)> = Vec::new();
        for r in loss.iter().filter(|r| r.transport == transport) {
            let (Some(x), Some(y)) = (r.extra("loss_pct"), r.goodput_msgs_per_s) else {
                continue;
            };
            if r.extra("reorder_pct").unwrap_or(0.0) > 0.0 {
                reordered.push((x, y));
            } else {
                plain.push((x, y));
            }
        }
        if plain.is_empty() && reordered.is_empty() {
            continue;
        }
        plain.sort_by(|a, b| a.0.total_cmp(&b.0));
        let c = colour(transport);
        svg.polyline(&plain, x_max, y_max, c);
        for p in &plain {
            svg.marker(*p, x_max, y_max, c, false);
        }
        for p in &reordered {
            svg.marker(*p, x_max, y_max, c, true);
        }
        svg.legend(transport.name(), c);
    }
    svg.note("hollow: with 20% reordering");
    Some(svg.finish())
}

/// The worst value in each of `BUCKETS` equal slices of `0..x_max`, at the slice's end.
fn bucket_max(series: &[(f64, f64)], x_max: f64) -> Vec<(f64, f64)> {
    let width = x_max / BUCKETS as f64;
    let mut buckets: Vec<Option<f64>> = vec![None; BUCKETS + 1];
    for &(x, y) in series {
        let i = ((x / width) as usize).min(BUCKETS);
        buckets[i] = Some(buckets[i].map_or(y, |m: f64| m.max(y)));
    }
    buckets
        .iter()
        .enumerate()
        .filter_map(|(i, b)| b.map(|y| ((i as f64 + 0.5) * width, y)))
        .collect()
}

struct Canvas {
    body: String,
    legends: usize,
}

impl Canvas {
    fn new(title: &str, x_label: &str, y_label: &str) -> Canvas {
        let mut body = String::new();
        let _ = write!(
            body,
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{HEIGHT}\" \
             viewBox=\"0 0 {WIDTH} {HEIGHT}\" font-family=\"sans-serif\" font-size=\"12\">\n\
             <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
             <text x=\"{}\" y=\"20\" font-size=\"14\">{}</text>\n\
             <text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n\
             <text transform=\"translate(14 {}) rotate(-90)\" text-anchor=\"middle\">{}</text>\n",
            LEFT,
            escape(title),
            LEFT + plot_w() / 2.0,
            HEIGHT - 8.0,
            escape(x_label),
            TOP + plot_h() / 2.0,
            escape(y_label),
        );
        Canvas { body, legends: 0 }
    }

    fn axes(&mut self, x_max: f64, y_max: f64) {
        let (x0, y0) = (LEFT, TOP + plot_h());
        let _ = writeln!(
            self.body,
            "<path d=\"M{x0} {TOP} V{y0} H{}\" stroke=\"black\" fill=\"none\"/>",
            LEFT + plot_w()
        );
        for t in ticks(x_max) {
            let x = sx(t, x_max);
            let _ = writeln!(
                self.body,
                "<line x1=\"{x:.1}\" y1=\"{y0}\" x2=\"{x:.1}\" y2=\"{}\" stroke=\"black\"/>\
                 <text x=\"{x:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
                y0 + 4.0,
                y0 + 16.0,
                label(t)
            );
        }
        for t in ticks(y_max) {
            let y = sy(t, y_max);
            let _ = writeln!(
                self.body,
                "<line x1=\"{x0}\" y1=\"{y:.1}\" x2=\"{}\" y2=\"{y:.1}\" stroke=\"#ddd\"/>\
                 <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
                LEFT + plot_w(),
                x0 - 4.0,
                y + 4.0,
                label(t)
            );
        }
    }

    fn polyline(&mut self, points: &[(f64, f64)], x_max: f64, y_max: f64, colour: &str) {
        if points.is_empty() {
            return;
        }
        let coords: Vec<String> = points
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", sx(x, x_max), sy(y, y_max)))
            .collect();
        let _ = writeln!(
            self.body,
            "<polyline points=\"{}\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"1.5\"/>",
            coords.join(" ")
        );
    }

    fn marker(&mut self, (x, y): (f64, f64), x_max: f64, y_max: f64, colour: &str, hollow: bool) {
        let fill = if hollow { "white" } else { colour };
        let _ = writeln!(
            self.body,
            "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"4\" fill=\"{fill}\" stroke=\"{colour}\" stroke-width=\"1.5\"/>",
            sx(x, x_max),
            sy(y, y_max)
        );
    }

    fn legend(&mut self, label: &str, colour: &str) {
        let y = TOP + 10.0 + 18.0 * self.legends as f64;
        let x = WIDTH - RIGHT + 16.0;
        let _ = writeln!(
            self.body,
            "<line x1=\"{x}\" y1=\"{y}\" x2=\"{}\" y2=\"{y}\" stroke=\"{colour}\" stroke-width=\"3\"/>\
             <text x=\"{}\" y=\"{}\">{}</text>",
            x + 20.0,
            x + 26.0,
            y + 4.0,
            escape(label)
        );
        self.legends += 1;
    }

    fn note(&mut self, text: &str) {
        let y = TOP + 10.0 + 18.0 * self.legends as f64 + 8.0;
        let _ = writeln!(
            self.body,
            "<text x=\"{}\" y=\"{y}\" font-size=\"10\">{}</text>",
            WIDTH - RIGHT + 16.0,
            escape(text)
        );
    }

    fn finish(mut self) -> String {
        self.body.push_str("</svg>\n");
        self.body
    }
}

fn plot_w() -> f64 {
    WIDTH - LEFT - RIGHT
}

fn plot_h() -> f64 {
    HEIGHT - TOP - BOTTOM
}

fn sx(x: f64, x_max: f64) -> f64 {
    LEFT + plot_w() * (x / x_max).clamp(0.0, 1.0)
}

fn sy(y: f64, y_max: f64) -> f64 {
    TOP + plot_h() * (1.0 - (y / y_max).clamp(0.0, 1.0))
}

/// About five round ticks from 0 to `max`.
fn ticks(max: f64) -> Vec<f64> {
    let raw = max / 5.0;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw)
        .unwrap_or(magnitude * 10.0);
    (0..=((max / step).floor() as usize))
        .map(|i| i as f64 * step)
        .collect()
}

fn label(v: f64) -> String {
    if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_ticks_and_buckets() {
        assert_eq!(slug("10% loss + 20% reorder"), "10pct-loss-20pct-reorder");
        assert_eq!(slug("NAT rebinding"), "nat-rebinding");
        assert_eq!(ticks(10.0), vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        assert_eq!(ticks(0.7).len(), 4);
        let b = bucket_max(&[(0.0, 1.0), (0.001, 9.0), (5.0, 2.0)], 10.0);
        assert_eq!(b.len(), 2);
        assert_eq!(b[0].1, 9.0);
    }

    #[test]
    fn a_chart_per_scenario_and_condition_and_one_for_goodput() {
        let run = |transport, condition: &str, loss: f64| RunResult {
            scenario: Scenario::Loss,
            transport,
            condition: condition.into(),
            ran: true,
            goodput_msgs_per_s: Some(100.0 - loss),
            extra: vec![("loss_pct", loss)],
            series: vec![(0.1, 2.0), (1.0, 3.0)],
            ..RunResult::default()
        };
        let results = vec![
            run(TransportKind::QuicSingle, "0% loss", 0.0),
            run(TransportKind::QuicMulti, "0% loss", 0.0),
            run(TransportKind::QuicMulti, "5% loss", 5.0),
        ];
        let charts = charts(&results);
        let names: Vec<&str> = charts.iter().map(|c| c.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "latency-loss-0pct-loss.svg",
                "latency-loss-5pct-loss.svg",
                "goodput-vs-loss.svg"
            ]
        );
        assert!(charts[0].1.contains("<polyline"));
        assert!(charts[0].1.ends_with("</svg>\n"));
    }
}
