//! The one report writer of the benchmarks: a Markdown text (title, paragraphs, tables,
//! lines) and optionally JSON, written to `target/bench/NAME.md` (and `NAME.json`) and
//! printed to stdout.

use std::fs;

use anyhow::Result;

use crate::project::{root, step};

pub struct Report {
    name: &'static str,
    md: String,
    json: Option<serde_json::Value>,
}

impl Report {
    /// A report for `target/bench/NAME.md`, starting with `# TITLE`.
    pub fn new(name: &'static str, title: &str) -> Report {
        Report {
            name,
            md: format!("# {title}\n\n"),
            json: None,
        }
    }

    /// A paragraph, followed by a blank line.
    pub fn paragraph(&mut self, text: &str) {
        self.md.push_str(text);
        self.md.push_str("\n\n");
    }

    /// A table with one row per `rows` item, followed by a blank line.
    pub fn table(&mut self, header: &[&str], rows: &[Vec<String>]) {
        self.row(header);
        self.md.push('|');
        self.md.push_str(&"---|".repeat(header.len()));
        self.md.push('\n');
        for r in rows {
            self.row(r);
        }
        self.md.push('\n');
    }

    fn row(&mut self, cells: &[impl AsRef<str>]) {
        self.md.push('|');
        for c in cells {
            match c.as_ref() {
                "" => self.md.push(' '),
                c => {
                    self.md.push(' ');
                    self.md.push_str(c);
                    self.md.push(' ');
                }
            }
            self.md.push('|');
        }
        self.md.push('\n');
    }

    /// One line (a list item, a closing remark).
    pub fn line(&mut self, text: &str) {
        self.md.push_str(text);
        self.md.push('\n');
    }

    /// Also write `target/bench/NAME.json`, pretty-printed.
    pub fn json(&mut self, value: serde_json::Value) {
        self.json = Some(value);
    }

    /// Writes the files, prints the Markdown to stdout and says where it went.
    pub fn write(self) -> Result<()> {
        let dir = root().join("target/bench");
        fs::create_dir_all(&dir)?;
        let md_path = dir.join(format!("{}.md", self.name));
        fs::write(&md_path, &self.md)?;
        if let Some(json) = &self.json {
            fs::write(
                dir.join(format!("{}.json", self.name)),
                serde_json::to_string_pretty(json)?,
            )?;
        }
        print!("{}", self.md);
        step(&format!("results in {}", md_path.display()));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::Report;

    #[test]
    fn markdown_layout() {
        let mut r = Report::new("x", "Some benchmark");
        r.paragraph("What ran.");
        r.table(
            &["", "ms"],
            &[
                vec!["median".into(), "1.50".into()],
                vec!["max".into(), "2.00".into()],
            ],
        );
        r.line("- a remark");
        r.line("  - a nested one");
        assert_eq!(
            r.md,
            "# Some benchmark\n\nWhat ran.\n\n| | ms |\n|---|---|\n| median | 1.50 |\n\
             | max | 2.00 |\n\n- a remark\n  - a nested one\n"
        );
    }
}
