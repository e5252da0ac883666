//! A [`Snapshot`] as Prometheus text (with the `prometheus-client` crate's encoder) and as
//! JSON (with `serde_json`): the same figures, the same names.

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, MetricEncoder},
    metrics::MetricType,
    registry::Registry,
};
use serde_json::{json, Map, Value};

use super::{Histogram, Snapshot};

/// The Prometheus text exposition format (version 0.0.4) of `snapshot`. Counter names are
/// given without `_total`: the encoder appends it.
pub fn prometheus(snapshot: &Snapshot) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Figures(snapshot.clone())));
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry);
    out
}

/// A snapshot, encoded on scrape.
#[derive(Debug)]
struct Figures(Snapshot);

/// Upload, download: the `direction` label values.
const DIRECTIONS: [&str; 2] = ["upload", "download"];

fn family<'a>(
    encoder: &'a mut DescriptorEncoder,
    name: &'a str,
    help: &str,
    kind: MetricType,
) -> Result<MetricEncoder<'a>, std::fmt::Error> {
    encoder.encode_descriptor(name, help, None, kind)
}

/// A gauge family with one sample per `(direction, value)`.
fn direction_gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    values: &[(&str, f64)],
) -> Result<(), std::fmt::Error> {
    let mut gauge = family(encoder, name, help, MetricType::Gauge)?;
    for (direction, value) in values {
        gauge
            .encode_family(&[("direction", *direction)])?
            .encode_gauge(value)?;
    }
    Ok(())
}

/// The encoder adds the buckets up itself: it takes each bucket's own count.
fn histogram(encoder: &mut MetricEncoder, histogram: &Histogram) -> Result<(), std::fmt::Error> {
    let buckets: Vec<(f64, u64)> = histogram
        .counts
        .iter()
        .enumerate()
        .map(|(index, &count)| {
            let bound = histogram
                .bounds
                .get(index)
                .copied()
                .unwrap_or(f64::INFINITY);
            (bound, count)
        })
        .collect();
    encoder.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
        histogram.sum,
        histogram.count(),
        &buckets,
        None,
    )
}

impl Collector for Figures {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.0;
        family(
            &mut encoder,
            "fyntr_build_info",
            "The running fyntr: its version and I/O backend (always 1).",
            MetricType::Gauge,
        )?
        .encode_family(&[("version", s.version), ("backend", s.backend)])?
        .encode_gauge(&1i64)?;
        family(
            &mut encoder,
            "fyntr_active_connections",
            "Client connections admitted now, pending requests included.",
            MetricType::Gauge,
        )?
        .encode_gauge(&(s.active_connections as i64))?;
        family(
            &mut encoder,
            "fyntr_connection_cap",
            "The connection cap in force.",
            MetricType::Gauge,
        )?
        .encode_gauge(&(s.connection_cap as i64))?;
        let mut open = family(
            &mut encoder,
            "fyntr_open_tunnels",
            "Established tunnels (and plain HTTP connections) relaying now.",
            MetricType::Gauge,
        )?;
        for (protocol, count) in &s.open_tunnels {
            open.encode_family(&[("protocol", protocol.name())])?
                .encode_gauge(count)?;
        }
        let mut connections = family(
            &mut encoder,
            "fyntr_connections",
            "Client connections that ended, by protocol and how they ended.",
            MetricType::Counter,
        )?;
        for (protocol, ending, count) in &s.connections {
            connections
                .encode_family(&[("protocol", protocol.name()), ("outcome", ending.name())])?
                .encode_counter::<prometheus_client::encoding::NoLabelSet, _, u64>(count, None)?;
        }
        let mut refused = family(
            &mut encoder,
            "fyntr_refused",
            "Refused requests, by protocol and answer (HTTP status, SOCKS5 reply, or none).",
            MetricType::Counter,
        )?;
        for (protocol, refusal, count) in &s.refused {
            let status = refusal.label();
            refused
                .encode_family(&[("protocol", protocol.name()), ("status", status.as_str())])?
                .encode_counter::<prometheus_client::encoding::NoLabelSet, _, u64>(count, None)?;
        }
        family(
            &mut encoder,
            "fyntr_http_requests",
            "Plain HTTP requests forwarded and answered.",
            MetricType::Counter,
        )?
        .encode_counter::<prometheus_client::encoding::NoLabelSet, _, u64>(
            &s.http_requests,
            None,
        )?;
        let mut bytes = family(
            &mut encoder,
            "fyntr_bytes",
            "Bytes relayed, by protocol and direction (upload: client to destination).",
            MetricType::Counter,
        )?;
        for (protocol, counts) in &s.bytes {
            for (direction, count) in DIRECTIONS.iter().zip(counts) {
                bytes
                    .encode_family(&[("protocol", protocol.name()), ("direction", direction)])?
                    .encode_counter::<prometheus_client::encoding::NoLabelSet, _, u64>(
                        count, None,
                    )?;
            }
        }
        histogram(
            &mut family(
                &mut encoder,
                "fyntr_upstream_connect_seconds",
                "Time to establish an upstream connection (resolution included).",
                MetricType::Histogram,
            )?,
            &s.connect_time,
        )?;
        histogram(
            &mut family(
                &mut encoder,
                "fyntr_tunnel_duration_seconds",
                "How long tunnels lasted, from the client's connection to the close.",
                MetricType::Histogram,
            )?,
            &s.tunnel_duration,
        )?;
        let mut rate = family(
            &mut encoder,
            "fyntr_pacing_rate_bytes_per_second",
            "The pacing rate in force on the wire; absent while a direction is not limited.",
            MetricType::Gauge,
        )?;
        for (direction, pacing) in DIRECTIONS.iter().zip(&s.pacing) {
            if let Some(value) = pacing.rate {
                rate.encode_family(&[("direction", *direction), ("mode", pacing.mode)])?
                    .encode_gauge(&value)?;
            }
        }
        let mut backlog = family(
            &mut encoder,
            "fyntr_drr_backlog_bytes",
            "Bytes waiting for a Deficit Round-Robin grant, all workers.",
            MetricType::Gauge,
        )?;
        for (direction, pacing) in DIRECTIONS.iter().zip(&s.pacing) {
            backlog
                .encode_family(&[("direction", *direction)])?
                .encode_gauge(&(pacing.backlog as i64))?;
        }
        let autos: Vec<_> = DIRECTIONS
            .iter()
            .zip(&s.pacing)
            .filter_map(|(direction, pacing)| pacing.auto.map(|auto| (*direction, auto)))
            .collect();
        let by_direction = |value: fn(&super::AutoEstimate) -> Option<f64>| -> Vec<(&str, f64)> {
            autos
                .iter()
                .filter_map(|(direction, auto)| value(auto).map(|value| (*direction, value)))
                .collect()
        };
        direction_gauge(
            &mut encoder,
            "fyntr_auto_delivery_rate_bytes_per_second",
            "With auto pacing: what the path delivered lately (the estimated bottleneck rate while paced).",
            &by_direction(|auto| Some(auto.delivery_rate)),
        )?;
        direction_gauge(
            &mut encoder,
            "fyntr_auto_base_rtt_seconds",
            "With auto pacing: the path's base round trip, once measured.",
            &by_direction(|auto| auto.base_rtt.map(|rtt| rtt.as_secs_f64())),
        )?;
        direction_gauge(
            &mut encoder,
            "fyntr_auto_queue_delay_seconds",
            "With auto pacing: the queueing delay on the path, once measured.",
            &by_direction(|auto| auto.queue_delay.map(|delay| delay.as_secs_f64())),
        )?;
        let mut reloads = family(
            &mut encoder,
            "fyntr_reloads",
            "Settings reloads, by result.",
            MetricType::Counter,
        )?;
        for (result, count) in ["applied", "refused"].iter().zip(&s.reloads) {
            reloads
                .encode_family(&[("result", *result)])?
                .encode_counter::<prometheus_client::encoding::NoLabelSet, _, u64>(count, None)?;
        }
        Ok(())
    }
}

