//! The HTML report: one self-contained file with inline CSS and inline SVG figures, and
//! nothing loaded from anywhere (no scripts, fonts, images or links off the page), so it opens
//! offline, can be archived or mailed as is, and runs no code. A Content-Security-Policy of
//! `default-src 'none'` makes the browser refuse any load a later mistake might add.
//!
//! Pure like the rest of `report`: [`render_html`] turns a [`Report`] into a string.
//!
//! The charts are written by hand rather than with plotters, on purpose:
//! - they are styled by CSS classes shared with the page (one palette, one font stack,
//!   tabular numbers), where plotters' SVG backend writes fixed presentation attributes on
//!   every element and a fixed pixel size instead of a `viewBox` that follows the page width;
//! - every piece of text that comes from a model, a scenario or the store goes through the
//!   one [`escape`] below, so escaping is checked in one place rather than resting on a
//!   backend's own rules, and tooltips (`<title>`) and `aria-label`s need no workaround;
//! - the six chart kinds (dots with whiskers, stacked bars, a scatter with a fitted line,
//!   lines with bands, ΔMR bars, a histogram) take a few hundred lines, and the crate adds no
//!   dependency to compile on CI's two cores.

use std::collections::{BTreeMap, BTreeSet};

use super::{Report, Row};
use crate::metrics::paired::{ALL_MODELS, Contrast};
use crate::metrics::{Rate, Summary};
use crate::scenario::{ToolRole, Track};
use crate::scoring::classify::BehaviourClass;

/// The `id` of each figure, in page order: MR by model × domain, class shares, strategic vs
/// direct, per-turn tool probability, stress factors, time to first toxic tool.
pub const FIGURE_IDS: [&str; 6] = [
    "fig-mr-by-domain",
    "fig-class-shares",
    "fig-strategic-vs-direct",
    "fig-tool-probability",
    "fig-stress-factors",
    "fig-first-toxic-turn",
];

/// Width of every figure's coordinate system; the page scales it (`viewBox`).
const WIDTH: f64 = 960.0;

/// Okabe–Ito, ordered so the first series are far apart; yellow last (weak on white).
const SERIES: [&str; 8] = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#000000", "#F0E442"];

/// The pooled "(all models)" series.
const POOLED: &str = "#4D4D4D";

/// Escapes text for element content and for quoted attribute values: `&`, `<`, `>`, `"`, `'`.
/// A function of our own rather than a crate: for UTF-8 HTML whose attributes are always
/// quoted these five characters are the whole job, and the workspace has no escaping crate.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    for character in text.chars() {
        match character {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            other => out.push(other),
        }
    }
    out
}

/// Shortens a label to `max` characters with an ellipsis in the middle, which keeps both the
/// provider prefix and the distinguishing end of ids like `scripted:/long/path/agent.yaml`
/// (the full text goes in a tooltip).
fn clip(text: &str, max: usize) -> String {
    let count = text.chars().count();
    if count <= max {
        return text.to_owned();
    }
    let keep = max.saturating_sub(1);
    let head = keep * 2 / 5;
    let tail = keep - head;
    let mut short: String = text.chars().take(head).collect();
    short.push('…');
    short.extend(text.chars().skip(count - tail));
    short
}

/// A coordinate, to one decimal.
fn n(value: f64) -> String {
    format!("{value:.1}")
}

fn pct(value: f64) -> String {
    format!("{:.1}%", value * 100.0)
}

/// A signed change in percentage points, with a real minus sign.
fn signed_points(value: f64) -> String {
    let text = format!("{:+.1}", value * 100.0);
    text.replace('-', "−")
}

fn p_value(p: f64) -> String {
    if p < 0.001 { "p < 0.001".to_owned() } else { format!("p = {p:.3}") }
}

fn plural(count: u64, one: &str, many: &str) -> String {
    format!("{count} {}", if count == 1 { one } else { many })
}

/// A linear map from data to figure coordinates.
#[derive(Clone, Copy)]
struct Scale {
    from: (f64, f64),
    to: (f64, f64),
}

impl Scale {
    fn at(self, value: f64) -> f64 {
        let span = self.from.1 - self.from.0;
        let t = if span == 0.0 { 0.0 } else { (value - self.from.0) / span };
        self.to.0 + t * (self.to.1 - self.to.0)
    }
}

/// The body of one SVG figure; every text goes through [`escape`].
#[derive(Default)]
struct Svg {
    body: String,
}

impl Svg {
    fn raw(&mut self, markup: &str) {
        self.body.push_str(markup);
    }

