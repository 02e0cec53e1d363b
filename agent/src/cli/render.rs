//! Text rendering shared by `top` and `snapshot`.

use std::fmt::Write as _;

use crate::detect::leak::{ProcessVerdicts, Verdict};
use crate::model::{ProcessTable, SiteBlocking, SiteView};

/// `42ms`, `3.2s`, `4m05s`, `2h03m`, `3d04h`.
pub fn age(seconds: f64) -> String {
    let s = seconds.max(0.0);
    if s < 1.0 {
        format!("{}ms", (s * 1000.0) as u64)
    } else if s < 60.0 {
        format!("{s:.1}s")
    } else if s < 3600.0 {
        format!("{}m{:02}s", (s / 60.0) as u64, (s as u64) % 60)
    } else if s < 86400.0 {
        format!("{}h{:02}m", (s / 3600.0) as u64, (s as u64 / 60) % 60)
    } else {
        format!("{}d{:02}h", (s / 86400.0) as u64, (s as u64 / 3600) % 24)
    }
}

fn short_file(file: &str) -> &str {
    file.rsplit('/').next().unwrap_or(file)
}

/// `function file:line` with the file's directories left out.
fn short_location(loc: &str) -> String {
    match loc.rsplit_once(' ') {
        Some((function, file)) => format!("{function} {}", short_file(file)),
        None => loc.to_string(),
    }
}

/// The sites `top` shows for one process, in order (the first `max_rows` of them fit).
pub fn top_sites(t: &ProcessTable, all: bool) -> impl Iterator<Item = &SiteView> {
    t.sites.iter().filter(move |v| all || !v.system)
}

/// The `top` table for one process.
/// The `top` table for one process; `verdicts`: the leak model's, by site (the LEAK
/// column: the time scale that caught a suspected site).
pub fn top_frame(
    t: &ProcessTable,
    all: bool,
    max_rows: usize,
    verdicts: Option<&ProcessVerdicts>,
) -> String {
    let leak = |v: Option<&Verdict>| {
        v.and_then(|v| v.scale.clone())
            .unwrap_or_else(|| "-".to_string())
    };
    let mut s = String::new();
    let shown: Vec<&SiteView> = top_sites(t, all).collect();
    let _ = writeln!(
        s,
        "pid {} {} {} | {} goroutines, {} sites | attached {}",
        t.pid,
        t.go_version,
        t.exe,
        t.live,
        t.sites.len(),
        age(t.attached_seconds)
    );
    if let Some(e) = &t.inventory_error {
        let _ = writeln!(s, "  (inventory unavailable: {e}; live counts cover only goroutines created since attach)");
    }
    if let Some(c) = t.counters.as_ref().filter(|c| c.lost.total() > 0) {
        let lost: Vec<String> = c
            .lost
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(r, n)| format!("{} {n}", r.name()))
            .collect();
        let _ = writeln!(s, "  LOSSES: {}", lost.join(", "));
    }
    let created_at = |v: &SiteView| format!("{} {}:{}", v.function, short_file(&v.file), v.line);
    let width = shown
        .iter()
        .take(max_rows)
        .map(|v| created_at(v).chars().count())
        .max()
        .unwrap_or(0)
        .clamp(10, 48);
    let _ = writeln!(
        s,
        "{:>7} {:>8} {:>8} {:>8} {:>8} {:>7}  {:<22} {:<width$}  BLOCKED AT",
        "LIVE", "Δ/MIN", "CREATED", "EXITED", "OLDEST", "LEAK", "STATE", "CREATED AT"
    );
    for v in shown.iter().take(max_rows) {
        let opt = |o: Option<u64>| o.map_or("-".to_string(), |n| n.to_string());
        let growth = v
            .growth_per_minute
            .map_or("-".to_string(), |g| format!("{g:+.1}"));
        let oldest = if v.live == 0 {
            "-".to_string()
        } else {
            format!(
                "{}{}",
                if v.oldest_age_is_lower_bound { ">" } else { "" },
                age(v.oldest_age_seconds)
            )
        };
        let mut state = v.dominant_state.clone();
        state.truncate(22);
        let blocked = t.blocked_at(v).map(short_location).unwrap_or_default();
        let line = format!(
            "{:>7} {:>8} {:>8} {:>8} {:>8} {:>7}  {:<22} {:<width$}  {}",
            v.live,
            growth,
            opt(v.created),
            opt(v.exited),
            oldest,
            leak(verdicts.and_then(|p| p.sites.get(&v.gopc))),
            state,
            created_at(v),
            blocked
        );
        let _ = writeln!(s, "{}", line.trim_end());
    }
    if shown.len() > max_rows {
        let _ = writeln!(s, "  … {} more sites", shown.len() - max_rows);
    }
    contexts_frame(&mut s, t, max_rows, |pc| {
        leak(verdicts.and_then(|p| p.contexts.get(&pc)))
    });
    s
}