/// The same figures as [`prometheus`], as one JSON object keyed by the series names.
pub fn json(s: &Snapshot) -> String {
    let by_protocol = |pairs: Vec<(&str, Value)>| -> Value {
        Value::Object(
            pairs
                .into_iter()
                .map(|(key, value)| (key.to_string(), value))
                .collect::<Map<_, _>>(),
        )
    };
    let histogram = |histogram: &Histogram| {
        json!({
            "count": histogram.count(),
            "sum": histogram.sum,
            "buckets": histogram
                .cumulative()
                .iter()
                .map(|(bound, count)| json!({
                    "le": if bound.is_finite() { json!(bound) } else { json!("+Inf") },
                    "count": count,
                }))
                .collect::<Vec<_>>(),
        })
    };
    let pacing: Map<String, Value> = DIRECTIONS
        .iter()
        .zip(&s.pacing)
        .map(|(direction, pacing)| {
            (
                direction.to_string(),
                json!({
                    "mode": pacing.mode,
                    "rate_bytes_per_second": pacing.rate,
                    "drr_backlog_bytes": pacing.backlog,
                    "auto": pacing.auto.map(|auto| json!({
                        "delivery_rate_bytes_per_second": auto.delivery_rate,
                        "base_rtt_seconds": auto.base_rtt.map(|rtt| rtt.as_secs_f64()),
                        "queue_delay_seconds": auto.queue_delay.map(|delay| delay.as_secs_f64()),
                    })),
                }),
            )
        })
        .collect();
    let value = json!({
        "fyntr_build_info": { "version": s.version, "backend": s.backend },
        "fyntr_active_connections": s.active_connections,
        "fyntr_connection_cap": s.connection_cap,
        "fyntr_open_tunnels": by_protocol(
            s.open_tunnels.iter().map(|(protocol, count)| (protocol.name(), json!(count))).collect()
        ),
        "fyntr_connections_total": by_protocol(
            crate::metrics::Protocol::ALL.iter().map(|protocol| {
                let endings: Map<String, Value> = s
                    .connections
                    .iter()
                    .filter(|(each, _, _)| each == protocol)
                    .map(|(_, ending, count)| (ending.name().to_string(), json!(count)))
                    .collect();
                (protocol.name(), Value::Object(endings))
            }).collect()
        ),
        "fyntr_refused_total": s.refused.iter().map(|(protocol, refusal, count)| json!({
            "protocol": protocol.name(),
            "status": refusal.label(),
            "count": count,
        })).collect::<Vec<_>>(),
        "fyntr_http_requests_total": s.http_requests,
        "fyntr_bytes_total": by_protocol(
            s.bytes.iter().map(|(protocol, [up, down])| {
                (protocol.name(), json!({ "upload": up, "download": down }))
            }).collect()
        ),
        "fyntr_upstream_connect_seconds": histogram(&s.connect_time),
        "fyntr_tunnel_duration_seconds": histogram(&s.tunnel_duration),
        "pacing": pacing,
        "fyntr_reloads_total": { "applied": s.reloads[0], "refused": s.reloads[1] },
    });
    let mut text = value.to_string();
    text.push('\n');
    text
}
