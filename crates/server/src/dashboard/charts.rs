//! Stacked-area charts as inline SVG, drawn on the server. Readable without
//! colour: every band has its own fill pattern (lines, dots, hatching), a
//! legend with the pattern and the latest count in words, and the numbers
//! are in a table under the chart.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use maud::{html, Markup, PreEscaped};

use super::rollup::Range;
use crate::store::dashboard::Sample;

/// Status bands bottom-up: finished work first, then work in flight, then the rest.
pub const STATUS_ORDER: [&str; 8] = [
    "complete",
    "installed",
    "downloaded",
    "downloading",
    "granted",
    "on-hold",
    "error",
    "undefined",
];

/// Fill colour of a status (the pattern and label carry the meaning too).
pub fn status_colour(s: &str) -> &'static str {
    match s {
        "complete" => "#2e7d32",
        "installed" => "#66bb6a",
        "downloaded" => "#29b6f6",
        "downloading" => "#0277bd",
        "granted" => "#7e57c2",
        "on-hold" => "#ffb300",
        "error" => "#c62828",
        _ => "#9e9e9e",
    }
}

const PALETTE: [&str; 8] = [
    "#1565c0", "#ef6c00", "#2e7d32", "#6a1b9a", "#00838f", "#ad1457", "#5d4037", "#757575",
];

/// Most bands a chart shows; the rest are summed as "other".
const MAX_SERIES: usize = 7;

/// One band: a key and its count per bucket.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub key: String,
    pub colour: String,
    pub values: Vec<i64>,
}

/// A chart's data: bucket starts and bands, bottom band first.
#[derive(Debug, Clone, PartialEq)]
pub struct ChartData {
    pub buckets: Vec<i64>,
    pub res: i64,
    pub series: Vec<Series>,
}

impl ChartData {
    /// Bands of `dim` (`"s"` statuses, `"v"` versions) from stored samples.
    pub fn from_samples(samples: &[Sample], dim: &str, res: i64) -> ChartData {
        let buckets: Vec<i64> = samples
            .iter()
            .filter(|s| s.dim == dim)
            .map(|s| s.bucket)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let index: BTreeMap<i64, usize> =
            buckets.iter().enumerate().map(|(i, b)| (*b, i)).collect();
        let mut by_key: BTreeMap<String, Vec<i64>> = BTreeMap::new();
        for s in samples.iter().filter(|s| s.dim == dim) {
            let v = by_key
                .entry(s.key.clone())
                .or_insert_with(|| vec![0; buckets.len()]);
            v[index[&s.bucket]] = s.n;
        }
        by_key.retain(|_, v| v.iter().any(|n| *n > 0));
        let mut keys: Vec<String> = by_key.keys().cloned().collect();
        if dim == "s" {
            keys.sort_by_key(|k| {
                STATUS_ORDER
                    .iter()
                    .position(|s| s == k)
                    .unwrap_or(STATUS_ORDER.len())
            });
        } else {
            // Newest version at the bottom, where the rollout grows from.
            keys.sort_by(|a, b| crate::version::compare(b, a));
        }
        let mut series: Vec<Series> = Vec::new();
        let mut other = vec![0; buckets.len()];
        for (i, k) in keys.iter().enumerate() {
            let values = by_key.remove(k).unwrap_or_default();
            if i < MAX_SERIES {
                let colour = if dim == "s" {
                    status_colour(k).to_owned()
                } else {
                    PALETTE[i % PALETTE.len()].to_owned()
                };
                series.push(Series {
                    key: k.clone(),
                    colour,
                    values,
                });
            } else {
                for (o, v) in other.iter_mut().zip(values) {
                    *o += v;
                }
            }
        }
        if other.iter().any(|n| *n > 0) {
            series.push(Series {
                key: "other".into(),
                colour: PALETTE[7].into(),
                values: other,
            });
        }
        ChartData {
            buckets,
            res,
            series,
        }
    }

    /// Highest stacked total.
    pub fn max_total(&self) -> i64 {
        (0..self.buckets.len())
            .map(|j| self.series.iter().map(|s| s.values[j]).sum::<i64>())
            .max()
            .unwrap_or(0)
    }
}

const W: f64 = 640.0;
const H: f64 = 220.0;
const LEFT: f64 = 56.0;
const TOP: f64 = 10.0;
const BOTTOM: f64 = 26.0;
const RIGHT: f64 = 8.0;

