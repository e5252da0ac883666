//! The table, the JSON and the SVG chart.

use std::{fmt::Write as _, path::Path};

use crate::{
    proxies::Mode,
    scenarios::{Metric, Scenario},
};

#[derive(Clone, Debug)]
struct Row {
    scenario: &'static str,
    metric: Metric,
    mode: &'static str,
}

/// Everything measured in one run.
#[derive(Default)]
pub struct Results {
    rows: Vec<Row>,
    modes: Vec<&'static str>,
}

impl Results {
    pub fn record(&mut self, scenario: &Scenario, mode: &Mode, metrics: Vec<Metric>) {
        if !self.modes.contains(&mode.name()) {
            self.modes.push(mode.name());
        }
        for metric in metrics {
            self.rows.push(Row {
                scenario: scenario.name,
                metric,
                mode: mode.name(),
            });
        }
    }

    /// The (scenario, metric) pairs in order of first appearance.
    fn keys(&self) -> Vec<(&'static str, &'static str)> {
        let mut keys = Vec::new();
        for row in &self.rows {
            if !keys.contains(&(row.scenario, row.metric.name)) {
                keys.push((row.scenario, row.metric.name));
            }
        }
        keys
    }

    fn find(&self, key: (&str, &str), mode: &str) -> Option<&Row> {
        self.rows
            .iter()
            .find(|row| row.scenario == key.0 && row.metric.name == key.1 && row.mode == mode)
    }

    /// The value relative to direct for the same metric, when that makes sense.
    fn ratio(&self, row: &Row) -> Option<f64> {
        if row.metric.proxy_only {
            return None;
        }
        let direct = self.find((row.scenario, row.metric.name), "direct")?;
        (direct.metric.value > 0.0).then(|| row.metric.value / direct.metric.value)
    }

    pub fn print(&self) {
        let mut table = String::new();
        let _ = write!(table, "| scenario / metric | unit |");
        for mode in &self.modes {
            let _ = write!(table, " {mode} |");
        }
        table.push('\n');
        table.push_str(&"|---".repeat(self.modes.len() + 2));
        table.push_str("|\n");
        for key in self.keys() {
            let unit = self
                .rows
                .iter()
                .find(|r| (r.scenario, r.metric.name) == key)
                .map_or("", |r| r.metric.unit);
            let _ = write!(table, "| {} / {} | {unit} |", key.0, key.1);
            for mode in &self.modes {
                match self.find(key, mode) {
                    Some(row) => match self.ratio(row) {
                        Some(ratio) if *mode != "direct" => {
                            let _ = write!(table, " {:.3} ({ratio:.2}x) |", row.metric.value);
                        }
                        _ => {
                            let _ = write!(table, " {:.3} |", row.metric.value);
                        }
                    },
                    None => table.push_str(" - |"),
                }
            }
            table.push('\n');
        }
        println!("{table}");
    }

    pub fn write_json(&self, path: &Path) {
        let mut json = String::from("[\n");
        for (i, row) in self.rows.iter().enumerate() {
            let ratio = self
                .ratio(row)
                .map_or("null".to_string(), |r| format!("{r:.4}"));
            let _ = writeln!(
                json,
                "  {{\"scenario\": \"{}\", \"metric\": \"{}\", \"unit\": \"{}\", \"mode\": \"{}\", \"value\": {:.6}, \"ratio_to_direct\": {ratio}, \"higher_is_better\": {}}}{}",
                row.scenario,
                row.metric.name,
                row.metric.unit,
                row.mode,
                row.metric.value,
                row.metric.higher_is_better,
                if i + 1 < self.rows.len() { "," } else { "" }
            );
        }
        json.push_str("]\n");
        std::fs::write(path, json).expect("write load.json");
    }

    /// Horizontal bars: for each metric with a ratio, one bar per proxy mode; a line at 1.0
    /// (direct).
    pub fn write_svg(&self, path: &Path) {
        let colours = [
            "#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02",
        ];
        let proxies: Vec<&str> = self
            .modes
            .iter()
            .copied()
            .filter(|m| *m != "direct")
            .collect();
        let keys: Vec<_> = self
            .keys()
            .into_iter()
            .filter(|k| {
                self.find(*k, "direct")
                    .is_some_and(|r| !r.metric.proxy_only)
            })
            .collect();
        let bar = 14.0;
        let group = bar * proxies.len() as f64 + 12.0;
        let (left, width) = (230.0, 460.0);
        let height = 60.0 + group * keys.len() as f64 + 20.0 * proxies.len() as f64;
        let max_ratio = self
            .rows
            .iter()
            .filter_map(|row| self.ratio(row))
            .fold(1.5f64, f64::max)
            .min(10.0);
        let x = |ratio: f64| left + width * (ratio.min(max_ratio) / max_ratio);
        let mut svg = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"10\" y=\"18\" font-size=\"14\">fyntr load benchmark: ratio to a direct connection (throughput: higher is better; latency: lower)</text>\n",
            left + width + 80.0
        );
        for (k, key) in keys.iter().enumerate() {
            let top = 40.0 + group * k as f64;
            let _ = writeln!(
                svg,
                "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{} / {}</text>",
                left - 6.0,
                top + group / 2.0,
                key.0,
                key.1
            );
            for (p, proxy) in proxies.iter().enumerate() {
                if let Some(ratio) = self.find(*key, proxy).and_then(|row| self.ratio(row)) {
                    let y = top + bar * p as f64;
                    let _ = writeln!(
                        svg,
                        "<rect x=\"{left}\" y=\"{y}\" width=\"{:.1}\" height=\"{}\" fill=\"{}\"/><text x=\"{:.1}\" y=\"{}\">{ratio:.2}</text>",
                        x(ratio) - left,
                        bar - 2.0,
                        colours[p % colours.len()],
                        x(ratio) + 3.0,
                        y + bar - 4.0
                    );
                }
            }
        }
        let bottom = 40.0 + group * keys.len() as f64;
        let _ = writeln!(svg, "<line x1=\"{0}\" y1=\"35\" x2=\"{0}\" y2=\"{bottom}\" stroke=\"black\" stroke-dasharray=\"4\"/>", x(1.0));
        for (p, proxy) in proxies.iter().enumerate() {
            let y = bottom + 16.0 + 18.0 * p as f64;
            let _ = writeln!(svg, "<rect x=\"{left}\" y=\"{}\" width=\"12\" height=\"12\" fill=\"{}\"/><text x=\"{}\" y=\"{}\">{proxy}</text>", y - 10.0, colours[p % colours.len()], left + 18.0, y);
        }
        svg.push_str("</svg>\n");
        std::fs::write(path, svg).expect("write load.svg");
    }
}