/// The contexts section: context creation sites by uncancelled contexts.
fn contexts_frame(s: &mut String, t: &ProcessTable, max_rows: usize, leak: impl Fn(u64) -> String) {
    if t.contexts.is_empty() {
        return;
    }
    let _ = writeln!(
        s,
        "\n{:>7} {:>8} {:>9} {:>6} {:>7} {:>8} {:>7}  CONTEXTS CREATED AT",
        "UNCANC", "CREATED", "CANCELLED", "LOST", "WAITERS", "OLDEST", "LEAK"
    );
    for c in t.contexts.iter().take(max_rows) {
        let oldest = if c.uncancelled == 0 {
            "-".to_string()
        } else {
            age(c.oldest_uncancelled_age_seconds)
        };
        let _ = writeln!(
            s,
            "{:>7} {:>8} {:>9} {:>6} {:>7} {:>8} {:>7}  {} {}:{}",
            c.uncancelled,
            c.created,
            c.cancelled,
            c.lost_cancel,
            c.waiting_goroutines,
            oldest,
            leak(c.pc),
            c.function,
            short_file(&c.file),
            c.line
        );
    }
    if let Some(p) = t.context_parents.first() {
        if let Some(n) = p.children_map_len {
            let _ = writeln!(
                s,
                "  largest parent: {n} children in its map (mostly from {})",
                p.children_site
            );
        }
    }
}

/// The `snapshot` text: goroutines grouped by creation site, most first; with an
/// observation window, per-site creations/exits during it and the contexts section.
/// `verdicts`: the leak model's over an observation window (a `leak suspected` line per
/// suspected site).
pub fn snapshot(t: &ProcessTable, observed: bool, verdicts: Option<&ProcessVerdicts>) -> String {
    let suspected = |v: Option<&Verdict>| {
        v.filter(|v| v.suspected).map(|v| {
            format!(
                "#\tleak suspected on the {} time scale ({:+.1}/min)",
                v.scale.as_deref().unwrap_or(""),
                v.growth_per_second * 60.0
            )
        })
    };
    let mut s = String::new();
    let _ = writeln!(
        s,
        "goroutines of pid {} ({}, {}): {} in {} creation sites",
        t.pid,
        t.exe,
        t.go_version,
        t.live,
        t.sites.iter().filter(|v| v.live > 0).count()
    );
    if let Some(e) = &t.inventory_error {
        let _ = writeln!(s, "inventory unavailable: {e}");
    }
    let window = age(t.attached_seconds);
    for v in t.sites.iter().filter(|v| v.live > 0) {
        let _ = writeln!(s);
        let _ = writeln!(s, "{} @ {}", v.live, v.location());
        let _ = writeln!(s, "#\tstart: {}", v.start_function);
        let states: Vec<String> = v.states.iter().map(|(k, n)| format!("{k}: {n}")).collect();
        let _ = writeln!(s, "#\tstates: {}", states.join(", "));
        if let Some(l) = suspected(verdicts.and_then(|p| p.sites.get(&v.gopc))) {
            let _ = writeln!(s, "{l}");
        }
        if v.leaked > 0 {
            let _ = writeln!(
                s,
                "#\tleaked (proven by the Go runtime): {} of {}",
                v.leaked, v.live
            );
        }
        if let (Some(c), Some(e)) = (v.created, v.exited) {
            let _ = writeln!(s, "#\tin the last {window}: created {c}, exited {e}");
        }
        let goids: Vec<String> = v.sample_goids.iter().map(u64::to_string).collect();
        let _ = writeln!(
            s,
            "#\tgoids: {}{}",
            goids.join(" "),
            if v.live as usize > goids.len() {
                " …"
            } else {
                ""
            }
        );
        if let Some(b) = t.blocking_of(v.gopc) {
            blocking(&mut s, b);
        }
    }
    let _ = writeln!(s);
    if !observed {
        let _ = writeln!(
            s,
            "# contexts: not seen (a snapshot only reads memory; `--observe 30` attaches the \
             probes for 30 s and lists the contexts created meanwhile that nobody cancelled)"
        );
        return s;
    }
    observed_contexts(&mut s, t, &window, |pc| {
        suspected(verdicts.and_then(|p| p.contexts.get(&pc)))
    });
    s
}