/// Pattern overlays: index → SVG shapes drawn over the band colour in a 8×8 tile.
fn pattern_shapes(i: usize) -> &'static str {
    match i % 6 {
        0 => "",
        1 => r##"<path d="M0,8 L8,0" stroke="#fff" stroke-width="1.6"/>"##,
        2 => r##"<circle cx="4" cy="4" r="1.6" fill="#fff"/>"##,
        3 => r##"<path d="M0,0 L8,8 M8,0 L0,8" stroke="#fff" stroke-width="1.2"/>"##,
        4 => r##"<path d="M0,4 H8" stroke="#fff" stroke-width="1.6"/>"##,
        _ => r##"<path d="M4,0 V8" stroke="#fff" stroke-width="1.6"/>"##,
    }
}

/// Drops points in the middle of horizontal runs (a flat month is 2 points, not 1,440).
fn simplify(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let mut out: Vec<(f64, f64)> = Vec::with_capacity(points.len());
    for (i, p) in points.iter().enumerate() {
        let flat = i > 0
            && i + 1 < points.len()
            && points[i - 1].1 == p.1
            && points[i + 1].1 == p.1
            && ((points[i - 1].0 <= p.0 && p.0 <= points[i + 1].0)
                || (points[i - 1].0 >= p.0 && p.0 >= points[i + 1].0));
        if !flat {
            out.push(*p);
        }
    }
    out
}

/// Escapes text for SVG built as a string.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn fmt_tick(ts: i64, range: Range) -> String {
    let dt = chrono::DateTime::from_timestamp(ts, 0).unwrap_or_default();
    match range {
        Range::Hour | Range::Day => dt.format("%H:%M").to_string(),
        Range::Week | Range::Month => dt.format("%m-%d").to_string(),
    }
}

