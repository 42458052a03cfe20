//! `--svg DIR`: the report's charts as SVG files, drawn with plotters.
//!
//! - `SCENARIO-latency.svg`: the added-latency distribution of each target (percentile on a
//!   "nines" axis: 0, 90, 99, 99.9, 99.99 %, max), log-scaled microseconds;
//! - with `--ramp`, `SCENARIO-cpu.svg`: the target's CPU per forwarded packet (per mixed
//!   participant-frame for mixes) against the load, one line per target;
//! - with `--ramp`, `SCENARIO-ramp.svg`: loss and p99 latency against the load, with the
//!   capacity each target reached.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use plotters::prelude::*;

use crate::report::{Report, TargetReport};

const COLOURS: [RGBColor; 4] = [
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0x94, 0x67, 0xbd),
];

fn colour(i: usize) -> RGBColor {
    COLOURS[i % COLOURS.len()]
}

fn who(t: &TargetReport) -> String {
    t.name.clone().unwrap_or_else(|| t.address.clone())
}

fn who_label(report: &Report, label: &str) -> String {
    report
        .targets
        .iter()
        .find(|t| t.label == label)
        .map_or_else(|| label.to_string(), who)
}

/// `-log10(1 - q)`, capped at 5 (the maximum).
fn nines(q: f64) -> f64 {
    if q >= 0.99999 {
        5.0
    } else {
        -(1.0 - q).log10()
    }
}

fn plot_err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow::anyhow!("drawing a chart: {e:?}")
}

/// Draws every chart `report` has data for into `dir`; returns the files written.
pub fn write_charts(report: &Report, dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut written = Vec::new();
    let name = &report.scenario;
    if report
        .targets
        .iter()
        .any(|t| !t.latency_distribution.is_empty())
    {
        let path = dir.join(format!("{name}-latency.svg"));
        latency_chart(report, &path)?;
        written.push(path);
    }
    if !report.ramp.is_empty() {
        let path = dir.join(format!("{name}-cpu.svg"));
        cpu_chart(report, &path)?;
        written.push(path);
        let path = dir.join(format!("{name}-ramp.svg"));
        ramp_chart(report, &path)?;
        written.push(path);
    }
    Ok(written)
}

fn latency_chart(report: &Report, path: &Path) -> Result<()> {
    let root = SVGBackend::new(path, (800, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let top = report
        .targets
        .iter()
        .flat_map(|t| t.latency_distribution.iter().map(|&(_, us)| us))
        .max()
        .unwrap_or(1)
        .max(10) as f64
        * 1.5;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("{}: added latency distribution", report.scenario),
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..5.2f64, (1f64..top).log_scale())
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("added latency (µs)")
        .x_labels(6)
        .y_label_formatter(&|y| format!("{y:.0}"))
        .x_label_formatter(&|x| match x.round() as i64 {
            0 => "0".into(),
            1 => "90".into(),
            2 => "99".into(),
            3 => "99.9".into(),
            4 => "99.99".into(),
            _ => "max".into(),
        })
        .draw()
        .map_err(plot_err)?;
    for (i, t) in report.targets.iter().enumerate() {
        let c = colour(i);
        let points: Vec<(f64, f64)> = t
            .latency_distribution
            .iter()
            .map(|&(q, us)| (nines(q), (us as f64).max(1.0)))
            .collect();
        chart
            .draw_series(LineSeries::new(points, c.stroke_width(2)).point_size(3))
            .map_err(plot_err)?
            .label(who(t))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(plot_err)?;
    root.present().map_err(plot_err)?;
    Ok(())
}

/// Per target label: `(load, value)` of every ramp step that has `value`.
fn ramp_series(
    report: &Report,
    value: impl Fn(&crate::report::RampStep) -> Option<f64>,
) -> Vec<(String, Vec<(f64, f64)>)> {
    let mut labels: Vec<String> = Vec::new();
    for s in &report.ramp {
        if !labels.contains(&s.label) {
            labels.push(s.label.clone());
        }
    }
    labels
        .into_iter()
        .map(|label| {
            let points = report
                .ramp
                .iter()
                .filter(|s| s.label == label)
                .filter_map(|s| value(s).map(|v| (f64::from(s.calls), v)))
                .collect();
            (label, points)
        })
        .collect()
}

fn xy_panel(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    title: &str,
    y_desc: &str,
    report: &Report,
    series: &[(String, Vec<(f64, f64)>)],
) -> Result<()> {
    let x_max = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|&(x, _)| x))
        .fold(1.0f64, f64::max)
        * 1.05;
    let y_max = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|&(_, y)| y))
        .fold(0.0f64, f64::max)
        .max(1e-3)
        * 1.15;
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..x_max, 0f64..y_max)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .x_desc("concurrent calls")
        .y_desc(y_desc)
        .draw()
        .map_err(plot_err)?;
    for (i, (label, points)) in series.iter().enumerate() {
        let c = colour(i);
        chart
            .draw_series(LineSeries::new(points.clone(), c.stroke_width(2)).point_size(3))
            .map_err(plot_err)?
            .label(who_label(report, label))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(plot_err)?;
    Ok(())
}

