//! Progress bars for long operations (hidden when stderr is not a terminal).

use indicatif::{ProgressBar, ProgressStyle};

/// A bar counting bytes, with rate and ETA.
pub fn bytes_bar(total: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:40}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}")
            .expect("progress template")
            .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}

/// A bar counting items.
pub fn items_bar(total: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} {per_sec} ETA {eta}")
            .expect("progress template")
            .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}

/// A bar of `width` cells drawn as text, `done` of `total` filled (full when there is nothing to
/// do), in the style of the bars above: `[=========>          ]`.
pub fn text_bar(done: u64, total: u64, width: usize) -> String {
    let filled = if total == 0 || done >= total {
        width
    } else {
        (u128::from(done) * width as u128 / u128::from(total)) as usize
    };
    let mut s = String::with_capacity(width + 2);
    s.push('[');
    s.extend(std::iter::repeat_n('=', filled));
    if filled < width {
        s.push('>');
        s.extend(std::iter::repeat_n(' ', width - filled - 1));
    }
    s.push(']');
    s
}

/// Shows successive frames of text lines on stdout: on a terminal each new frame replaces the
/// last in place; otherwise a frame is printed only when it differs from the last, after a blank
/// line.
pub struct Frames {
    tty: bool,
    last: Vec<String>,
}

impl Frames {
    pub fn new() -> Frames {
        use std::io::IsTerminal;
        Frames { tty: std::io::stdout().is_terminal(), last: Vec::new() }
    }

    /// Prints `lines` as the next frame.
    pub fn show(&mut self, lines: Vec<String>) {
        use std::io::Write;
        if let Some(text) = self.render(lines) {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(text.as_bytes());
            let _ = out.flush();
        }
    }

    /// What to write for frame `lines` (None: nothing, it is the frame shown).
    fn render(&mut self, lines: Vec<String>) -> Option<String> {
        if lines == self.last {
            return None;
        }
        let mut out = String::new();
        if !self.last.is_empty() {
            if self.tty {
                // Up to the first line of the last frame, and clear from there down.
                out.push_str(&format!("\x1b[{}A\r\x1b[J", self.last.len()));
            } else {
                out.push('\n');
            }
        }
        for l in &lines {
            out.push_str(l);
            out.push('\n');
        }
        self.last = lines;
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_bars() {
        assert_eq!(text_bar(0, 10, 10), "[>         ]");
        assert_eq!(text_bar(5, 10, 10), "[=====>    ]");
        assert_eq!(text_bar(9, 10, 10), "[=========>]");
        assert_eq!(text_bar(10, 10, 10), "[==========]");
        assert_eq!(text_bar(0, 0, 4), "[====]", "nothing to do is done");
        assert_eq!(text_bar(12, 10, 4), "[====]");
        assert_eq!(text_bar(u64::MAX - 1, u64::MAX, 4), "[===>]");
    }

    #[test]
    fn frames_redraw_in_place_or_print_changes() {
        let lines = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let mut tty = Frames { tty: true, last: Vec::new() };
        assert_eq!(tty.render(lines(&["a", "b"])).as_deref(), Some("a\nb\n"));
        assert_eq!(tty.render(lines(&["a", "b"])), None);
        assert_eq!(tty.render(lines(&["c"])).as_deref(), Some("\x1b[2A\r\x1b[Jc\n"));
        let mut pipe = Frames { tty: false, last: Vec::new() };
        assert_eq!(pipe.render(lines(&["a"])).as_deref(), Some("a\n"));
        assert_eq!(pipe.render(lines(&["a"])), None);
        assert_eq!(pipe.render(lines(&["b", "c"])).as_deref(), Some("\nb\nc\n"));
    }
}
