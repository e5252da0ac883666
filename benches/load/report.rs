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
    round: usize,
}

/// One metric of one mode over all rounds.
struct Summary {
    unit: &'static str,
    higher_is_better: bool,
    /// Median over the rounds.
    value: f64,
    /// Per round, in round order.
    values: Vec<f64>,
    /// Ratios to the direct run of the same round (none for proxy-only metrics).
    ratios: Vec<f64>,
}

impl Summary {
    /// The median of the per-round ratios.
    fn ratio(&self) -> Option<f64> {
        (!self.ratios.is_empty()).then(|| median(&self.ratios))
    }

    /// The lowest and highest per-round ratio, when there were several rounds.
    fn ratio_range(&self) -> Option<(f64, f64)> {
        (self.ratios.len() > 1).then(|| {
            let low = self.ratios.iter().copied().fold(f64::INFINITY, f64::min);
            let high = self
                .ratios
                .iter()
                .copied()
                .fold(f64::NEG_INFINITY, f64::max);
            (low, high)
        })
    }
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let middle = sorted.len() / 2;
    if sorted.len() % 2 == 0 {
        (sorted[middle - 1] + sorted[middle]) / 2.0
    } else {
        sorted[middle]
    }
}

/// Everything measured in one run.
#[derive(Default)]
pub struct Results {
    rows: Vec<Row>,
    modes: Vec<&'static str>,
}

impl Results {
    pub fn record(&mut self, scenario: &Scenario, mode: &Mode, round: usize, metrics: Vec<Metric>) {
        if !self.modes.contains(&mode.name()) {
            self.modes.push(mode.name());
        }
        for metric in metrics {
            self.rows.push(Row {
                scenario: scenario.name,
                metric,
                mode: mode.name(),
                round,
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

    fn rows_of<'a>(
        &'a self,
        key: (&'a str, &'a str),
        mode: &'a str,
    ) -> impl Iterator<Item = &'a Row> {
        self.rows.iter().filter(move |row| {
            row.scenario == key.0 && row.metric.name == key.1 && row.mode == mode
        })
    }

    /// A mode's metric over the rounds; ratios pair each round with direct's run in that round.
    fn summary(&self, key: (&str, &str), mode: &str) -> Option<Summary> {
        let rows: Vec<&Row> = self.rows_of(key, mode).collect();
        let first = rows.first()?;
        let values: Vec<f64> = rows.iter().map(|row| row.metric.value).collect();
        let ratios = rows
            .iter()
            .filter(|row| !row.metric.proxy_only)
            .filter_map(|row| {
                let direct = self.rows_of(key, "direct").find(|d| d.round == row.round)?;
                (direct.metric.value > 0.0).then(|| row.metric.value / direct.metric.value)
            })
            .collect();
        Some(Summary {
            unit: first.metric.unit,
            higher_is_better: first.metric.higher_is_better,
            value: median(&values),
            values,
            ratios,
        })
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
                let Some(summary) = self.summary(key, mode) else {
                    table.push_str(" - |");
                    continue;
                };
                let _ = write!(table, " {:.3}", summary.value);
                match (summary.ratio(), summary.ratio_range()) {
                    (Some(ratio), Some((low, high))) if *mode != "direct" => {
                        let _ = write!(table, " ({ratio:.2}x; {low:.2}-{high:.2})");
                    }
                    (Some(ratio), None) if *mode != "direct" => {
                        let _ = write!(table, " ({ratio:.2}x)");
                    }
                    _ => {}
                }
                table.push_str(" |");
            }
            table.push('\n');
        }
        println!("{table}");
    }

    /// `mode` against `baseline`, round by round: the median and range of the ratios of their
    /// runs in the same round (higher is better for every metric as printed: a latency or CPU
    /// ratio is taken the other way up). Nothing when either did not run.
    pub fn print_paired(&self, mode: &str, baseline: &str) {
        if !self.modes.contains(&mode) || !self.modes.contains(&baseline) {
            return;
        }
        let mut table = format!(
            "{mode} against {baseline}, per round (above 1: {mode} did better)\n\n| scenario / metric | median | range | rounds |\n|---|---|---|---|\n"
        );
        for key in self.keys() {
            let ratios: Vec<f64> = self
                .rows_of(key, mode)
                .filter_map(|row| {
                    let base = self.rows_of(key, baseline).find(|b| b.round == row.round)?;
                    let (better, worse) = if row.metric.higher_is_better {
                        (row.metric.value, base.metric.value)
                    } else {
                        (base.metric.value, row.metric.value)
                    };
                    (worse > 0.0).then(|| better / worse)
                })
                .collect();
            if ratios.is_empty() {
                continue;
            }
            let low = ratios.iter().copied().fold(f64::INFINITY, f64::min);
            let high = ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let _ = writeln!(
                table,
                "| {} / {} | {:.3} | {low:.2}-{high:.2} | {} |",
                key.0,
                key.1,
                median(&ratios),
                ratios.len()
            );
        }
        println!("{table}");
    }

    pub fn write_json(&self, path: &Path) {
        let list = |values: &[f64]| {
            let items: Vec<String> = values.iter().map(|v| format!("{v:.6}")).collect();
            format!("[{}]", items.join(", "))
        };
        let mut entries = Vec::new();
        for key in self.keys() {
            for mode in &self.modes {
                let Some(summary) = self.summary(key, mode) else {
                    continue;
                };
                let ratio = summary
                    .ratio()
                    .map_or("null".to_string(), |r| format!("{r:.4}"));
                entries.push(format!(
                    "  {{\"scenario\": \"{}\", \"metric\": \"{}\", \"unit\": \"{}\", \"mode\": \"{mode}\", \"value\": {:.6}, \"ratio_to_direct\": {ratio}, \"higher_is_better\": {}, \"rounds\": {}, \"values\": {}, \"ratios\": {}}}",
                    key.0,
                    key.1,
                    summary.unit,
                    summary.value,
                    summary.higher_is_better,
                    summary.values.len(),
                    list(&summary.values),
                    list(&summary.ratios),
                ));
            }
        }
        let json = format!("[\n{}\n]\n", entries.join(",\n"));
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
                self.rows_of(*k, "direct")
                    .next()
                    .is_some_and(|r| !r.metric.proxy_only)
            })
            .collect();
        let bar = 14.0;
        let group = bar * proxies.len() as f64 + 12.0;
        let (left, width) = (230.0, 460.0);
        let height = 60.0 + group * keys.len() as f64 + 20.0 * proxies.len() as f64;
        let max_ratio = keys
            .iter()
            .flat_map(|key| {
                proxies
                    .iter()
                    .filter_map(|mode| self.summary(*key, mode)?.ratio())
            })
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
                if let Some(ratio) = self.summary(*key, proxy).and_then(|s| s.ratio()) {
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
