//! The figures of `bench/REPORT.md`, drawn as SVG from the same `results.json` as its tables:
//! per-packet cost against the empty program, the DNS learning latency and the race's connect
//! time as CDFs, and the throughput rounds.

use std::path::Path;

use anyhow::Context as _;
use plotters::prelude::*;
use serde_json::Value;

const SIZE: (u32, u32) = (900, 520);
const COLORS: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
];

/// The series' legend, in the lower right corner.
fn legend<'a, X: Ranged, Y: Ranged>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, Cartesian2d<X, Y>>,
) -> anyhow::Result<()> {
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()?;
    Ok(())
}

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

/// Writes every figure into `dir` and returns the Markdown that shows them (one line each).
pub(crate) fn write_all(dir: &Path, r: &Value) -> anyhow::Result<Vec<(&'static str, String)>> {
    let mut out = Vec::new();
    if per_packet(&dir.join("per_packet.svg"), r)? {
        out.push((
            "per_packet",
            "![Per-packet cost against the empty program](per_packet.svg)".into(),
        ));
    }
    if cdfs(&dir.join("learning_cdf.svg"), r)? {
        out.push((
            "learning",
            "![DNS learning latency, CDF](learning_cdf.svg)".into(),
        ));
    }
    if race(&dir.join("race_cdf.svg"), r)? {
        out.push((
            "race",
            "![Connect time of the race, CDF](race_cdf.svg)".into(),
        ));
    }
    if throughput(&dir.join("throughput.svg"), r)? {
        out.push(("throughput", "![Throughput rounds](throughput.svg)".into()));
    }
    Ok(out)
}

/// Horizontal bars, log scale: each case's ns per packet by learned-prefix count, and the empty
/// program's time on the same frame as a black tick.
fn per_packet(path: &Path, r: &Value) -> anyhow::Result<bool> {
    let rows: Vec<&Value> = r["per_packet"].as_array().into_iter().flatten().collect();
    if rows.is_empty() {
        return Ok(false);
    }
    let mut cases: Vec<String> = Vec::new();
    for row in &rows {
        let c = row["case"].as_str().unwrap_or("?").to_owned();
        if !cases.contains(&c) {
            cases.push(c);
        }
    }
    let prefixes = [10u64, 100_000, 1_000_000];
    let max = rows
        .iter()
        .map(|r| num(&r["ns_per_packet"]))
        .fold(1.0, f64::max);
    let root = SVGBackend::new(path, (SIZE.0, 40 + 28 * cases.len() as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    let labels = cases.clone();
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "ns per packet (log scale); black tick: the empty program",
            ("sans-serif", 16),
        )
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(330)
        .build_cartesian_2d((1.0f64..max * 2.0).log_scale(), 0f64..cases.len() as f64)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(cases.len() * 2 + 1)
        .y_label_formatter(&|y| {
            let i = (*y - 0.5).round();
            if (*y - 0.5 - i).abs() < 1e-6 && i >= 0.0 {
                labels.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .x_desc("ns")
        .draw()?;
    for (k, p) in prefixes.iter().enumerate() {
        let color = COLORS[k];
        let bars: Vec<Rectangle<(f64, f64)>> = rows
            .iter()
            .filter(|r| r["learned_prefixes"].as_u64() == Some(*p))
            .filter_map(|r| {
                let i = cases.iter().position(|c| r["case"] == c.as_str())? as f64;
                let y0 = i + 0.1 + 0.27 * k as f64;
                Some(Rectangle::new(
                    [(1.0, y0), (num(&r["ns_per_packet"]).max(1.0), y0 + 0.25)],
                    color.filled(),
                ))
            })
            .collect();
        chart
            .draw_series(bars)?
            .label(format!("{p} learned prefixes"))
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
    }
    let ticks = rows.iter().filter_map(|r| {
        let i = cases.iter().position(|c| r["case"] == c.as_str())? as f64;
        let e = num(&r["empty_ns"]);
        Some(PathElement::new(
            vec![(e, i + 0.05), (e, i + 0.95)],
            BLACK.stroke_width(2),
        ))
    });
    chart.draw_series(ticks)?;
    legend(&mut chart)?;
    root.present().context("per_packet.svg")?;
    Ok(true)
}

/// One CDF line per series: `(label, percentiles 0..=100)` in `unit`.
fn cdf_chart(
    path: &Path,
    title: &str,
    unit: &str,
    series: &[(String, Vec<f64>)],
) -> anyhow::Result<()> {
    let max = series
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .fold(1.0, f64::max);
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(50)
        .build_cartesian_2d((1.0f64..max * 1.5).log_scale(), 0f64..100.0)?;
    chart
        .configure_mesh()
        .x_desc(format!("{unit} (log scale)"))
        .y_desc("percentile")
        .draw()?;
    for (k, (label, v)) in series.iter().enumerate() {
        let color = COLORS[k % COLORS.len()];
        chart
            .draw_series(LineSeries::new(
                v.iter().enumerate().map(|(p, x)| (x.max(1.0), p as f64)),
                color.stroke_width(2),
            ))?
            .label(label.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 14, y)], color.stroke_width(2))
            });
    }
    legend(&mut chart)?;
    root.present()?;
    Ok(())
}

