//! `goroscope top`: a live view of goroutines by creation site, refreshed in place.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use anyhow::Result;
use crossterm::{cursor, event, execute, terminal};

use crate::detect::leak::{LeakConfig, LeakDetector, ProcessVerdicts};
use crate::intake::StackInterest;
use crate::model::ProcessTable;
use crate::session::{Session, Target};

/// Restores the terminal however `top` ends.
struct Screen;

impl Screen {
    fn enter() -> Result<Screen> {
        terminal::enable_raw_mode()?;
        execute!(
            std::io::stdout(),
            terminal::EnterAlternateScreen,
            cursor::Hide
        )?;
        Ok(Screen)
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        let _ = execute!(
            std::io::stdout(),
            cursor::Show,
            terminal::LeaveAlternateScreen
        );
        let _ = terminal::disable_raw_mode();
    }
}

pub fn run(
    target: Target,
    interval: Duration,
    iterations: Option<u64>,
    all: bool,
    contexts: crate::session::ContextMode,
) -> Result<()> {
    let mut session = Session::attach_with(target, goroscope_common::DEFAULT_MAX_LIVE, contexts)?;
    // Where goroutines block: every site's at first, then the sites on screen.
    session.set_stack_interest_all(StackInterest::All);
    // The leak model with its defaults (the LEAK column: the scale that caught a site).
    let mut detector = LeakDetector::new(LeakConfig::default());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let tty = std::io::stdout().is_terminal();
        let screen = if tty { Some(Screen::enter()?) } else { None };
        // Keys come from a blocking thread; `q`, Esc or Ctrl-C quit.
        let (quit_tx, mut quit_rx) = tokio::sync::mpsc::channel::<()>(1);
        if tty {
            std::thread::spawn(move || loop {
                match event::read() {
                    Ok(event::Event::Key(k))
                        if k.code == event::KeyCode::Char('q')
                            || k.code == event::KeyCode::Esc
                            || (k.code == event::KeyCode::Char('c')
                                && k.modifiers.contains(event::KeyModifiers::CONTROL)) =>
                    {
                        let _ = quit_tx.blocking_send(());
                        return;
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            });
        }
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut tick = tokio::time::interval(interval);
        let mut n = 0u64;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = quit_rx.recv() => break,
                _ = tokio::signal::ctrl_c() => break,
                _ = term.recv() => break,
            }
            let tables = session.refresh()?;
            let verdicts = detector.observe(crate::clock::mono_ns(), &tables);
            let frame = frame(&session, &tables, &verdicts, interval, tty, all);
            let rows = rows_per_table(tables.len());
            for t in &tables {
                let shown = super::render::top_sites(t, all).take(rows);
                session.set_stack_interest(
                    t.pid,
                    StackInterest::Sites(shown.map(|v| v.gopc).collect()),
                );
            }
            let mut out = std::io::stdout().lock();
            if tty {
                execute!(
                    out,
                    cursor::MoveTo(0, 0),
                    terminal::Clear(terminal::ClearType::All)
                )?;
                out.write_all(frame.replace('\n', "\r\n").as_bytes())?;
            } else {
                writeln!(out, "{frame}")?;
            }
            out.flush()?;
            n += 1;
            if session.finished() || iterations.is_some_and(|i| n >= i) {
                break;
            }
        }
        drop(screen);
        if session.finished() {
            eprintln!("goroscope: {} exited", session.target());
        }
        Ok(())
    })
}

/// Site rows each process's table gets on the screen.
fn rows_per_table(tables: usize) -> usize {
    let rows = terminal::size()
        .map_or(40, |(_, h)| h as usize)
        .saturating_sub(6)
        .max(5);
    rows / tables.max(1)
}

/// One screen: a header, each process's table (rows shared between them), or why there
/// is nothing to show.
fn frame(
    session: &Session,
    tables: &[ProcessTable],
    verdicts: &[ProcessVerdicts],
    interval: Duration,
    tty: bool,
    all: bool,
) -> String {
    let rows = rows_per_table(tables.len());
    let mut frame = format!(
        "goroscope top — {} — refresh {:.1}s{}\n",
        session.target(),
        interval.as_secs_f64(),
        if tty { " — q quits" } else { "" }
    );
    for (t, v) in tables.iter().zip(verdicts) {
        frame.push_str(&super::render::top_frame(t, all, rows, Some(v)));
    }
    if tables.is_empty() {
        frame.push_str(if session.waiting() {
            "no file at that path here and no process runs a binary at that path (yet); \
             waiting\n"
        } else {
            "no process of the target is running\n"
        });
    }
    frame
}
