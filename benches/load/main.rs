//! The load benchmark: fyntr side by side with a direct connection and its peers, on loopback.
//!
//! ```text
//! cargo bench --bench load -- [--quick] [--rounds N] [--only SCENARIO,...] [--modes MODE,...]
//!                              [--out DIR]
//! ```
//!
//! Every scenario runs against each mode in the same run: `direct` (no proxy), `fyntr-io-uring`,
//! `fyntr-tokio`, and when installed `fyntr-0.4.8` (`$FYNTR_UPSTREAM` or
//! `/tmp/fyntr-0.4.8/bin/fyntr`), `tinyproxy` and `squid`; by name only, `fyntr-io-uring-copy`
//! (`--zero-copy off`) and `fyntr-io-uring-unpaced` (`--upload-rate off --download-rate off`,
//! to see what the default `auto` costs). It prints one table of values and
//! ratios to direct, writes `load.json`, and draws `load.svg` (ratios per scenario and mode).
//! With `--rounds N` each scenario runs N rounds of every mode in turn, each round starting one
//! mode further along the list (direct, fyntr, ...; then fyntr, ..., direct), and the table gives
//! medians: a mode's ratio is the median of its ratios to the direct run of the same round, with
//! their range, so that the machine's drift during a run (other tenants, thermal, sockets left
//! in TIME-WAIT by the mode before) weighs on every mode alike rather than on whichever runs
//! last. When both `fyntr-io-uring` and `fyntr-io-uring-unpaced` ran, a second table pairs them
//! round by round: what the default `auto` costs where nothing is congested.
//! The `syscalls` scenario counts the proxy's system calls per relayed message with `strace`
//! (see `syscalls.rs`).
//! Each scenario is bounded in time and count; the load generator and its targets run in this
//! process, on loopback only.

#![allow(missing_docs, unreachable_pub)] // a benchmark binary, not a library

mod proxies;
mod report;
mod scenarios;
mod syscalls;
mod targets;

use std::{path::PathBuf, time::Duration};

use proxies::Mode;

/// Command-line options.
pub struct Options {
    /// Shorter runs, for the CI smoke test.
    pub quick: bool,
    /// Scenarios to run (all when empty).
    pub only: Vec<String>,
    /// Modes to run (all available when empty).
    pub modes: Vec<String>,
    /// Where to write load.json and load.svg.
    pub out: PathBuf,
    /// Rounds of every mode per scenario.
    pub rounds: usize,
}

impl Options {
    fn parse() -> Options {
        let mut options = Options {
            quick: false,
            only: Vec::new(),
            modes: Vec::new(),
            out: PathBuf::from("target/load"),
            rounds: 1,
        };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--quick" => options.quick = true,
                "--only" => options.only = split(args.next()),
                "--modes" => options.modes = split(args.next()),
                "--out" => options.out = PathBuf::from(args.next().expect("--out DIR")),
                "--rounds" => {
                    options.rounds = args
                        .next()
                        .and_then(|n| n.parse().ok())
                        .filter(|&n| n > 0)
                        .expect("--rounds N, N at least 1")
                }
                "--bench" => {} // added by `cargo bench`
                other => {
                    panic!("unknown option {other}; see the doc comment of benches/load/main.rs")
                }
            }
        }
        options
    }

    /// How long a timed scenario runs.
    pub fn duration(&self) -> Duration {
        if self.quick {
            Duration::from_millis(300)
        } else {
            Duration::from_secs(3)
        }
    }
}

fn split(value: Option<String>) -> Vec<String> {
    value
        .unwrap_or_default()
        .split(',')
        .filter(|part| !part.is_empty())
        .map(str::to_string)
        .collect()
}

fn main() {
    let mut options = Options::parse();
    if cfg!(debug_assertions) {
        // `cargo test --all-targets` runs this unoptimised, against a debug build of fyntr: a
        // full run would take minutes to measure nothing, so it is the quick smoke run, and
        // its output does not replace a real run's.
        options.quick = true;
        options.out = PathBuf::from("target/load-debug");
    } else {
        proxies::use_the_shipped_binary();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let targets = targets::Targets::start().await;
        let modes = proxies::available(&options.modes);
        for wanted in &options.modes {
            if !modes.iter().any(|mode| mode.name() == wanted) {
                eprintln!("mode {wanted} is unknown or not installed here: left out");
            }
        }
        let mut results = report::Results::default();
        for scenario in scenarios::ALL {
            if !options.only.is_empty() && !options.only.iter().any(|name| name == scenario.name) {
                continue;
            }
            for round in 0..options.rounds {
                for mode in modes
                    .iter()
                    .cycle()
                    .skip(round % modes.len().max(1))
                    .take(modes.len())
                {
                    let proxy = match mode {
                        Mode::Direct => None,
                        other => match proxies::Running::start(other, &targets) {
                            Ok(proxy) => Some(proxy),
                            Err(error) => {
                                eprintln!(
                                    "{}: {} not started: {error}",
                                    scenario.name,
                                    other.name()
                                );
                                continue;
                            }
                        },
                    };
                    eprintln!(
                        "running {} / {} (round {})",
                        scenario.name,
                        mode.name(),
                        round + 1
                    );
                    let measured = (scenario.run)(&options, &targets, proxy.as_ref()).await;
                    results.record(scenario, mode, round, measured);
                }
            }
        }
        results.print();
        results.print_paired("fyntr-io-uring", "fyntr-io-uring-unpaced");
        std::fs::create_dir_all(&options.out).expect("output directory");
        results.write_json(&options.out.join("load.json"));
        results.write_svg(&options.out.join("load.svg"));
        eprintln!("wrote {}/load.json and load.svg", options.out.display());
    });
}
