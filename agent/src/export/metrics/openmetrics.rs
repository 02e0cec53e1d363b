//! OpenMetrics 1.0.0 text of the families the collector builds (the `prometheus` crate
//! writes only the Prometheus text format). Differences from it: a counter family is
//! named without `_total` in `# HELP`/`# TYPE` (its samples keep it), an info family
//! (see [`Kind::Info`]) is of type `info` and named without `_info`, and the text ends
//! with `# EOF`.

use std::collections::HashMap;
use std::fmt::Write;

use prometheus::proto::{LabelPair, Metric, MetricFamily, MetricType};

use super::{header, type_name, Kind};

pub(super) fn encode(families: &[MetricFamily], out: &mut String) {
    // Upper bounds as written, by their bits: every histogram has the same ones.
    let mut les: HashMap<u64, String> = HashMap::new();
    for f in families {
        let name = f.name();
        let t = f.get_field_type();
        let (family, type_name) = match (t, Kind::of(name)) {
            (MetricType::COUNTER, _) => (name.trim_end_matches("_total"), "counter"),
            (_, Kind::Info) => (name.trim_end_matches("_info"), "info"),
            _ => (name, type_name(t)),
        };
        header(out, family, type_name, f.help());
        let mut labels = String::new();
        for m in f.get_metric() {
            labels.clear();
            label_set(&mut labels, m.get_label());
            match t {
                MetricType::COUNTER => {
                    sample(out, name, "", &labels, None, m.get_counter().get_value())
                }
                MetricType::HISTOGRAM => histogram(out, name, &labels, m, &mut les),
                _ => sample(out, name, "", &labels, None, m.get_gauge().get_value()),
            }
        }
    }
    out.push_str("# EOF\n");
}

/// `_bucket` samples (with `+Inf`, whether or not it is among the buckets), `_sum` and
/// `_count`.
fn histogram(
    out: &mut String,
    name: &str,
    labels: &str,
    m: &Metric,
    les: &mut HashMap<u64, String>,
) {
    let h = m.get_histogram();
    let mut inf_seen = false;
    for b in h.get_bucket() {
        let le = b.upper_bound();
        inf_seen |= le == f64::INFINITY;
        let le = les.entry(le.to_bits()).or_insert_with(|| {
            let mut s = String::new();
            number(&mut s, le);
            s
        });
        let count = b.cumulative_count() as f64;
        sample(out, name, "_bucket", labels, Some(le), count);
    }
    let count = h.get_sample_count() as f64;
    if !inf_seen {
        sample(out, name, "_bucket", labels, Some("+Inf"), count);
    }
    sample(out, name, "_sum", labels, None, h.get_sample_sum());
    sample(out, name, "_count", labels, None, count);
}

/// `k="v",…`, values escaped.
fn label_set(out: &mut String, labels: &[LabelPair]) {
    for (i, l) in labels.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(l.name());
        out.push_str("=\"");
        escape_into(out, l.value());
        out.push('"');
    }
}

/// One sample line: `name_suffix{labels,le="…"} value` (`labels` already written as
/// `k="v",…`).
fn sample(out: &mut String, name: &str, suffix: &str, labels: &str, le: Option<&str>, v: f64) {
    out.push_str(name);
    out.push_str(suffix);
    if !labels.is_empty() || le.is_some() {
        out.push('{');
        out.push_str(labels);
        if let Some(le) = le {
            if !labels.is_empty() {
                out.push(',');
            }
            out.push_str("le=\"");
            out.push_str(le);
            out.push('"');
        }
        out.push('}');
    }
    out.push(' ');
    number(out, v);
    out.push('\n');
}

/// A label value with `\`, `"` and newlines escaped.
fn escape_into(out: &mut String, v: &str) {
    if !v.contains(['\\', '"', '\n']) {
        out.push_str(v);
        return;
    }
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// A number: integers without a fraction, `+Inf`/`-Inf`/`NaN` as OpenMetrics spells
/// them.
fn number(out: &mut String, v: f64) {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        let _ = write!(out, "{}", v as i64);
    } else if v.is_nan() {
        out.push_str("NaN");
    } else if v.is_infinite() {
        out.push_str(if v > 0.0 { "+Inf" } else { "-Inf" });
    } else {
        let _ = write!(out, "{v}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        let mut s = String::new();
        escape_into(&mut s, "a\"b\\c\nd");
        assert_eq!(s, "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn numbers() {
        let mut s = String::new();
        for v in [
            3.0,
            -0.0,
            0.25,
            1e15,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NAN,
        ] {
            number(&mut s, v);
            s.push(' ');
        }
        assert_eq!(s, "3 0 0.25 1000000000000000 +Inf -Inf NaN ");
    }
}