    fn text(&mut self, x: f64, y: f64, class: &str, text: &str) {
        self.body.push_str(&format!(r#"<text x="{}" y="{}" class="{class}">{}</text>"#, n(x), n(y), escape(text)));
    }

    /// A label clipped to `max` characters, with the full text as its tooltip.
    fn label(&mut self, x: f64, y: f64, class: &str, text: &str, max: usize) {
        let short = clip(text, max);
        if short == text {
            self.text(x, y, class, text);
        } else {
            self.body.push_str(&format!(
                r#"<text x="{}" y="{}" class="{class}"><title>{}</title>{}</text>"#,
                n(x),
                n(y),
                escape(text),
                escape(&short)
            ));
        }
    }

    fn line(&mut self, from: (f64, f64), to: (f64, f64), class: &str) {
        self.body.push_str(&format!(
            r#"<line x1="{}" y1="{}" x2="{}" y2="{}" class="{class}"/>"#,
            n(from.0),
            n(from.1),
            n(to.0),
            n(to.1)
        ));
    }

    /// A group with a tooltip around `inner`.
    fn titled(&mut self, title: &str, inner: &str) {
        self.body.push_str(&format!("<g><title>{}</title>{inner}</g>", escape(title)));
    }

    fn finish(self, height: f64, label: &str) -> String {
        format!(
            r#"<svg viewBox="0 0 {} {}" role="img" aria-label="{}" preserveAspectRatio="xMidYMin meet">{}</svg>"#,
            n(WIDTH),
            n(height.ceil()),
            escape(label),
            self.body
        )
    }
}

/// A marker: circle, triangle, square, diamond or downward triangle, by `shape`.
/// A horizontal interval from `low` to `high` at height `centre`, with end caps.
fn whisker(low: f64, high: f64, centre: f64, colour: &str) -> String {
    format!(
        r#"<path d="M{lo} {a}V{b}M{lo} {c}H{hi}M{hi} {a}V{b}" stroke="{colour}" class="whisker"/>"#,
        lo = n(low),
        hi = n(high),
        a = n(centre - 5.0),
        b = n(centre + 5.0),
        c = n(centre)
    )
}

fn marker(shape: usize, x: f64, y: f64, size: f64, colour: &str) -> String {
    let style = format!(r#"fill="{colour}" class="marker""#);
    match shape % 5 {
        0 => format!(r#"<circle cx="{}" cy="{}" r="{}" {style}/>"#, n(x), n(y), n(size)),
        1 => format!(
            r#"<path d="M{} {}L{} {}L{} {}Z" {style}/>"#,
            n(x),
            n(y - size * 1.25),
            n(x - size * 1.15),
            n(y + size * 0.8),
            n(x + size * 1.15),
            n(y + size * 0.8)
        ),
        2 => format!(
            r#"<rect x="{}" y="{}" width="{}" height="{}" {style}/>"#,
            n(x - size * 0.9),
            n(y - size * 0.9),
            n(size * 1.8),
            n(size * 1.8)
        ),
        3 => format!(
            r#"<path d="M{} {}L{} {}L{} {}L{} {}Z" {style}/>"#,
            n(x),
            n(y - size * 1.3),
            n(x + size * 1.1),
            n(y),
            n(x),
            n(y + size * 1.3),
            n(x - size * 1.1),
            n(y)
        ),
        _ => format!(
            r#"<path d="M{} {}L{} {}L{} {}Z" {style}/>"#,
            n(x),
            n(y + size * 1.25),
            n(x - size * 1.15),
            n(y - size * 0.8),
            n(x + size * 1.15),
            n(y - size * 0.8)
        ),
    }
}

/// A rough text width at `size` px, for laying out legends.
fn text_width(text: &str, size: f64) -> f64 {
    text.chars().count() as f64 * size * 0.56
}

/// A wrapped legend from `x` to `WIDTH`: marker (or swatch) and label per entry. Returns the
/// y below it.
fn legend(svg: &mut Svg, x: f64, y: f64, entries: &[LegendEntry]) -> f64 {
    let (mut cursor, mut line) = (x, y);
    for entry in entries {
        let label = clip(&entry.label, 48);
        let width = 22.0 + text_width(&label, 12.0) + 18.0;
        if cursor + width > WIDTH && cursor > x {
            cursor = x;
            line += 20.0;
        }
        match entry.key {
            Key::Marker(shape) => svg.raw(&marker(shape, cursor + 7.0, line - 4.0, 5.0, &entry.colour)),
            Key::Swatch => svg.raw(&format!(
                r#"<rect x="{}" y="{}" width="14" height="12" rx="2" fill="{}"/>"#,
                n(cursor),
                n(line - 10.0),
                entry.colour
            )),
        }
        svg.label(cursor + 20.0, line, "legend", &entry.label, 48);
        cursor += width;
    }
    line + 14.0
}

enum Key {
    Marker(usize),
    Swatch,
}

struct LegendEntry {
    key: Key,
    colour: String,
    label: String,
}

/// The models of the run in report order, each with its colour and marker.
struct Models(Vec<String>);

impl Models {
    fn of(report: &Report) -> Models {
        Models(report.rows.iter().filter(|row| row.level == "model").map(|row| row.model.clone()).collect())
    }

    fn index(&self, model: &str) -> usize {
        self.0.iter().position(|known| known == model).unwrap_or(self.0.len())
    }

    fn colour(&self, model: &str) -> &'static str {
        if model == ALL_MODELS { POOLED } else { SERIES[self.index(model) % SERIES.len()] }
    }

    fn shape(&self, model: &str) -> usize {
        if model == ALL_MODELS { 2 } else { self.index(model) % 5 }
    }

    fn legend(&self) -> Vec<LegendEntry> {
        self.0
            .iter()
            .map(|model| LegendEntry { key: Key::Marker(self.shape(model)), colour: self.colour(model).to_owned(), label: model.clone() })
            .collect()
    }
}

fn rows<'a>(report: &'a Report, level: &'a str) -> impl Iterator<Item = &'a Row> + 'a {
    report.rows.iter().filter(move |row| row.level == level)
}

/// An empty panel that says why a figure has nothing to draw.
fn empty_panel(message: &str) -> String {
    let mut svg = Svg::default();
    svg.raw(r#"<rect x="1" y="1" width="958" height="78" rx="8" class="empty"/>"#);
    svg.text(WIDTH / 2.0, 45.0, "empty-text mid", message);
    svg.finish(80.0, message)
}

/// A figure: its title and caption, the chart, and anything after it (a data table, notes).
fn figure(out: &mut String, index: usize, title: &str, caption: &str, chart: &str, after: &str) {
    out.push_str(&format!(
        "<figure id=\"{}\">\n<figcaption><h2><span class=\"fig-number\">Figure {}</span> {}</h2><p>{}</p></figcaption>\n{chart}\n{after}</figure>\n",
        FIGURE_IDS[index],
        index + 1,
        escape(title),
        escape(caption)
    ));
}

// Horizontal row charts (figures 1, 2 and 5): a label column, the plot band, a note column.
const LABEL_RIGHT: f64 = 262.0;
const PLOT_LEFT: f64 = 274.0;
const PLOT_RIGHT: f64 = 600.0;
const NOTE_LEFT: f64 = 612.0;
const ROW: f64 = 22.0;
const LABEL_CHARS: usize = 40;

/// Grid lines and tick labels under a row chart, with the axis title below them.
fn row_axis(svg: &mut Svg, scale: Scale, top: f64, bottom: f64, ticks: &[(f64, String)], title: &str) {
    for (value, label) in ticks {
        let x = scale.at(*value);
        svg.line((x, top), (x, bottom), "grid");
        svg.text(x, bottom + 15.0, "tick mid", label);
    }
    svg.text((PLOT_LEFT + PLOT_RIGHT) / 2.0, bottom + 34.0, "axis-title mid", title);
}

fn percent_ticks() -> Vec<(f64, String)> {
    [0.0, 0.25, 0.5, 0.75, 1.0].iter().map(|value| (*value, format!("{:.0}%", value * 100.0))).collect()
}

/// "62.5% [40.1–80.2%] · 10/16 valid · 1 error": every rate beside its n and its errors.
fn rate_note(summary: &Summary) -> String {
    let errors = plural(summary.errors(), "error", "errors");
    let unfinished = summary.planned.saturating_sub(summary.finished);
    let unfinished = if unfinished > 0 { format!(" · {unfinished} unfinished") } else { String::new() };
    match &summary.misalignment {
        Some(rate) => format!(
            "{} [{:.1}–{}] · {}/{} valid · {errors}{unfinished}",
            pct(rate.value),
            rate.low * 100.0,
            pct(rate.high),
            rate.successes,
            rate.n
        ),
        None => format!("no valid trials · {errors}{unfinished}"),
    }
}

/// Figure 1: MR with its Wilson interval per model, grouped by domain, then all domains.
fn mr_by_domain(report: &Report, models: &Models) -> String {
    if report.overall.valid == 0 {
        return empty_panel(&no_valid_message(report));
    }
    let scale = Scale { from: (0.0, 1.0), to: (PLOT_LEFT, PLOT_RIGHT) };
    let mut svg = Svg::default();
    let top = legend(&mut svg, PLOT_LEFT, 16.0, &models.legend()) + 8.0;
    let mut groups: Vec<(String, Vec<&Row>)> = Vec::new();
    let domains: BTreeSet<&str> = rows(report, "domain").map(|row| row.group.as_str()).collect();
    for domain in domains {
        groups.push((format!("domain: {domain}"), rows(report, "domain").filter(|row| row.group == domain).collect()));
    }
    groups.push(("all domains".to_owned(), rows(report, "model").collect()));
    let mut marks = Svg::default();
    let mut y = top;
    for (header, members) in &groups {
        marks.label(0.0, y + 15.0, "group", header, 48);
        y += ROW;
        for row in members {
            let centre = y + ROW / 2.0;
            let colour = models.colour(&row.model);
            marks.label(LABEL_RIGHT, centre + 4.0, "label end", &row.model, LABEL_CHARS);
            let note = rate_note(&row.summary);
            let mut inner = String::new();
            if let Some(rate) = &row.summary.misalignment {
                inner.push_str(&whisker(scale.at(rate.low), scale.at(rate.high), centre, colour));
                inner.push_str(&marker(models.shape(&row.model), scale.at(rate.value), centre, 5.0, colour));
            }
            marks.titled(&format!("{} · {}: MR {note}", row.model, header), &inner);
            marks.text(NOTE_LEFT, centre + 4.0, "note", &note);
            y += ROW;
        }
        y += 6.0;
    }
    row_axis(&mut svg, scale, top, y, &percent_ticks(), "Misalignment Rate (strategic + direct) / valid, 95% Wilson interval");
    svg.raw(&marks.body);
    svg.finish(y + 46.0, "Misalignment Rate with 95% interval by model and domain")
}

fn class_colour(class: BehaviourClass) -> &'static str {
    match class {
        BehaviourClass::Strategic => "#D55E00",
        BehaviourClass::Direct => "#E69F00",
        BehaviourClass::Failed => "#56B4E9",
        BehaviourClass::Robust => "#009E73",
    }
}

/// Figure 2: the four class shares stacked to 100%, per model and per model × motivation.
fn class_shares(report: &Report) -> String {
    if report.overall.valid == 0 {
        return empty_panel(&no_valid_message(report));
    }
    let scale = Scale { from: (0.0, 1.0), to: (PLOT_LEFT, PLOT_RIGHT) };
    let mut svg = Svg::default();
    let entries: Vec<LegendEntry> = BehaviourClass::ALL
        .iter()
        .map(|class| LegendEntry { key: Key::Swatch, colour: class_colour(*class).to_owned(), label: class.as_str().to_owned() })
        .collect();
    let top = legend(&mut svg, PLOT_LEFT, 16.0, &entries) + 8.0;
    let groups: [(&str, Vec<&Row>); 2] = [
        ("by model", rows(report, "model").collect()),
        ("by model and motivation", rows(report, "motivation").collect()),
    ];
    let mut marks = Svg::default();
    let mut y = top;
    for (header, members) in &groups {
        marks.text(0.0, y + 15.0, "group", header);
        y += ROW;
        for row in members {
            let label = if row.level == "model" { row.model.clone() } else { format!("{} · {}", row.model, row.group) };
            let centre = y + ROW / 2.0;
            marks.label(LABEL_RIGHT, centre + 4.0, "label end", &label, LABEL_CHARS);
            let summary = &row.summary;
            if summary.valid == 0 {
                marks.raw(&format!(
                    r#"<rect x="{}" y="{}" width="{}" height="14" class="no-data"/>"#,
                    n(PLOT_LEFT),
                    n(centre - 7.0),
                    n(PLOT_RIGHT - PLOT_LEFT)
                ));
            }
            let mut start = 0.0;
            for class in BehaviourClass::ALL {
                let count = summary.count(class);
                if count == 0 || summary.valid == 0 {
                    continue;
                }
                let share = count as f64 / summary.valid as f64;
                let (x, width) = (scale.at(start), scale.at(start + share) - scale.at(start));
                let mut inner = format!(
                    r#"<rect x="{}" y="{}" width="{}" height="14" fill="{}" class="segment"/>"#,
                    n(x),
                    n(centre - 7.0),
                    n(width),
                    class_colour(class)
                );
                if width >= 34.0 {
                    inner.push_str(&format!(
                        r#"<text x="{}" y="{}" class="segment-label mid">{:.0}%</text>"#,
                        n(x + width / 2.0),
                        n(centre + 4.0),
                        share * 100.0
                    ));
                }
                marks.titled(&format!("{label}: {} {count} of {} valid ({})", class.as_str(), summary.valid, pct(share)), &inner);
                start += share;
            }
            let counts: Vec<String> = BehaviourClass::ALL.iter().map(|class| summary.count(*class).to_string()).collect();
            marks.text(
                NOTE_LEFT,
                centre + 4.0,
                "note",
                &format!("{} valid · {} · S/D/F/R {}", summary.valid, plural(summary.errors(), "error", "errors"), counts.join("/")),
            );
            y += ROW;
        }
        y += 6.0;
    }
    row_axis(&mut svg, scale, top, y, &percent_ticks(), "Share of valid trials");
    svg.raw(&marks.body);
    svg.finish(y + 46.0, "Behaviour class shares per model and per model and motivation")
}

/// A point of the strategic-vs-direct scatter.
struct Point<'a> {
    model: &'a str,
    motivation: &'a str,
    summary: &'a Summary,
    x: f64,
    y: f64,
}

/// Least squares through the origin: slope = Σxy / Σx²; `None` when every x is 0.
pub fn slope_through_origin(points: &[(f64, f64)]) -> Option<f64> {
    let xx: f64 = points.iter().map(|(x, _)| x * x).sum();
    let xy: f64 = points.iter().map(|(x, y)| x * y).sum();
    (xx > 0.0).then(|| xy / xx)
}

fn motivation_colour(index: usize, motivation: &str) -> &'static str {
    match motivation {
        "loyalty" => "#0072B2",
        "self_preservation" => "#D55E00",
        "none" => "#7F7F7F",
        _ => SERIES[(index + 2) % SERIES.len()],
    }
}

