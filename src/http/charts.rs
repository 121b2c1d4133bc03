//! The console's charts, computed from the history and drawn as inline SVG
//! on the server (no chart library, nothing for the browser to run):
//! messages received, rejected, delivered and deferred per time bucket over
//! the last hour or day (counted from the history's action index, so no
//! record is decoded), and the refusals grouped by the hook that decided or
//! the reply the client got.

use std::collections::BTreeMap;
use std::fmt::Write;

use super::html::esc;
use crate::store::history::{HistoryAction, HistoryQuery};
use crate::store::Store;

/// The time ranges the charts page offers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Range {
    Hour,
    Day,
}

impl Range {
    pub fn parse(s: &str) -> Range {
        if s == "day" {
            Range::Day
        } else {
            Range::Hour
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Range::Hour => "hour",
            Range::Day => "day",
        }
    }

    /// (bucket seconds, buckets).
    pub fn buckets(self) -> (f64, usize) {
        match self {
            Range::Hour => (60.0, 60),
            Range::Day => (1800.0, 48),
        }
    }
}

/// One line of the chart: a history action counted per bucket.
#[derive(Debug, Clone)]
pub struct Series {
    pub action: HistoryAction,
    pub counts: Vec<u64>,
}

/// What the charts page shows.
#[derive(Debug, Clone)]
pub struct Charts {
    pub range: Range,
    /// Start of the first bucket (unix seconds).
    pub since: f64,
    pub series: Vec<Series>,
    /// Refusals by deciding hook or reply, most first.
    pub refusals: Vec<(String, u64)>,
}

/// The actions drawn, in legend order.
pub const CHARTED: [HistoryAction; 4] = [
    HistoryAction::Received,
    HistoryAction::Reject,
    HistoryAction::Deliver,
    HistoryAction::Defer,
];

/// Refusal records read at most for the grouping (the newest ones).
const MAX_REFUSALS_READ: usize = 5000;

/// Count `times` into `n` buckets of `width` seconds from `since`.
pub fn bucket_counts(times: &[f64], since: f64, width: f64, n: usize) -> Vec<u64> {
    let mut out = vec![0u64; n];
    for &t in times {
        if t < since {
            continue;
        }
        let i = ((t - since) / width) as usize;
        if let Some(c) = out.get_mut(i) {
            *c += 1;
        }
    }
    out
}

/// Read the numbers for `range` ending `now`.
pub fn compute(store: &Store, range: Range, now: f64) -> Result<Charts, String> {
    let (width, n) = range.buckets();
    // Buckets end on a multiple of their width, the last one holding now.
    let end = (now / width).floor() * width + width;
    let since = end - width * n as f64;
    let mut series = Vec::new();
    for action in CHARTED {
        let times = store
            .history_times(action, since)
            .map_err(|e| e.to_string())?;
        series.push(Series {
            action,
            counts: bucket_counts(&times, since, width, n),
        });
    }
    let rows = store
        .query_history(&HistoryQuery {
            since: Some(since),
            action: Some("REJECT".into()),
            newest_first: true,
            limit: Some(MAX_REFUSALS_READ),
            ..Default::default()
        })
        .map_err(|e| e.to_string())?;
    let mut by = BTreeMap::<String, u64>::new();
    for (_, r) in rows {
        let key = match r.metadata.get("decided_by") {
            Some(d) if !d.is_empty() => d.clone(),
            _ => r.reason.chars().take(80).collect(),
        };
        *by.entry(key).or_default() += 1;
    }
    let mut refusals: Vec<(String, u64)> = by.into_iter().collect();
    refusals.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    refusals.truncate(12);
    Ok(Charts {
        range,
        since,
        series,
        refusals,
    })
}

const W: f64 = 720.0;
const H: f64 = 240.0;
const LEFT: f64 = 48.0;
const BOTTOM: f64 = 28.0;
const TOP: f64 = 12.0;

