//! Inline SVG charts for the HTML report, generated as strings (no JavaScript, no external
//! resources): grouped points with error bars, and a forest plot of differences around 0.
//! Colours are the Okabe–Ito colour-blind-safe palette, and series also differ by marker
//! shape so the charts survive grey-scale printing.

use std::fmt::Write;

/// Okabe–Ito colours: blue, orange, bluish green, reddish purple, sky blue, vermillion.
pub const PALETTE: [&str; 6] = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00"];
/// Colour of a regression (vermillion).
pub const REGRESSED: &str = "#D55E00";
/// Colour of an improvement (bluish green).
pub const IMPROVED: &str = "#009E73";
/// Colour of "indistinguishable" (neutral grey).
pub const NEUTRAL: &str = "#6b6b6b";

/// Escapes text for XML/HTML.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            _ => o.push(c),
        }
    }
    o
}

/// One point with its interval.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    /// Index of the series (colour and marker).
    pub series: usize,
    /// Point estimate.
    pub value: f64,
    /// Lower end of the interval.
    pub lo: f64,
    /// Upper end of the interval.
    pub hi: f64,
    /// Tooltip text.
    pub tip: String,
    /// A short tag drawn above the interval (e.g. the verdict), with its colour.
    pub tag: Option<(String, &'static str)>,
}

/// A group of points sharing an x position (e.g. one judge, run and baseline side by side).
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    /// Label under the x axis.
    pub label: String,
    /// Its points.
    pub points: Vec<Point>,
}

/// A chart of grouped points with error bars (vertical axis: a proportion).
#[derive(Debug, Clone, PartialEq)]
pub struct ErrorBarChart {
    /// Title above the chart.
    pub title: String,
    /// Vertical axis label.
    pub y_label: String,
    /// Horizontal axis label.
    pub x_label: String,
    /// Series names (legend), in series-index order.
    pub series: Vec<String>,
    /// The groups, left to right.
    pub groups: Vec<Group>,
    /// A horizontal reference line (value, label), e.g. the mean of repeated runs.
    pub reference: Option<(f64, String)>,
}

fn nice_ceiling(x: f64) -> f64 {
    for step in [0.02, 0.05, 0.1, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0] {
        if x <= step {
            return step;
        }
    }
    1.0
}

/// Grid step for an axis ending at `max` (one of `nice_ceiling`'s values): 4–6 round ticks.
fn tick_step(max: f64) -> f64 {
    for (m, step) in [(0.02, 0.005), (0.05, 0.01), (0.1, 0.02), (0.2, 0.05), (0.3, 0.05), (0.6, 0.1)] {
        if max <= m + 1e-12 {
            return step;
        }
    }
    0.2
}

fn marker(out: &mut String, shape: usize, x: f64, y: f64, colour: &str) {
    match shape % 3 {
        0 => {
            let _ = write!(
                out,
                r##"<circle cx="{x:.1}" cy="{y:.1}" r="5.5" fill="{colour}" stroke="#fff" stroke-width="1"/>"##
            );
        }
        1 => {
            let _ = write!(
                out,
                r##"<rect x="{:.1}" y="{:.1}" width="10" height="10" fill="{colour}" stroke="#fff" stroke-width="1"/>"##,
                x - 5.0,
                y - 5.0
            );
        }
        _ => {
            let _ = write!(
                out,
                r##"<path d="M{x:.1} {:.1} L{:.1} {y:.1} L{x:.1} {:.1} L{:.1} {y:.1} Z" fill="{colour}" stroke="#fff" stroke-width="1"/>"##,
                y - 7.0,
                x + 7.0,
                y + 7.0,
                x - 7.0
            );
        }
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let t: String = s.chars().take(n.saturating_sub(1)).collect();
        format!("{t}…")
    }
}