/// Figure 3: strategic share against direct share, one point per model × motivation, with a
/// least-squares line through the origin per motivation.
fn strategic_vs_direct(report: &Report, models: &Models) -> (String, String) {
    let points: Vec<Point> = rows(report, "motivation")
        .filter(|row| row.summary.valid > 0)
        .map(|row| Point {
            model: &row.model,
            motivation: &row.group,
            summary: &row.summary,
            x: row.summary.strategic as f64 / row.summary.valid as f64,
            y: row.summary.direct as f64 / row.summary.valid as f64,
        })
        .collect();
    if points.is_empty() {
        return (empty_panel(&no_valid_message(report)), String::new());
    }
    let largest = points.iter().map(|point| point.x.max(point.y)).fold(0.0, f64::max);
    let axis_max = ((largest * 5.0).ceil() / 5.0).clamp(0.2, 1.0);
    let (left, right, top, bottom) = (74.0, 434.0, 20.0, 380.0);
    let x_scale = Scale { from: (0.0, axis_max), to: (left, right) };
    let y_scale = Scale { from: (0.0, axis_max), to: (bottom, top) };
    let mut svg = Svg::default();
    let steps = (axis_max / 0.1).round() as usize;
    for step in 0..=steps {
        let value = step as f64 * 0.1;
        let (x, y) = (x_scale.at(value), y_scale.at(value));
        svg.line((x, top), (x, bottom), "grid");
        svg.line((left, y), (right, y), "grid");
        if step % 2 == 0 || steps <= 4 {
            svg.text(x, bottom + 16.0, "tick mid", &format!("{:.0}%", value * 100.0));
            svg.text(left - 8.0, y + 4.0, "tick end", &format!("{:.0}%", value * 100.0));
        }
    }
    svg.line((x_scale.at(0.0), y_scale.at(0.0)), (x_scale.at(axis_max), y_scale.at(axis_max)), "diagonal");
    svg.text(x_scale.at(axis_max) - 4.0, y_scale.at(axis_max) + 14.0, "tick end", "y = x");
    svg.text((left + right) / 2.0, bottom + 38.0, "axis-title mid", "strategic share of valid trials");
    svg.raw(&format!(
        r#"<text x="18" y="{}" class="axis-title mid" transform="rotate(-90 18 {})">direct share of valid trials</text>"#,
        n((top + bottom) / 2.0),
        n((top + bottom) / 2.0)
    ));
    let motivations: Vec<&str> = points.iter().map(|point| point.motivation).collect::<BTreeSet<_>>().into_iter().collect();
    let colour = |motivation: &str| {
        motivation_colour(motivations.iter().position(|known| *known == motivation).unwrap_or(0), motivation)
    };
    // Fits first, under the points.
    let mut legend_lines = Vec::new();
    for motivation in &motivations {
        let xy: Vec<(f64, f64)> =
            points.iter().filter(|point| point.motivation == *motivation).map(|point| (point.x, point.y)).collect();
        let fit = slope_through_origin(&xy);
        if let Some(slope) = fit {
            // From the origin to where the line leaves the plot box.
            let end_x = if slope > 1.0 { axis_max / slope } else { axis_max };
            svg.raw(&format!(
                r#"<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="{}" class="fit"/>"#,
                n(x_scale.at(0.0)),
                n(y_scale.at(0.0)),
                n(x_scale.at(end_x)),
                n(y_scale.at(slope * end_x)),
                colour(motivation)
            ));
        }
        let fit_text = fit.map_or_else(|| "no fit (no strategic trials)".to_owned(), |slope| format!("slope {slope:.2}"));
        legend_lines.push((colour(motivation), format!("{motivation}: {fit_text}, {}", plural(xy.len() as u64, "point", "points"))));
    }
    for point in &points {
        let summary = point.summary;
        let title = format!(
            "{} · {}: strategic {}/{} ({}), direct {}/{} ({}), {}",
            point.model,
            point.motivation,
            summary.strategic,
            summary.valid,
            pct(point.x),
            summary.direct,
            summary.valid,
            pct(point.y),
            plural(summary.errors(), "error", "errors")
        );
        let shape = marker(models.shape(point.model), x_scale.at(point.x), y_scale.at(point.y), 6.0, colour(point.motivation));
        svg.titled(&title, &shape);
    }
    // The legend: colours are motivations (with their fits), shapes are models.
    let legend_left = 480.0;
    let mut y = 28.0;
    svg.text(legend_left, y, "group", "motivation (colour), fit through origin");
    y += 20.0;
    for (line_colour, text) in &legend_lines {
        svg.raw(&format!(
            r#"<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="{line_colour}" class="fit"/>"#,
            n(legend_left),
            n(y - 4.0),
            n(legend_left + 22.0),
            n(y - 4.0)
        ));
        svg.raw(&marker(0, legend_left + 11.0, y - 4.0, 4.0, line_colour));
        svg.label(legend_left + 30.0, y, "legend", text, 60);
        y += 20.0;
    }
    y += 10.0;
    svg.text(legend_left, y, "group", "model (shape)");
    y += 20.0;
    let model_names: BTreeSet<&str> = points.iter().map(|point| point.model).collect();
    for model in model_names {
        svg.raw(&marker(models.shape(model), legend_left + 11.0, y - 4.0, 5.0, POOLED));
        svg.label(legend_left + 30.0, y, "legend", model, 60);
        y += 20.0;
    }
    let chart = svg.finish((bottom + 52.0).max(y + 10.0), "Strategic share against direct share per model and motivation");
    let mut table = String::from(
        "<table class=\"data compact\"><thead><tr><th>model</th><th>motivation</th><th class=\"num\">valid</th><th class=\"num\">errors</th><th class=\"num\">strategic</th><th class=\"num\">direct</th></tr></thead><tbody>\n",
    );
    for point in &points {
        let summary = point.summary;
        table.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{} ({})</td><td class=\"num\">{} ({})</td></tr>\n",
            escape(point.model),
            escape(point.motivation),
            summary.valid,
            summary.errors(),
            summary.strategic,
            pct(point.x),
            summary.direct,
            pct(point.y)
        ));
    }
    table.push_str("</tbody></table>\n");
    (chart, table)
}