fn cpu_chart(report: &Report, path: &Path) -> Result<()> {
    let root = SVGBackend::new(path, (800, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let mixed = report
        .ramp
        .iter()
        .any(|s| s.target_cpu_us_per_mixed_frame.is_some());
    let series = ramp_series(report, |s| {
        if mixed {
            s.target_cpu_us_per_mixed_frame
        } else {
            s.target_cpu_us_per_packet
        }
    });
    let y = if mixed {
        "CPU µs per mixed participant-frame"
    } else {
        "CPU µs per forwarded packet"
    };
    xy_panel(
        &root,
        &format!("{}: target CPU against load", report.scenario),
        y,
        report,
        &series,
    )?;
    root.present().map_err(plot_err)?;
    Ok(())
}

fn ramp_chart(report: &Report, path: &Path) -> Result<()> {
    let root = SVGBackend::new(path, (800, 720)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let (upper, lower) = root.split_vertically(360);
    let capacity: Vec<String> = report
        .capacity
        .iter()
        .map(|c| {
            format!(
                "{} {}",
                who_label(report, &c.label),
                c.calls.map_or("-".into(), |n| n.to_string())
            )
        })
        .collect();
    xy_panel(
        &upper,
        &format!(
            "{}: capacity ramp (capacity: {})",
            report.scenario,
            capacity.join(", ")
        ),
        "loss (%)",
        report,
        &ramp_series(report, |s| Some(s.loss_ratio * 100.0)),
    )?;
    xy_panel(
        &lower,
        "p99 added latency",
        "p99 (ms)",
        report,
        &ramp_series(report, |s| Some(s.p99_us as f64 / 1_000.0)),
    )?;
    root.present().map_err(plot_err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{Capacity, Figures, Measurement, RampStep};

    #[test]
    fn draws_every_chart() {
        let mut m = Measurement::new(10, 20);
        for v in [100, 200, 300, 5_000] {
            m.latency_us.record(v).unwrap();
        }
        let mut report = Report::new("relay", serde_json::json!({}));
        for label in ["A", "B"] {
            report.targets.push(TargetReport {
                label: label.into(),
                name: Some(format!("relay {label}")),
                address: "127.0.0.1:1".into(),
                pid: None,
                runs: 1,
                figures: Figures::from_measurement(&m),
                latency_distribution: crate::report::distribution(&m.latency_us),
            });
            for calls in [100, 200] {
                report.ramp.push(RampStep {
                    label: label.into(),
                    calls,
                    loss_ratio: 0.0,
                    p99_us: 900,
                    target_cpu_us_per_packet: Some(4.5),
                    target_cpu_us_per_mixed_frame: None,
                    target_cpu_cores: Some(0.3),
                    passed: true,
                });
            }
            report.capacity.push(Capacity {
                label: label.into(),
                calls: Some(200),
                stopped: "reached --ramp-max".into(),
            });
        }
        let dir = std::env::temp_dir().join(format!("sbl-charts-{}", std::process::id()));
        let files = write_charts(&report, &dir).unwrap();
        assert_eq!(files.len(), 3);
        for f in &files {
            let svg = std::fs::read_to_string(f).unwrap();
            assert!(
                svg.starts_with("<svg") || svg.contains("<svg"),
                "{}",
                f.display()
            );
            assert!(svg.contains("relay B"));
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
