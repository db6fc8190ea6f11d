//! Bounding text that reaches the API server or a terminal.

/// The mark a cut text ends with.
const MARK: char = '…';

/// Cuts `text` to at most `max` bytes, the mark included, on a character boundary: every
/// limit it serves (Event notes, admission warnings, echoed values) is in bytes or
/// characters, and bytes bound both.
pub fn cut(text: &mut String, max: usize) {
    if text.len() <= max {
        return;
    }
    let mut end = max.saturating_sub(MARK.len_utf8());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push(MARK);
}

/// [`cut`], on a copy.
pub fn cut_to(text: &str, max: usize) -> String {
    let mut text = text.to_owned();
    cut(&mut text, max);
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_on_a_character_boundary_within_the_limit() {
        assert_eq!(cut_to("short", 10), "short");
        assert_eq!(cut_to("abcdefghij", 6), "abc…");
        let cut = cut_to(&"é".repeat(100), 10);
        assert!(cut.len() <= 10 && cut.ends_with('…'), "{cut}");
        assert_eq!(cut_to("abc", 0), "…");
    }
}