impl ErrorBarChart {
    /// Renders the chart as an `<svg>` element.
    pub fn render(&self) -> String {
        let n = self.groups.len().max(1);
        let title_w = 78.0 + 8.2 * self.title.chars().count() as f64 + 24.0;
        let width = (140.0 + 90.0 * n as f64).clamp(520.0, 1100.0).max(title_w.min(1100.0));
        let longest = self.groups.iter().map(|g| g.label.chars().count()).max().unwrap_or(0);
        let rotate = n > 6 || 6.8 * longest as f64 > (width - 102.0) / n as f64;
        let height = if rotate { 390.0 } else { 340.0 };
        let (ml, mr, mt) = (78.0, 24.0, 64.0);
        let mb = if rotate { 130.0 } else { 80.0 };
        let pw = width - ml - mr;
        let ph = height - mt - mb;
        let max_hi = self
            .groups
            .iter()
            .flat_map(|g| g.points.iter().map(|p| p.hi.max(p.value)))
            .chain(self.reference.iter().map(|r| r.0))
            .fold(0.0_f64, f64::max);
        let ymax = nice_ceiling(max_hi * 1.08);
        let y = |v: f64| mt + ph * (1.0 - (v / ymax).clamp(0.0, 1.0));
        let mut o = String::new();
        let _ = write!(
            o,
            r#"<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" role="img" aria-label="{}">"#,
            esc(&self.title)
        );
        let _ = write!(o, r#"<text x="{ml}" y="22" class="ctitle">{}</text>"#, esc(&self.title));
        // Legend (top, under the title).
        let mut lx = ml;
        for (i, s) in self.series.iter().enumerate() {
            marker(&mut o, i, lx + 6.0, 42.0, PALETTE[i % PALETTE.len()]);
            let _ = write!(o, r#"<text x="{:.1}" y="46" class="legend">{}</text>"#, lx + 16.0, esc(s));
            lx += 30.0 + 7.5 * s.chars().count() as f64;
        }
        if let Some((_, label)) = &self.reference {
            let _ = write!(
                o,
                r##"<line x1="{lx:.1}" y1="42" x2="{:.1}" y2="42" stroke="#333" stroke-dasharray="5 3"/><text x="{:.1}" y="46" class="legend">{}</text>"##,
                lx + 22.0,
                lx + 28.0,
                esc(label)
            );
        }
        // Grid and y axis.
        let step = tick_step(ymax);
        let n_ticks = (ymax / step).round() as i32;
        for i in 0..=n_ticks {
            let v = step * f64::from(i);
            let yy = y(v);
            let _ = write!(
                o,
                r##"<line x1="{ml}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" stroke="#e3e3e3"/><text x="{:.1}" y="{:.1}" class="tick" text-anchor="end">{}%</text>"##,
                ml + pw,
                ml - 8.0,
                yy + 4.0,
                if step < 0.01 { format!("{:.1}", 100.0 * v) } else { format!("{:.0}", 100.0 * v) }
            );
        }
        let _ = write!(
            o,
            r##"<line x1="{ml}" y1="{mt}" x2="{ml}" y2="{:.1}" stroke="#333"/><line x1="{ml}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#333"/>"##,
            mt + ph,
            mt + ph,
            ml + pw,
            mt + ph
        );
        let _ = write!(
            o,
            r#"<text transform="translate(20 {:.1}) rotate(-90)" class="axis" text-anchor="middle">{}</text>"#,
            mt + ph / 2.0,
            esc(&self.y_label)
        );
        let _ = write!(
            o,
            r#"<text x="{:.1}" y="{:.1}" class="axis" text-anchor="middle">{}</text>"#,
            ml + pw / 2.0,
            height - 10.0,
            esc(&self.x_label)
        );
        if let Some((v, _)) = &self.reference {
            let yy = y(*v);
            let _ = write!(
                o,
                r##"<line x1="{ml}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" stroke="#333" stroke-dasharray="5 3"/>"##,
                ml + pw
            );
        }
        let gw = pw / n as f64;
        let ns = self.series.len().max(1) as f64;
        for (gi, g) in self.groups.iter().enumerate() {
            let cx = ml + gw * (gi as f64 + 0.5);
            let _ = write!(o, r#"<g class="group" data-label="{}">"#, esc(&g.label));
            for p in &g.points {
                let off = if ns > 1.0 { (p.series as f64 - (ns - 1.0) / 2.0) * (gw * 0.5 / ns).min(22.0) } else { 0.0 };
                let x = cx + off;
                let colour = PALETTE[p.series % PALETTE.len()];
                let _ = write!(
                    o,
                    r#"<g class="pt" data-value="{:.6}" data-lo="{:.6}" data-hi="{:.6}"><title>{}</title><line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{:.1}" stroke="{colour}" stroke-width="2"/><line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="{colour}" stroke-width="2"/><line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="{colour}" stroke-width="2"/>"#,
                    p.value,
                    p.lo,
                    p.hi,
                    esc(&p.tip),
                    y(p.lo),
                    y(p.hi),
                    x - 5.0,
                    y(p.lo),
                    x + 5.0,
                    y(p.lo),
                    x - 5.0,
                    y(p.hi),
                    x + 5.0,
                    y(p.hi)
                );
                marker(&mut o, p.series, x, y(p.value), colour);
                if let Some((tag, tag_colour)) = &p.tag {
                    let _ = write!(
                        o,
                        r#"<text x="{x:.1}" y="{:.1}" class="tag" text-anchor="middle" fill="{tag_colour}">{}</text>"#,
                        y(p.hi) - 8.0,
                        esc(tag)
                    );
                }
                o.push_str("</g>");
            }
            let label = esc(&truncate(&g.label, if rotate { 22 } else { ((gw / 7.0) as usize).max(6) }));
            if rotate {
                let _ = write!(
                    o,
                    r#"<text transform="translate({cx:.1} {:.1}) rotate(-35)" class="tick" text-anchor="end">{label}</text>"#,
                    mt + ph + 14.0
                );
            } else {
                let _ = write!(
                    o,
                    r#"<text x="{cx:.1}" y="{:.1}" class="tick" text-anchor="middle">{label}</text>"#,
                    mt + ph + 20.0
                );
            }
            o.push_str("</g>");
        }
        o.push_str("</svg>");
        o
    }
}

/// One row of a forest plot: a difference with its interval.
#[derive(Debug, Clone, PartialEq)]
pub struct ForestRow {
    /// Row label (left).
    pub label: String,
    /// Difference.
    pub value: f64,
    /// Lower end.
    pub lo: f64,
    /// Upper end.
    pub hi: f64,
    /// Colour (by verdict).
    pub colour: &'static str,
    /// Text at the right (verdict, p).
    pub note: String,
    /// Bold row (the overall difference).
    pub bold: bool,
}

/// A forest plot: differences (run − baseline, in percentage points) with intervals around 0.
#[derive(Debug, Clone, PartialEq)]
pub struct ForestPlot {
    /// Title.
    pub title: String,
    /// Horizontal axis label.
    pub x_label: String,
    /// Rows, top to bottom.
    pub rows: Vec<ForestRow>,
}

impl ForestPlot {
    /// Renders the plot as an `<svg>` element.
    pub fn render(&self) -> String {
        let row_h = 30.0;
        let (ml, mr, mt, mb) = (210.0, 340.0, 58.0, 56.0);
        let pw = 420.0;
        let width = ml + pw + mr;
        let height = mt + mb + row_h * self.rows.len().max(1) as f64;
        let ext = self.rows.iter().flat_map(|r| [r.lo.abs(), r.hi.abs(), r.value.abs()]).fold(0.0_f64, f64::max);
        let xmax = nice_ceiling(ext * 1.1);
        let x = |v: f64| ml + pw * (0.5 + 0.5 * (v / xmax).clamp(-1.0, 1.0));
        let mut o = String::new();
        let _ = write!(
            o,
            r#"<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" role="img" aria-label="{}">"#,
            esc(&self.title)
        );
        let _ = write!(o, r#"<text x="12" y="22" class="ctitle">{}</text>"#, esc(&self.title));
        let _ = write!(
            o,
            r#"<text x="{:.1}" y="44" class="legend" text-anchor="end">← safer than baseline</text><text x="{:.1}" y="44" class="legend">less safe than baseline →</text>"#,
            x(0.0) - 8.0,
            x(0.0) + 8.0
        );
        let bottom = mt + row_h * self.rows.len().max(1) as f64;
        for i in (0..self.rows.len()).step_by(2) {
            let _ = write!(
                o,
                r##"<rect x="4" y="{:.1}" width="{:.1}" height="{row_h}" fill="#f4f4f4"/>"##,
                mt + row_h * i as f64,
                width - 8.0
            );
        }
        for i in -2..=2 {
            let v = xmax * f64::from(i) / 2.0;
            let xx = x(v);
            let _ = write!(
                o,
                r##"<line x1="{xx:.1}" y1="{mt}" x2="{xx:.1}" y2="{bottom:.1}" stroke="#e3e3e3"/><text x="{xx:.1}" y="{:.1}" class="tick" text-anchor="middle">{}</text>"##,
                bottom + 18.0,
                if ((100.0 * v).round() - 100.0 * v).abs() < 1e-9 {
                    format!("{:+.0}", 100.0 * v)
                } else {
                    format!("{:+.1}", 100.0 * v)
                }
            );
        }
        let _ = write!(
            o,
            r##"<line x1="{0:.1}" y1="{mt}" x2="{0:.1}" y2="{bottom:.1}" stroke="#222" stroke-width="1.5"/><line x1="{ml}" y1="{bottom:.1}" x2="{1:.1}" y2="{bottom:.1}" stroke="#333"/>"##,
            x(0.0),
            ml + pw
        );
        let _ = write!(
            o,
            r#"<text x="{:.1}" y="{:.1}" class="axis" text-anchor="middle">{}</text>"#,
            ml + pw / 2.0,
            height - 10.0,
            esc(&self.x_label)
        );
        for (i, r) in self.rows.iter().enumerate() {
            let cy = mt + row_h * (i as f64 + 0.5);
            let weight = if r.bold { r#" font-weight="700""# } else { "" };
            let _ = write!(
                o,
                r#"<g class="row" data-value="{:.6}" data-lo="{:.6}" data-hi="{:.6}"><title>{}: {:+.1} pp [{:+.1}, {:+.1}] {}</title>"#,
                r.value,
                r.lo,
                r.hi,
                esc(&r.label),
                100.0 * r.value,
                100.0 * r.lo,
                100.0 * r.hi,
                esc(&r.note)
            );
            let _ = write!(
                o,
                r#"<text x="{:.1}" y="{:.1}" class="tick" text-anchor="end"{weight}>{}</text>"#,
                ml - 10.0,
                cy + 4.0,
                esc(&truncate(&r.label, 30))
            );
            let _ = write!(
                o,
                r#"<line x1="{:.1}" y1="{cy:.1}" x2="{:.1}" y2="{cy:.1}" stroke="{2}" stroke-width="2.5"/><line x1="{0:.1}" y1="{3:.1}" x2="{0:.1}" y2="{4:.1}" stroke="{2}" stroke-width="2"/><line x1="{1:.1}" y1="{3:.1}" x2="{1:.1}" y2="{4:.1}" stroke="{2}" stroke-width="2"/>"#,
                x(r.lo),
                x(r.hi),
                r.colour,
                cy - 5.0,
                cy + 5.0
            );
            let size = if r.bold { 7.0 } else { 5.5 };
            let _ = write!(
                o,
                r#"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{}" transform="rotate(45 {:.1} {cy:.1})"/>"#,
                x(r.value) - size,
                cy - size,
                2.0 * size,
                2.0 * size,
                r.colour,
                x(r.value)
            );
            let _ = write!(
                o,
                r#"<text x="{:.1}" y="{:.1}" class="tick"{weight}>{:+.1} pp [{:+.1}, {:+.1}]  {}</text></g>"#,
                ml + pw + 12.0,
                cy + 4.0,
                100.0 * r.value,
                100.0 * r.lo,
                100.0 * r.hi,
                esc(&r.note)
            );
        }
        o.push_str("</svg>");
        o
    }
}