/// The line chart of [`Charts::series`].
pub fn line_svg(c: &Charts) -> String {
    let (width, n) = c.range.buckets();
    let max = c
        .series
        .iter()
        .flat_map(|s| s.counts.iter().copied())
        .max()
        .unwrap_or(0)
        .max(1);
    let plot_w = W - LEFT - 8.0;
    let plot_h = H - TOP - BOTTOM;
    let x = |i: usize| LEFT + plot_w * (i as f64 + 0.5) / n as f64;
    let y = |v: u64| TOP + plot_h * (1.0 - v as f64 / max as f64);
    let mut out = String::new();
    let _ = write!(
        out,
        "<svg class=\"chart\" id=\"traffic\" viewBox=\"0 0 {W} {H}\" role=\"img\" \
         aria-labelledby=\"traffic-title\" xmlns=\"http://www.w3.org/2000/svg\">\
         <title id=\"traffic-title\">Messages per {} over the last {}</title>",
        if width >= 1800.0 {
            "30 minutes"
        } else {
            "minute"
        },
        c.range.name()
    );
    // Axes, the top value, and times under the first, middle and last bucket.
    let _ = write!(
        out,
        "<line class=\"axis\" x1=\"{LEFT}\" y1=\"{TOP}\" x2=\"{LEFT}\" y2=\"{b}\"/>\
         <line class=\"axis\" x1=\"{LEFT}\" y1=\"{b}\" x2=\"{r}\" y2=\"{b}\"/>\
         <text class=\"tick\" x=\"{tx}\" y=\"{ty}\" text-anchor=\"end\">{max}</text>\
         <text class=\"tick\" x=\"{tx}\" y=\"{b}\" text-anchor=\"end\">0</text>",
        b = TOP + plot_h,
        r = LEFT + plot_w,
        tx = LEFT - 6.0,
        ty = TOP + 10.0,
    );
    for i in [0, n / 2, n - 1] {
        let t = c.since + width * i as f64;
        let label = chrono::DateTime::from_timestamp(t as i64, 0)
            .map(|d| d.format("%H:%M").to_string())
            .unwrap_or_default();
        // The outer labels lean inwards so the edge does not clip them.
        let anchor = match i {
            0 => "start",
            i if i == n - 1 => "end",
            _ => "middle",
        };
        let _ = write!(
            out,
            "<text class=\"tick\" x=\"{:.1}\" y=\"{}\" text-anchor=\"{anchor}\">{label}</text>",
            x(i),
            H - 8.0
        );
    }
    for s in &c.series {
        let name = s.action.as_str().to_ascii_lowercase();
        let pts: Vec<String> = s
            .counts
            .iter()
            .enumerate()
            .map(|(i, v)| format!("{:.1},{:.1}", x(i), y(*v)))
            .collect();
        let total: u64 = s.counts.iter().sum();
        let _ = write!(
            out,
            "<polyline class=\"series s-{name}\" data-action=\"{}\" data-total=\"{total}\" points=\"{}\"><title>{}: {total}</title></polyline>",
            s.action.as_str(),
            pts.join(" "),
            s.action.as_str()
        );
    }
    out.push_str("</svg>");
    out
}

/// The legend with totals (HTML, under the chart).
pub fn legend(c: &Charts) -> String {
    let mut out = String::from("<ul class=\"legend\">");
    for s in &c.series {
        let name = s.action.as_str().to_ascii_lowercase();
        let label = match s.action {
            HistoryAction::Received => "received",
            HistoryAction::Reject => "rejected",
            HistoryAction::Deliver => "delivered",
            HistoryAction::Defer => "deferred",
            _ => "other",
        };
        let _ = write!(
            out,
            "<li><span class=\"swatch s-{name}\"></span>{label}: <b class=\"total-{name}\">{}</b></li>",
            s.counts.iter().sum::<u64>()
        );
    }
    out.push_str("</ul>");
    out
}

/// Horizontal bars: refusals by hook or reply.
pub fn refusals_svg(c: &Charts) -> String {
    if c.refusals.is_empty() {
        return "<p class=\"empty\">No refusals in this range.</p>".into();
    }
    let row = 22.0;
    let h = row * c.refusals.len() as f64 + 8.0;
    let max = c.refusals.iter().map(|r| r.1).max().unwrap_or(1).max(1);
    let label_w = 360.0;
    let bar_w = W - label_w - 60.0;
    let mut out = String::new();
    let _ = write!(
        out,
        "<svg class=\"chart\" id=\"refusals\" viewBox=\"0 0 {W} {h}\" role=\"img\" \
         xmlns=\"http://www.w3.org/2000/svg\"><title>Refusals by hook or reply</title>"
    );
    for (i, (label, n)) in c.refusals.iter().enumerate() {
        let y = 4.0 + row * i as f64;
        let short: String = label.chars().take(52).collect();
        let wbar = bar_w * *n as f64 / max as f64;
        let _ = write!(
            out,
            "<text class=\"tick\" x=\"{lx}\" y=\"{ty}\" text-anchor=\"end\">{}<title>{}</title></text>\
             <rect class=\"bar\" x=\"{label_w}\" y=\"{y}\" width=\"{wbar:.1}\" height=\"{bh}\"/>\
             <text class=\"tick\" x=\"{nx:.1}\" y=\"{ty}\">{n}</text>",
            esc(&short),
            esc(label),
            lx = label_w - 8.0,
            ty = y + 14.0,
            bh = row - 6.0,
            nx = label_w + wbar + 6.0,
        );
    }
    out.push_str("</svg>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_count_what_falls_in_them() {
        let c = bucket_counts(
            &[99.0, 100.0, 159.9, 160.0, 399.0, 400.0, 1000.0],
            100.0,
            60.0,
            5,
        );
        assert_eq!(c, [2, 1, 0, 0, 1]);
    }

    #[test]
    fn svg_draws_every_series_and_escapes_labels() {
        let c = Charts {
            range: Range::Hour,
            since: 0.0,
            series: CHARTED
                .iter()
                .map(|a| Series {
                    action: *a,
                    counts: vec![1; 60],
                })
                .collect(),
            refusals: vec![("rcptto: <script>".into(), 3)],
        };
        let svg = line_svg(&c);
        assert_eq!(svg.matches("<polyline").count(), 4);
        assert!(svg.contains("data-action=\"DELIVER\" data-total=\"60\""));
        let bars = refusals_svg(&c);
        assert!(bars.contains("&lt;script&gt;") && !bars.contains("<script>"));
        assert!(legend(&c).contains("delivered: <b class=\"total-deliver\">60</b>"));
    }
}