/// The chart: SVG with patterns, a legend, and a data table.
pub fn render(id: &str, title: &str, data: &ChartData, range: Range, now: i64) -> Markup {
    let t1 = now;
    let t0 = now - range.span_secs();
    let plot_w = W - LEFT - RIGHT;
    let plot_h = H - TOP - BOTTOM;
    let max = data.max_total().max(1) as f64;
    let x = |t: i64| LEFT + ((t.clamp(t0, t1) - t0) as f64 / (t1 - t0) as f64) * plot_w;
    let y = |v: i64| TOP + plot_h - (v as f64 / max) * plot_h;

    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg class="chart" viewBox="0 0 {W} {H}" role="img" aria-labelledby="{id}-t"><title id="{id}-t">{}</title><defs>"#,
        esc(title)
    );
    for (i, s) in data.series.iter().enumerate() {
        let _ = write!(
            svg,
            r#"<pattern id="{id}-p{i}" width="8" height="8" patternUnits="userSpaceOnUse"><rect width="8" height="8" fill="{}"/>{}</pattern>"#,
            s.colour,
            pattern_shapes(i)
        );
    }
    svg.push_str("</defs>");
    // Grid and y labels: 0, half, max.
    for (v, label) in [
        (0, "0".to_owned()),
        ((max / 2.0) as i64, format!("{}", (max / 2.0) as i64)),
        (max as i64, format!("{}", max as i64)),
    ] {
        let _ = write!(
            svg,
            r##"<line x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#ccc"/><text x="{}" y="{:.1}" text-anchor="end" class="ax">{label}</text>"##,
            W - RIGHT,
            LEFT - 4.0,
            y(v) + 4.0,
            y = y(v)
        );
    }
    for (i, t) in [t0, t0 + (t1 - t0) / 2, t1].into_iter().enumerate() {
        let anchor = ["start", "middle", "end"][i];
        let _ = write!(
            svg,
            r#"<text x="{:.1}" y="{}" text-anchor="{anchor}" class="ax">{}</text>"#,
            x(t),
            H - 8.0,
            fmt_tick(t, range)
        );
    }
    // Bands as step areas, bottom first.
    let mut below = vec![0i64; data.buckets.len()];
    for (i, s) in data.series.iter().enumerate() {
        let above: Vec<i64> = below.iter().zip(&s.values).map(|(b, v)| b + v).collect();
        let mut outline: Vec<(f64, f64)> = Vec::with_capacity(data.buckets.len() * 4);
        for (j, b) in data.buckets.iter().enumerate() {
            outline.push((x(*b), y(above[j])));
            outline.push((x(b + data.res), y(above[j])));
        }
        for (j, b) in data.buckets.iter().enumerate().rev() {
            outline.push((x(b + data.res), y(below[j])));
            outline.push((x(*b), y(below[j])));
        }
        let mut d = String::new();
        for (k, (px, py)) in simplify(&outline).into_iter().enumerate() {
            let _ = write!(d, "{}{px:.1},{py:.1} ", if k == 0 { "M" } else { "L" });
        }
        d.push('Z');
        let _ = write!(
            svg,
            r##"<path d="{d}" fill="url(#{id}-p{i})" stroke="#333" stroke-width="0.5"><title>{}</title></path>"##,
            esc(&s.key)
        );
        below = above;
    }
    if data.buckets.is_empty() {
        let _ = write!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="middle" class="empty">no samples in this range yet (one is taken every minute)</text>"#,
            LEFT + plot_w / 2.0,
            TOP + plot_h / 2.0
        );
    }
    svg.push_str("</svg>");

    let last = data.buckets.len().checked_sub(1);
    html! {
        figure.chart id=(id) {
            figcaption { (title) }
            (PreEscaped(svg))
            ul.legend {
                @for (i, s) in data.series.iter().enumerate() {
                    li {
                        svg.swatch viewBox="0 0 16 12" aria-hidden="true" {
                            rect width="16" height="12" fill=(format!("url(#{id}-p{i})")) stroke="#333" {}
                        }
                        (s.key) ": " strong { (last.map(|j| s.values[j]).unwrap_or(0)) }
                    }
                }
            }
            details {
                summary { "Numbers" }
                table.data {
                    thead { tr { th { "time (UTC)" } @for s in &data.series { th { (s.key) } } } }
                    tbody {
                        @for (j, b) in data.buckets.iter().enumerate().rev().take(48) {
                            tr {
                                td { (chrono::DateTime::from_timestamp(*b, 0).unwrap_or_default().format("%Y-%m-%d %H:%M")) }
                                @for s in &data.series { td.num { (s.values[j]) } }
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(bucket: i64, dim: &str, key: &str, n: i64) -> Sample {
        Sample {
            bucket,
            dim: dim.into(),
            key: key.into(),
            n,
        }
    }

    #[test]
    fn samples_become_aligned_ordered_bands() {
        let data = ChartData::from_samples(
            &[
                s(0, "s", "undefined", 10),
                s(0, "s", "complete", 0),
                s(60, "s", "undefined", 6),
                s(60, "s", "complete", 4),
                s(60, "v", "2.0.0", 4),
                s(0, "s", "error", 0),
            ],
            "s",
            60,
        );
        assert_eq!(data.buckets, vec![0, 60]);
        let keys: Vec<_> = data.series.iter().map(|s| s.key.as_str()).collect();
        assert_eq!(
            keys,
            ["complete", "undefined"],
            "error is all zero and dropped"
        );
        assert_eq!(data.series[0].values, vec![0, 4]);
        assert_eq!(data.max_total(), 10);
    }

    #[test]
    fn versions_newest_first_and_overflow_is_other() {
        let mut samples = Vec::new();
        for v in 1..=9 {
            samples.push(s(0, "v", &format!("{v}.0.0"), v));
        }
        let data = ChartData::from_samples(&samples, "v", 60);
        assert_eq!(data.series.len(), MAX_SERIES + 1);
        assert_eq!(data.series[0].key, "9.0.0");
        let other = data.series.last().expect("other");
        assert_eq!(other.key, "other");
        assert_eq!(other.values, vec![1 + 2]);
    }

    #[test]
    fn flat_runs_collapse() {
        let pts = [
            (0.0, 5.0),
            (1.0, 5.0),
            (2.0, 5.0),
            (3.0, 5.0),
            (3.0, 7.0),
            (4.0, 7.0),
            (4.0, 0.0),
        ];
        assert_eq!(
            simplify(&pts),
            vec![(0.0, 5.0), (3.0, 5.0), (3.0, 7.0), (4.0, 7.0), (4.0, 0.0)]
        );
        // Going back (the bottom edge runs right to left) keeps its ends too.
        let back = [(4.0, 1.0), (3.0, 1.0), (2.0, 1.0), (1.0, 1.0)];
        assert_eq!(simplify(&back), vec![(4.0, 1.0), (1.0, 1.0)]);
    }

    #[test]
    fn rendered_chart_names_every_band_in_words() {
        let data = ChartData::from_samples(
            &[s(3540, "s", "complete", 3), s(3540, "s", "error", 1)],
            "s",
            60,
        );
        let html = render("c1", "Status <over> time", &data, Range::Hour, 3600).into_string();
        assert!(html.contains("Status &lt;over&gt; time"));
        assert!(html.contains("complete: <strong>3</strong>"));
        assert!(html.contains("error: <strong>1</strong>"));
        assert!(
            html.contains(r#"id="c1-p1""#),
            "a second pattern for the second band"
        );
        assert_eq!(
            html.matches(r#"stroke-width="0.5""#).count(),
            2,
            "two bands"
        );
    }
}