/// Where a site's goroutines block, like `debug/pprof/goroutine?debug=1`: per
/// distinct stack, its goroutines and blocking line, then its frames (file:line), the
/// runtime's `goexit` left out.
fn blocking(s: &mut String, b: &SiteBlocking) {
    for st in &b.stacks {
        let states: Vec<String> = st.states.iter().map(|(k, n)| format!("{k}: {n}")).collect();
        let _ = writeln!(
            s,
            "#\n#\t{} blocked at {} ({})",
            st.count,
            st.blocked_at,
            states.join(", ")
        );
        for f in st
            .frames
            .iter()
            .filter(|f| !f.starts_with("runtime.goexit "))
        {
            let mark = if *f == st.blocked_at { "→" } else { " " };
            let _ = writeln!(s, "#\t {mark} {f}");
        }
        if st.truncated {
            let _ = writeln!(s, "#\t   … (deeper frames not read)");
        }
    }
    if b.other_stacks > 0 {
        let _ = writeln!(
            s,
            "#\n#\t{} more goroutines in {} other stacks",
            b.other_goroutines, b.other_stacks
        );
    }
    if b.unread > 0 {
        let _ = writeln!(
            s,
            "#\t{} stopped goroutines whose stack was not read",
            b.unread
        );
    }
}

/// The contexts an observation window saw created and nobody cancelled, with their
/// waiters and parents.
fn observed_contexts(
    s: &mut String,
    t: &ProcessTable,
    window: &str,
    suspected: impl Fn(u64) -> Option<String>,
) {
    let open: Vec<_> = t.contexts.iter().filter(|c| c.uncancelled > 0).collect();
    let _ = writeln!(
        s,
        "contexts created in the last {window} and not cancelled: {} at {} sites \
         ({} created, {} cancelled)",
        open.iter().map(|c| c.uncancelled).sum::<u64>(),
        open.len(),
        t.contexts.iter().map(|c| c.created).sum::<u64>(),
        t.contexts.iter().map(|c| c.cancelled).sum::<u64>(),
    );
    for c in open {
        let _ = writeln!(s);
        let _ = writeln!(s, "{} uncancelled @ {}", c.uncancelled, c.location());
        if let Some(l) = suspected(c.pc) {
            let _ = writeln!(s, "{l}");
        }
        let _ = writeln!(
            s,
            "#\tcreated {}, cancelled {}, oldest {}",
            c.created,
            c.cancelled,
            age(c.oldest_uncancelled_age_seconds)
        );
        if c.lost_cancel > 0 {
            let _ = writeln!(
                s,
                "#\tlost cancel: {} (the goroutine that created them has exited)",
                c.lost_cancel
            );
        }
        for (site, n) in &c.waiters {
            let _ = writeln!(s, "#\twaited on by {n} goroutines created at {site}");
        }
    }
    for p in &t.context_parents {
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "parent with {} uncancelled children (most from {}){}",
            p.uncancelled_children,
            p.children_site,
            p.children_map_len
                .map_or(String::new(), |n| format!(": {n} in its children map"))
        );
        if let Some(site) = &p.parent_site {
            let _ = writeln!(s, "#\tparent created at {site}");
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ages() {
        assert_eq!(super::age(0.0421), "42ms");
        assert_eq!(super::age(3.21), "3.2s");
        assert_eq!(super::age(245.0), "4m05s");
        assert_eq!(super::age(7380.0), "2h03m");
        assert_eq!(super::age(273600.0), "3d04h");
    }
}