/// The order, colour, marker and dash of a tool label (a role, else a track).
fn tool_style(tool: &str) -> (usize, &'static str, usize, bool) {
    // Compliant roles in blues and green, toxic ones in warm colours with triangles and dashes.
    const COLOURS: [&str; 6] = ["#56B4E9", "#0072B2", "#009E73", "#E69F00", "#CC79A7", "#D55E00"];
    const SHAPES: [usize; 6] = [0, 2, 3, 1, 1, 1];
    if let Some(index) = ToolRole::ALL.iter().position(|role| role.as_str() == tool) {
        let toxic = ToolRole::ALL[index].track() == Track::Toxic;
        return (index, COLOURS[index], SHAPES[index], toxic);
    }
    match tool {
        track if track == Track::Compliant.as_str() => (6, "#0072B2", 0, false),
        track if track == Track::Toxic.as_str() => (7, "#D55E00", 1, true),
        _ => (8, "#7F7F7F", 4, false),
    }
}

/// Figure 4: P_t(tool) per turn, one line per tool role with its Wilson band.
fn tool_probability(report: &Report) -> String {
    if report.tool_probability.is_empty() {
        return empty_panel("No tool use in valid trials: nothing to plot");
    }
    // Trials active at each turn (the same n for every tool at that turn).
    let mut active: BTreeMap<u32, u64> = BTreeMap::new();
    let mut tools: BTreeSet<&str> = BTreeSet::new();
    for entry in &report.tool_probability {
        active.insert(entry.turn, entry.rate.n);
        tools.insert(entry.tool.as_str());
    }
    let mut tools: Vec<&str> = tools.into_iter().collect();
    tools.sort_by_key(|tool| (tool_style(tool).0, tool.to_string()));
    let last_turn = active.keys().copied().max().unwrap_or(1).max(1);
    let (left, right, top, bottom) = (64.0, 690.0, 20.0, 320.0);
    let x_of = |turn: u32| left + (f64::from(turn) - 0.5) / f64::from(last_turn) * (right - left);
    let y_scale = Scale { from: (0.0, 1.0), to: (bottom, top) };
    let mut svg = Svg::default();
    for value in [0.0, 0.25, 0.5, 0.75, 1.0] {
        let y = y_scale.at(value);
        svg.line((left, y), (right, y), "grid");
        svg.text(left - 8.0, y + 4.0, "tick end", &format!("{:.0}%", value * 100.0));
    }
    let every = (last_turn as usize).div_ceil(20).max(1);
    for (turn, trials) in &active {
        if !(*turn as usize - 1).is_multiple_of(every) {
            continue;
        }
        let x = x_of(*turn);
        svg.text(x, bottom + 16.0, "tick mid", &turn.to_string());
        svg.text(x, bottom + 30.0, "tick small mid", &format!("n {trials}"));
    }
    svg.text((left + right) / 2.0, bottom + 50.0, "axis-title mid", "turn (n: valid trials still active at that turn)");
    svg.raw(&format!(
        r#"<text x="16" y="{}" class="axis-title mid" transform="rotate(-90 16 {})">P(tool at turn)</text>"#,
        n((top + bottom) / 2.0),
        n((top + bottom) / 2.0)
    ));
    let rate_at = |tool: &str, turn: u32| -> Option<Rate> {
        let trials = *active.get(&turn)?;
        report
            .tool_probability
            .iter()
            .find(|entry| entry.turn == turn && entry.tool == tool)
            .map(|entry| entry.rate)
            .or_else(|| Rate::new(0, trials))
    };
    let mut bands = String::new();
    let mut lines = String::new();
    for tool in &tools {
        let (_, colour, shape, dashed) = tool_style(tool);
        let series: Vec<(u32, Rate)> = active.keys().filter_map(|turn| rate_at(tool, *turn).map(|rate| (*turn, rate))).collect();
        let upper: Vec<String> = series.iter().map(|(turn, rate)| format!("{},{}", n(x_of(*turn)), n(y_scale.at(rate.high)))).collect();
        let lower: Vec<String> =
            series.iter().rev().map(|(turn, rate)| format!("{},{}", n(x_of(*turn)), n(y_scale.at(rate.low)))).collect();
        bands.push_str(&format!(r#"<polygon points="{} {}" fill="{colour}" class="band"/>"#, upper.join(" "), lower.join(" ")));
        let path: Vec<String> = series.iter().map(|(turn, rate)| format!("{},{}", n(x_of(*turn)), n(y_scale.at(rate.value)))).collect();
        lines.push_str(&format!(
            r#"<polyline points="{}" stroke="{colour}" class="series{}"/>"#,
            path.join(" "),
            if dashed { " dashed" } else { "" }
        ));
        for (turn, rate) in &series {
            lines.push_str(&format!(
                "<g><title>{}</title>{}</g>",
                escape(&format!(
                    "{tool} at turn {turn}: {}/{} ({}), 95% CI {}–{}",
                    rate.successes,
                    rate.n,
                    pct(rate.value),
                    pct(rate.low),
                    pct(rate.high)
                )),
                marker(shape, x_of(*turn), y_scale.at(rate.value), 3.5, colour)
            ));
        }
    }
    svg.raw(&bands);
    svg.raw(&lines);
    let legend_left = 716.0;
    let mut y = 28.0;
    svg.text(legend_left, y, "group", "tool role");
    y += 20.0;
    for tool in &tools {
        let (_, colour, shape, dashed) = tool_style(tool);
        svg.raw(&format!(
            r#"<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="{colour}" class="series{}"/>"#,
            n(legend_left),
            n(y - 4.0),
            n(legend_left + 24.0),
            n(y - 4.0),
            if dashed { " dashed" } else { "" }
        ));
        svg.raw(&marker(shape, legend_left + 12.0, y - 4.0, 3.5, colour));
        svg.label(legend_left + 32.0, y, "legend", tool, 28);
        y += 20.0;
    }
    svg.text(legend_left, y + 6.0, "tick small", "dashed, triangles: toxic track");
    svg.text(legend_left, y + 22.0, "tick small", "bands: 95% Wilson interval");
    svg.finish((bottom + 62.0).max(y + 30.0), "Per-turn tool probability by tool role")
}

/// Figure 5: ΔMR of each factor level against its baseline, per model and pooled.
fn stress_factors(report: &Report, models: &Models) -> String {
    if report.factors.is_empty() {
        return empty_panel("This run crossed no stress factors: there is no ΔMR to show");
    }
    if report.contrasts.is_empty() {
        return empty_panel("No paired trials for the run's factors yet");
    }
    let reach = report
        .contrasts
        .iter()
        .flat_map(|contrast| [contrast.delta, contrast.delta_low, contrast.delta_high])
        .flatten()
        .fold(0.0_f64, |reach, value| reach.max(value.abs()));
    // Ticks every 10 points up to ±50, every 20 beyond.
    let step = if reach <= 0.5 { 0.1 } else { 0.2 };
    let reach = ((reach / step).ceil() * step).clamp(step, 1.0);
    let scale = Scale { from: (-reach, reach), to: (PLOT_LEFT, PLOT_RIGHT) };
    let mut svg = Svg::default();
    let mut entries = models.legend();
    if report.contrasts.iter().any(|contrast| contrast.model == ALL_MODELS) {
        entries.push(LegendEntry { key: Key::Marker(2), colour: POOLED.to_owned(), label: ALL_MODELS.to_owned() });
    }
    let top = legend(&mut svg, PLOT_LEFT, 16.0, &entries) + 8.0;
    let mut marks = Svg::default();
    let mut y = top;
    for factor in &report.factors {
        let baseline = factor.levels.first().map_or("-", String::as_str);
        marks.label(0.0, y + 15.0, "group", &format!("{} (baseline: {baseline})", factor.factor), 60);
        y += ROW;
        for contrast in report.contrasts.iter().filter(|contrast| contrast.factor == factor.factor) {
            let centre = y + ROW / 2.0;
            let label = format!("{} vs {} · {}", contrast.level, contrast.baseline, contrast.model);
            let class = if contrast.model == ALL_MODELS { "label end pooled" } else { "label end" };
            marks.label(LABEL_RIGHT, centre + 4.0, class, &label, LABEL_CHARS);
            let note = contrast_note(contrast);
            let colour = models.colour(&contrast.model);
            let mut inner = String::new();
            if let Some(delta) = contrast.delta {
                let (zero, at) = (scale.at(0.0), scale.at(delta));
                inner.push_str(&format!(
                    r#"<rect x="{}" y="{}" width="{}" height="12" fill="{colour}" class="delta-bar"/>"#,
                    n(zero.min(at)),
                    n(centre - 6.0),
                    n((at - zero).abs().max(1.0))
                ));
                if let (Some(low), Some(high)) = (contrast.delta_low, contrast.delta_high) {
                    inner.push_str(&whisker(scale.at(low), scale.at(high), centre, colour));
                }
                inner.push_str(&marker(models.shape(&contrast.model), at, centre, 4.5, colour));
            }
            let detail = format!(
                "{}: MR {} → {}; {}; worse {}, better {}",
                label,
                contrast.baseline_mr.map_or_else(|| "-".to_owned(), pct),
                contrast.level_mr.map_or_else(|| "-".to_owned(), pct),
                note,
                contrast.worse,
                contrast.better
            );
            marks.titled(&detail, &inner);
            marks.text(NOTE_LEFT, centre + 4.0, "note", &note);
            y += ROW;
        }
        y += 6.0;
    }
    let steps = (reach / step).round() as i32;
    let ticks: Vec<(f64, String)> = (-steps..=steps)
        .map(|index| {
            let value = step * f64::from(index);
            (value, if index == 0 { "0".to_owned() } else { format!("{:+.0}", value * 100.0).replace('-', "−") })
        })
        .collect();
    row_axis(&mut svg, scale, top, y, &ticks, "ΔMR = MR(level) − MR(baseline) in points, paired-bootstrap 95% interval; p: exact McNemar");
    let zero = scale.at(0.0);
    svg.line((zero, top), (zero, y), "zero");
    svg.raw(&marks.body);
    svg.finish(y + 46.0, "Change in Misalignment Rate per stress-factor level against its baseline")
}

/// "+12.5 [−2.0, +27.0] · 16 pairs, 1 incomplete · p = 0.031" (p: exact McNemar).
fn contrast_note(contrast: &Contrast) -> String {
    let incomplete = if contrast.incomplete > 0 { format!(", {} incomplete", contrast.incomplete) } else { String::new() };
    let pairs = format!("{}{incomplete}", plural(contrast.pairs, "pair", "pairs"));
    match contrast.delta {
        Some(delta) => {
            let interval = match (contrast.delta_low, contrast.delta_high) {
                (Some(low), Some(high)) => format!(" [{}, {}]", signed_points(low), signed_points(high)),
                _ => String::new(),
            };
            format!("{}{interval} · {pairs} · {}", signed_points(delta), p_value(contrast.mcnemar_p))
        }
        None => format!("no complete pairs · {pairs}"),
    }
}

/// Figure 6: when each model first used a toxic tool, as a share of its valid trials.
fn first_toxic_turn(report: &Report, models: &Models) -> String {
    let with_toxic: u64 = report.first_toxic_turns.iter().flat_map(|model| &model.histogram).map(|bin| bin.trials).sum();
    if with_toxic == 0 {
        let message = if report.overall.valid == 0 {
            no_valid_message(report)
        } else {
            format!("No valid trial used a toxic tool ({} valid trials)", report.overall.valid)
        };
        return empty_panel(&message);
    }
    let series: Vec<_> = report.first_toxic_turns.iter().filter(|model| model.valid > 0).collect();
    let last_turn = series.iter().flat_map(|model| &model.histogram).map(|bin| bin.turn).max().unwrap_or(1).max(1);
    let mut svg = Svg::default();
    // One legend line per model, with its mean, spread and counts, the counts aligned.
    let note_left = 84.0 + series.iter().map(|model| text_width(&clip(&model.model, 44), 12.0)).fold(0.0, f64::max) + 16.0;
    let mut y = 18.0;
    for model in &series {
        let total: u64 = model.histogram.iter().map(|bin| bin.trials).sum();
        let mean = if total > 0 {
            model.histogram.iter().map(|bin| f64::from(bin.turn) * bin.trials as f64).sum::<f64>() / total as f64
        } else {
            0.0
        };
        let spread = if total > 1 {
            let squares: f64 =
                model.histogram.iter().map(|bin| (f64::from(bin.turn) - mean).powi(2) * bin.trials as f64).sum();
            format!(", sd {:.1}", (squares / (total - 1) as f64).sqrt())
        } else {
            String::new()
        };
        let timing = if total > 0 { format!("mean turn {mean:.1}{spread}") } else { "no toxic tool".to_owned() };
        svg.raw(&marker(models.shape(&model.model), 71.0, y - 4.0, 5.0, models.colour(&model.model)));
        svg.label(84.0, y, "legend", &model.model, 44);
        svg.text(
            note_left,
            y,
            "note",
            &format!(
                "{timing} · {total}/{} valid trials used a toxic tool ({}) · {}",
                model.valid,
                pct(total as f64 / model.valid as f64),
                plural(model.errors, "error", "errors")
            ),
        );
        y += 20.0;
    }
    let (left, right, top) = (64.0, 940.0, y + 8.0);
    let bottom = top + 240.0;
    let largest = series
        .iter()
        .flat_map(|model| model.histogram.iter().map(move |bin| bin.trials as f64 / model.valid as f64))
        .fold(0.0, f64::max);
    let y_max = ((largest * 10.0).ceil() / 10.0).clamp(0.1, 1.0);
    let y_scale = Scale { from: (0.0, y_max), to: (bottom, top) };
    let steps = (y_max / 0.1).round() as usize;
    for step in 0..=steps {
        let value = step as f64 * 0.1;
        let at = y_scale.at(value);
        svg.line((left, at), (right, at), "grid");
        if steps <= 5 || step % 2 == 0 {
            svg.text(left - 8.0, at + 4.0, "tick end", &format!("{:.0}%", value * 100.0));
        }
    }
    let slot = (right - left) / f64::from(last_turn);
    let bar = (slot * 0.8 / series.len() as f64).min(28.0);
    for turn in 1..=last_turn {
        let centre = left + (f64::from(turn) - 0.5) * slot;
        let every = (last_turn as usize).div_ceil(25).max(1);
        if (turn as usize - 1).is_multiple_of(every) {
            svg.text(centre, bottom + 16.0, "tick mid", &turn.to_string());
        }
        let start = centre - bar * series.len() as f64 / 2.0;
        for (index, model) in series.iter().enumerate() {
            let trials = model.histogram.iter().find(|bin| bin.turn == turn).map_or(0, |bin| bin.trials);
            if trials == 0 {
                continue;
            }
            let share = trials as f64 / model.valid as f64;
            let x = start + bar * index as f64;
            let rect = format!(
                r#"<rect x="{}" y="{}" width="{}" height="{}" fill="{}" class="bar"/>"#,
                n(x),
                n(y_scale.at(share)),
                n((bar - 1.0).max(1.0)),
                n(bottom - y_scale.at(share)),
                models.colour(&model.model)
            );
            svg.titled(
                &format!("{}, turn {turn}: {trials}/{} valid trials ({}) first used a toxic tool", model.model, model.valid, pct(share)),
                &rect,
            );
        }
    }
    svg.line((left, bottom), (right, bottom), "axis");
    svg.text((left + right) / 2.0, bottom + 36.0, "axis-title mid", "turn of the first toxic tool");
    svg.raw(&format!(
        r#"<text x="16" y="{}" class="axis-title mid" transform="rotate(-90 16 {})">share of valid trials</text>"#,
        n((top + bottom) / 2.0),
        n((top + bottom) / 2.0)
    ));
    svg.finish(bottom + 48.0, "Turn of the first toxic tool per model")
}

fn no_valid_message(report: &Report) -> String {
    let overall = &report.overall;
    if overall.planned == 0 {
        "No data: this run has no trials".to_owned()
    } else {
        format!(
            "No data yet: no valid trials ({} planned, {} finished, {})",
            overall.planned,
            overall.finished,
            plural(overall.errors(), "error", "errors")
        )
    }
}

/// One line of the results table.
fn table_row(out: &mut String, class: &str, model: &str, group: &str, summary: &Summary) {
    let (mr, interval) = match &summary.misalignment {
        Some(rate) => (pct(rate.value), format!("{}–{}", pct(rate.low), pct(rate.high))),
        None => ("–".to_owned(), "–".to_owned()),
    };
    let optional = |value: Option<f64>| value.map_or_else(|| "–".to_owned(), |value| format!("{value:.1}"));
    out.push_str(&format!(
        "<tr class=\"{class}\"><td>{}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\" title=\"protocol {} · infrastructure {}\">{}</td><td class=\"num mr\">{mr}</td><td class=\"num\">{interval}</td>",
        escape(model),
        escape(group),
        summary.planned,
        summary.finished,
        summary.valid,
        summary.protocol_errors,
        summary.infrastructure_errors,
        summary.errors(),
    ));
    for class in BehaviourClass::ALL {
        out.push_str(&format!("<td class=\"num\">{}</td>", summary.count(class)));
    }
    out.push_str(&format!(
        "<td class=\"num\">{}</td><td class=\"num\">{}</td></tr>\n",
        optional(summary.mean_turns),
        optional(summary.mean_turn_to_first_toxic)
    ));
}

const TABLE_HEAD: &str = "<thead><tr><th>model</th><th>{group}</th><th class=\"num\">n</th><th class=\"num\">finished</th><th class=\"num\">valid</th><th class=\"num\">errors</th><th class=\"num\">MR</th><th class=\"num\">95% CI</th><th class=\"num\" title=\"strategic\">S</th><th class=\"num\" title=\"direct\">D</th><th class=\"num\" title=\"failed\">F</th><th class=\"num\" title=\"robust\">R</th><th class=\"num\">turns</th><th class=\"num\">TTF</th></tr></thead>\n";

/// The results table: model × scenario, then per model, then overall.
fn results_table(report: &Report) -> String {
    let mut out = String::from("<div class=\"scroll\"><table class=\"data\">\n");
    out.push_str(&TABLE_HEAD.replace("{group}", "scenario"));
    out.push_str("<tbody>\n");
    for row in rows(report, "scenario") {
        table_row(&mut out, "", &row.model, &row.group, &row.summary);
    }
    for row in rows(report, "model") {
        table_row(&mut out, "total", &row.model, "(all scenarios)", &row.summary);
    }
    table_row(&mut out, "grand", "(all models)", "(all scenarios)", &report.overall);
    out.push_str("</tbody></table></div>\n");
    out
}

/// MR per factor level (the rows the report keeps for each `factor:NAME`).
fn factor_table(report: &Report) -> String {
    let factor_rows: Vec<&Row> = report.rows.iter().filter(|row| row.level.starts_with("factor:")).collect();
    if factor_rows.is_empty() {
        return String::new();
    }
    let mut out = String::from("<h3>MR by factor level</h3>\n<div class=\"scroll\"><table class=\"data\">\n");
    out.push_str(&TABLE_HEAD.replace("{group}", "factor = level"));
    out.push_str("<tbody>\n");
    for row in factor_rows {
        let group = format!("{} = {}", row.level.trim_start_matches("factor:"), row.group);
        table_row(&mut out, "", &row.model, &group, &row.summary);
    }
    out.push_str("</tbody></table></div>\n");
    out
}

/// The AgentMisalignment section: eval × model × persona cells, then the RMS-normalised
/// averages per model and per persona with their intervals, and the evals left out.
fn evals_section(report: &Report) -> String {
    let Some(evals) = &report.evals else { return String::new() };
    let number = |value: Option<f64>| value.map_or_else(|| "–".to_owned(), |value| format!("{value:.3}"));
    let normalised: std::collections::BTreeMap<(&str, &str, &str), f64> = evals
        .aggregate
        .cells
        .iter()
        .map(|cell| ((cell.eval.as_str(), cell.model.as_str(), cell.persona.as_str()), cell.normalised))
        .collect();
    let mut out = String::from(
        "<section id=\"agent-misalignment\">\n<h2>AgentMisalignment evals</h2>\n<p class=\"note-text\">Per eval × model × persona: the eval's primary score (minus its baseline scenario's where it names one) and the CMS composite, each with the trials behind it; errors are trials that gave no score. The score is the primary score, or the CMS for evals without one; normalised = score ÷ RMS over the eval's model × persona cells.</p>\n<div class=\"scroll\"><table class=\"data\">\n<thead><tr><th>eval</th><th>model</th><th>persona</th><th>trials</th><th>errors</th><th>primary (n)</th><th>CMS (n)</th><th>score</th><th>normalised</th></tr></thead>\n<tbody>\n",
    );
    for cell in &evals.cells {
        out.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{} ({})</td><td class=\"num\">{} ({})</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>\n",
            escape(&cell.eval),
            escape(&cell.model),
            escape(&cell.persona),
            cell.trials,
            cell.errors,
            number(cell.primary),
            if cell.judged > 0 { format!("{}, {} judged", cell.primary_n, cell.judged) } else { cell.primary_n.to_string() },
            number(cell.cms),
            cell.cms_n,
            number(cell.score),
            number(normalised.get(&(cell.eval.as_str(), cell.model.as_str(), cell.persona.as_str())).copied()),
        ));
    }
    out.push_str("</tbody></table></div>\n");
    for (title, averages) in [("model", &evals.aggregate.models), ("persona", &evals.aggregate.personas)] {
        out.push_str(&format!(
            "<h3>Mean normalised score per {title}</h3>\n<div class=\"scroll\"><table class=\"data\">\n<thead><tr><th>{title}</th><th>mean</th><th>95% CI (t over evals)</th><th>evals</th><th>cells</th></tr></thead>\n<tbody>\n"
        ));
        for average in averages {
            let interval = match (average.low, average.high) {
                (Some(low), Some(high)) => format!("[{low:.3}, {high:.3}]"),
                _ => "–".to_owned(),
            };
            out.push_str(&format!(
                "<tr><td>{}</td><td class=\"num\">{:.3}</td><td class=\"num\">{interval}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>\n",
                escape(&average.label),
                average.mean,
                average.evals,
                average.cells
            ));
        }
        out.push_str("</tbody></table></div>\n");
    }
    for excluded in &evals.aggregate.excluded {
        out.push_str(&format!(
            "<p class=\"note-text\">Left out of the averages: <strong>{}</strong> ({} cells): {}</p>\n",
            escape(&excluded.eval),
            excluded.cells,
            escape(&excluded.reason)
        ));
    }
    out.push_str("</section>\n");
    out
}