fn quantiles(v: &Value) -> Option<Vec<f64>> {
    let q: Vec<f64> = v.as_array()?.iter().map(num).collect();
    (q.len() == 101).then_some(q)
}

fn cdfs(path: &Path, r: &Value) -> anyhow::Result<bool> {
    let series: Vec<(String, Vec<f64>)> = r["learning"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| {
            let q = quantiles(&l["learn_cdf_ns"])?;
            Some((
                format!("{} address(es) per answer", l["addresses_per_answer"]),
                q,
            ))
        })
        .collect();
    if series.is_empty() {
        return Ok(false);
    }
    cdf_chart(
        path,
        "DNS answer to map: ingress program time per answer",
        "ns",
        &series,
    )?;
    Ok(true)
}

fn race(path: &Path, r: &Value) -> anyhow::Result<bool> {
    let mut series = Vec::new();
    if let Some(q) = quantiles(&r["race"]["connect_cdf_us"]) {
        series.push(("egress enforcing".to_owned(), q));
    }
    for row in r["classic"]["rows"].as_array().into_iter().flatten() {
        if let Some(q) = quantiles(&row["race"]["connect_cdf_us"]) {
            series.push((row["setup"].as_str().unwrap_or("?").to_owned(), q));
        }
    }
    if series.is_empty() {
        return Ok(false);
    }
    cdf_chart(
        path,
        "Resolve then connect at once: connect time",
        "µs",
        &series,
    )?;
    Ok(true)
}

/// Gbit/s of every round, with and without the agent, for egress and for nftables.
fn throughput(path: &Path, r: &Value) -> anyhow::Result<bool> {
    let mut series: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    for (key, name) in [("iperf", "egress"), ("iperf_nft", "nftables")] {
        let runs: Vec<&Value> = r[key]["runs"].as_array().into_iter().flatten().collect();
        for with in [false, true] {
            let pts: Vec<(f64, f64)> = runs
                .iter()
                .filter(|x| x["agent"].as_bool() == Some(with))
                .map(|x| (num(&x["round"]), num(&x["gbit_per_s"])))
                .collect();
            if !pts.is_empty() {
                let label = if with {
                    name.to_owned()
                } else {
                    format!("without ({name} run)")
                };
                series.push((label, pts));
            }
        }
    }
    if series.is_empty() {
        return Ok(false);
    }
    let max_y = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|x| x.1))
        .fold(1.0, f64::max);
    let max_x = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|x| x.0))
        .fold(1.0, f64::max);
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "iperf3 rounds: Gbit/s with and without enforcement",
            ("sans-serif", 16),
        )
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(50)
        .build_cartesian_2d(-0.5f64..max_x + 0.5, 0f64..max_y * 1.15)?;
    chart
        .configure_mesh()
        .x_desc("round")
        .y_desc("Gbit/s")
        .draw()?;
    for (k, (label, pts)) in series.iter().enumerate() {
        let color = COLORS[k % COLORS.len()];
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))?
            .label(label.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 14, y)], color.stroke_width(2))
            });
        chart.draw_series(pts.iter().map(|p| Circle::new(*p, 3, color.filled())))?;
    }
    legend(&mut chart)?;
    root.present()?;
    Ok(true)
}