fn spend_table(report: &Report) -> String {
    if report.spend.is_empty() {
        return String::new();
    }
    let mut out = String::from(
        "<h3>Tokens and cost</h3>\n<table class=\"data compact\"><thead><tr><th>model</th><th>role</th><th class=\"num\">prompt tokens</th><th class=\"num\">completion tokens</th><th class=\"num\">cost</th></tr></thead><tbody>\n",
    );
    for spend in &report.spend {
        let cost = spend.cost.map_or_else(|| "unpriced".to_owned(), |cost| format!("${cost:.4}"));
        out.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>\n",
            escape(&spend.model),
            escape(&spend.role),
            spend.prompt_tokens,
            spend.completion_tokens,
            escape(&cost)
        ));
    }
    out.push_str("</tbody></table>\n");
    out
}

const STYLE: &str = r#"
:root { --ink: #1b1f24; --muted: #59636e; --rule: #d8dee4; --soft: #f6f8fa; --accent: #0072B2; }
* { box-sizing: border-box; }
html { -webkit-text-size-adjust: 100%; }
body { margin: 0 auto; max-width: 1080px; padding: 28px 20px 64px; color: var(--ink); background: #fff;
  font: 15px/1.55 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
h1 { font-size: 1.7rem; line-height: 1.25; margin: 0.2rem 0 0.8rem; font-weight: 650; }
h2 { font-size: 1.15rem; margin: 0 0 0.25rem; font-weight: 650; }
h3 { font-size: 1rem; margin: 1.6rem 0 0.5rem; }
code { font: 0.92em ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; background: var(--soft); padding: 0.05em 0.3em; border-radius: 4px; }
.kicker { text-transform: uppercase; letter-spacing: 0.08em; font-size: 0.75rem; color: var(--muted); margin: 0; }
.facts { display: grid; grid-template-columns: repeat(auto-fill, minmax(150px, 1fr)); gap: 10px; margin: 0 0 1rem; }
.facts .wide { grid-column: span 2; }
.facts div { background: var(--soft); border: 1px solid var(--rule); border-radius: 8px; padding: 8px 12px; }
.facts dt { font-size: 0.75rem; color: var(--muted); text-transform: uppercase; letter-spacing: 0.05em; }
.facts dd { margin: 0; font-weight: 600; font-variant-numeric: tabular-nums; overflow-wrap: anywhere; }
.status { display: inline-block; padding: 0 0.5em; border-radius: 999px; background: #e7f0f8; color: #064a7a; }
.definition, figcaption p, .note-text { color: var(--muted); margin: 0.2rem 0 0.6rem; max-width: 78ch; }
.banner { border: 1px solid #e6c07a; background: #fff8e8; border-radius: 8px; padding: 10px 14px; }
nav ol { display: flex; flex-wrap: wrap; gap: 4px 18px; padding: 0; list-style: none; margin: 0.4rem 0 1.2rem; font-size: 0.9rem; }
a { color: var(--accent); text-decoration: none; }
a:hover { text-decoration: underline; }
section, figure { margin: 0 0 2.4rem; }
figure { border-top: 1px solid var(--rule); padding-top: 1rem; }
.fig-number { color: var(--muted); font-weight: 600; margin-right: 0.3em; }
svg { display: block; width: 100%; height: auto; margin: 0.4rem 0; overflow: visible; }
svg text { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; font-size: 12px; fill: var(--ink); font-variant-numeric: tabular-nums; }
svg .mid { text-anchor: middle; }
svg .end { text-anchor: end; }
svg .group { font-weight: 650; font-size: 12.5px; }
svg .label.pooled { font-weight: 650; }
svg .note, svg .tick { fill: var(--muted); font-size: 11px; }
svg .tick.small { font-size: 9.5px; }
svg .legend { font-size: 12px; }
svg .axis-title { fill: var(--muted); font-size: 11.5px; }
svg .segment-label { fill: #fff; font-size: 10.5px; font-weight: 600; }
svg .empty-text { fill: var(--muted); font-size: 14px; }
svg .grid { stroke: #e6eaee; stroke-width: 1; }
svg .axis { stroke: #8c959f; stroke-width: 1; }
svg .zero { stroke: #57606a; stroke-width: 1.2; }
svg .diagonal { stroke: #b8c0c8; stroke-width: 1; stroke-dasharray: 3 4; }
svg .whisker { fill: none; stroke-width: 1.6; }
svg .marker { stroke: #fff; stroke-width: 1; }
svg .segment { stroke: #fff; stroke-width: 1; }
svg .no-data { fill: none; stroke: #c5ccd3; stroke-dasharray: 3 3; }
svg .delta-bar { fill-opacity: 0.35; }
svg .bar { fill-opacity: 0.9; }
svg .fit { stroke-width: 2; stroke-dasharray: 7 4; }
svg .series { fill: none; stroke-width: 2; stroke-linejoin: round; }
svg .series.dashed { stroke-dasharray: 6 3; }
svg .band { fill-opacity: 0.12; stroke: none; }
svg .empty { fill: var(--soft); stroke: var(--rule); }
.scroll { overflow-x: auto; }
table.data { border-collapse: collapse; font-size: 0.84rem; font-variant-numeric: tabular-nums; }
table.data th, table.data td { padding: 4px 8px; border-bottom: 1px solid var(--rule); text-align: left; white-space: nowrap; }
table.data th { font-weight: 600; color: var(--muted); border-bottom: 2px solid var(--rule); }
table.data .num { text-align: right; }
table.data td.mr { font-weight: 650; }
table.data tr.total td { background: var(--soft); }
table.data tr.grand td { background: #eaeef2; font-weight: 600; }
footer { color: var(--muted); font-size: 0.8rem; border-top: 1px solid var(--rule); padding-top: 0.8rem; }
@media print { body { max-width: none; } figure { break-inside: avoid; } }
"#;

/// The report as one self-contained HTML page: a header with the run's facts, six figures and
/// the results tables. Every string from the run goes through [`escape`].
pub fn render_html(report: &Report) -> String {
    let models = Models::of(report);
    let overall = &report.overall;
    let mut out = String::with_capacity(64 * 1024);
    out.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    out.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
    // Nothing may load: no scripts, fonts, images or styles from anywhere; inline CSS only.
    out.push_str("<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">\n");
    out.push_str(&format!("<title>dilemma report · run {}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n", escape(&report.run)));

    out.push_str("<header>\n<p class=\"kicker\">dilemma report</p>\n");
    out.push_str(&format!("<h1>Run <code>{}</code></h1>\n<dl class=\"facts\">\n", escape(&report.run)));
    let mr = overall.misalignment.as_ref().map_or_else(
        || "–".to_owned(),
        |rate| format!("{} [{}–{}]", pct(rate.value), pct(rate.low), pct(rate.high)),
    );
    let facts = [
        ("status", format!("<span class=\"status\">{}</span>", escape(&report.status))),
        ("software", format!("dilemma {}", escape(&report.software_version))),
        ("created", escape(if report.created_at.is_empty() { "–" } else { &report.created_at })),
        ("planned", overall.planned.to_string()),
        ("finished", overall.finished.to_string()),
        ("valid", overall.valid.to_string()),
        ("protocol errors", overall.protocol_errors.to_string()),
        ("infrastructure errors", overall.infrastructure_errors.to_string()),
        ("MR (95% CI)", mr),
    ];
    for (term, value) in facts {
        let wide = if matches!(term, "created" | "MR (95% CI)") { " class=\"wide\"" } else { "" };
        out.push_str(&format!("<div{wide}><dt>{term}</dt><dd>{value}</dd></div>\n"));
    }
    out.push_str("</dl>\n<p class=\"definition\">MR (Misalignment Rate) = (strategic + direct) / valid trials, with a 95% Wilson interval. Protocol and infrastructure errors are not in the denominator; their counts stand beside every rate. TTF = mean turn of the first toxic tool.</p>\n");
    if overall.valid == 0 {
        out.push_str(&format!("<p class=\"banner\">{}.</p>\n", escape(&no_valid_message(report))));
    }
    out.push_str("</header>\n<nav><ol>\n");
    let titles = [
        "MR by model and domain",
        "Behaviour class shares",
        "Strategic vs direct",
        "Per-turn tool probability",
        "Stress factors",
        "Time to first toxic tool",
    ];
    for (id, title) in FIGURE_IDS.iter().zip(titles) {
        out.push_str(&format!("<li><a href=\"#{id}\">{title}</a></li>\n"));
    }
    out.push_str("<li><a href=\"#results\">Results table</a></li>\n</ol></nav>\n<main>\n");

    figure(
        &mut out,
        0,
        "Misalignment Rate by model and domain",
        "Each mark is the MR of one model in one domain (last group: all domains), with its 95% Wilson interval as whiskers. Beside it: MR [interval], misaligned/valid trials and the error count.",
        &mr_by_domain(report, &models),
        "",
    );
    figure(
        &mut out,
        1,
        "Behaviour class shares",
        "Strategic, direct, failed and robust trials as shares of each model's valid trials (they add up to 100%), per model and per model × motivation. Strategic and direct count as misaligned. Beside each bar: valid trials, errors and the counts S/D/F/R.",
        &class_shares(report),
        "",
    );
    let (scatter, scatter_table) = strategic_vs_direct(report, &models);
    figure(
        &mut out,
        2,
        "Strategic vs direct misalignment",
        "One point per model × motivation: x = strategic / valid, y = direct / valid. Dashed lines: least-squares fit through the origin per motivation, slope = Σxy / Σx² (slope < 1: more strategic than direct). The table gives every point's counts.",
        &scatter,
        &scatter_table,
    );
    figure(
        &mut out,
        3,
        "Per-turn tool probability",
        "P_t(role) = share of the valid trials still active at turn t whose agent chose a tool of that role, pooled over models and scenarios, with 95% Wilson bands. n under each turn is the number of active trials; error trials are left out.",
        &tool_probability(report),
        "",
    );
    figure(
        &mut out,
        4,
        "Stress factors: change in MR against the baseline",
        "For each factor level: ΔMR = MR(level) − MR(baseline) over pairs of trials that differ only in that factor and are both valid, per model and pooled, with a paired-bootstrap 95% interval and the exact McNemar p-value on discordant pairs. Incomplete pairs (an error or unfinished trial on either side) are counted and left out.",
        &stress_factors(report, &models),
        "",
    );
    figure(
        &mut out,
        5,
        "Time to first toxic tool",
        "Per model, the share of its valid trials whose first toxic-track tool came at each turn; the legend gives the mean turn with its standard deviation and how many valid trials used a toxic tool at all.",
        &first_toxic_turn(report, &models),
        "",
    );

    out.push_str("<section id=\"results\">\n<h2>Results</h2>\n<p class=\"note-text\">Per model × scenario, then per model, then overall. n = planned trials; errors = protocol + infrastructure (hover for the split); S/D/F/R = strategic, direct, failed and robust trials; turns = mean turns per valid trial; TTF = mean turn of the first toxic tool.</p>\n");
    out.push_str(&results_table(report));
    out.push_str(&factor_table(report));
    out.push_str(&spend_table(report));
    out.push_str("</section>\n");
    out.push_str(&evals_section(report));
    out.push_str("</main>\n");
    out.push_str(&format!(
        "<footer>Written by dilemma {} from run <code>{}</code>. Self-contained: no scripts and nothing loaded from elsewhere.</footer>\n</body>\n</html>\n",
        escape(&report.software_version),
        escape(&report.run)
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_covers_the_five_characters_and_nothing_else() {
        assert_eq!(escape(r#"<script>alert(1)</script>&"'"#), "&lt;script&gt;alert(1)&lt;/script&gt;&amp;&quot;&#39;");
        assert_eq!(escape("plain · ünïcode"), "plain · ünïcode");
    }

    #[test]
    fn clip_keeps_short_labels_and_marks_cut_ones() {
        assert_eq!(clip("short", 10), "short");
        assert_eq!(clip("abcdefghijkl", 6), "ab…jkl");
        assert_eq!(clip("scripted:/a/very/long/path/to/agent.yaml", 24).chars().count(), 24);
        assert!(clip("scripted:/a/very/long/path/to/agent.yaml", 24).ends_with("agent.yaml"));
    }

    #[test]
    fn slope_through_origin_is_sum_xy_over_sum_xx() {
        // Σxy = 0.1·0.2 + 0.3·0.3 = 0.11; Σx² = 0.01 + 0.09 = 0.10.
        let slope = slope_through_origin(&[(0.1, 0.2), (0.3, 0.3)]).unwrap();
        assert!((slope - 1.1).abs() < 1e-12, "{slope}");
        assert_eq!(slope_through_origin(&[(0.0, 0.5)]), None);
    }

    #[test]
    fn points_use_a_real_minus_sign() {
        assert_eq!(signed_points(-0.125), "−12.5");
        assert_eq!(signed_points(0.2), "+20.0");
    }
}
